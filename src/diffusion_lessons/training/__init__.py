"""Training (chapters 1–10).

- :mod:`~diffusion_lessons.training.fit`            the small training loop of the chapters
- :mod:`~diffusion_lessons.training.checkpoints`    safetensors checkpoints: weights files and training states
- :mod:`~diffusion_lessons.training.engine`         the fast image trainer (GPU, resumable, DDP)
"""
