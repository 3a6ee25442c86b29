"""Running the reverse process (chapters 4, 8).

- :mod:`~diffusion_lessons.sampling.ancestral`    ancestral sampling of a denoiser, with a trajectory callback
- :mod:`~diffusion_lessons.sampling.langevin`     Langevin and annealed Langevin dynamics
- :mod:`~diffusion_lessons.sampling.sde`          forward SDEs and the samplers of their reverse
- :mod:`~diffusion_lessons.sampling.ode`          the probability-flow ODE: deterministic sampling, likelihoods
"""
