"""Training (chapters 1–10).

- :mod:`~diffusion_lessons.training.fit`            the small training loop of the chapters
- :mod:`~diffusion_lessons.training.checkpoints`    safetensors checkpoints: weights files and training states
- :mod:`~diffusion_lessons.training.config`      the image trainer's run: configuration, presets, loss, data
- :mod:`~diffusion_lessons.training.optimization` one training step and its state's checkpoint
- :mod:`~diffusion_lessons.training.distributed`  devices, torchrun processes, out of memory
- :mod:`~diffusion_lessons.training.engine`         the fast image trainer (GPU, resumable, DDP)
- :mod:`~diffusion_lessons.training.pretrained`     the book's shipped checkpoints: export, download, load
- :mod:`~diffusion_lessons.training.classifier`     the noise-aware image classifier of guidance: train, measure, save
"""
