"""The forward process and its reversal given the data (chapters 3–4).

- :mod:`~diffusion_lessons.process.forward`      q(x_t | x_{t-1}), q(x_t | x_0), the forward chain
- :mod:`~diffusion_lessons.process.posterior`    q(x_{t-1} | x_t, x_0)
"""
