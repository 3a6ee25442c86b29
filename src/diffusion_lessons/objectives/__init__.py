"""The diffusion bound and the losses that train (chapters 4–6).

- :mod:`~diffusion_lessons.objectives.nelbo`              the terms of the bound shared by discrete and continuous time
- :mod:`~diffusion_lessons.objectives.discrete_time`      the diffusion ELBO on a grid of T steps; L_simple
- :mod:`~diffusion_lessons.objectives.continuous_time`    the bound through the SNR; L_∞
- :mod:`~diffusion_lessons.objectives.simple`             the simple losses: each parameterization's own squared error
"""
