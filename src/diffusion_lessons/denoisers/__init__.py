"""What a network predicts and how to read it (chapters 5 and 7).

- :mod:`~diffusion_lessons.denoisers.parameterizations`    x_0, ε and score predictions and their conversions
- :mod:`~diffusion_lessons.denoisers.tweedie`              Tweedie's formula; the posterior mean by importance sampling
"""
