"""Data with exact answers, and images (every chapter).

- :mod:`~diffusion_lessons.data.toy`         2-D distributions with exact densities and scores
- :mod:`~diffusion_lessons.data.datasets`    digits, MNIST and Fashion-MNIST: download, verify, load
- :mod:`~diffusion_lessons.data.oracles`     exact answers: the mixture posterior mean and denoiser, the Gaussian optimal denoiser and its losses
"""
