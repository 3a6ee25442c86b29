"""Networks; none of them knows what it predicts.

- :mod:`~diffusion_lessons.nets.embedding`    the sinusoidal embedding of the noise input (its scale per chapter)
- :mod:`~diffusion_lessons.nets.mlp`          the MLP denoiser for 2-D data
- :mod:`~diffusion_lessons.nets.unet`         the U-Net for images
"""
