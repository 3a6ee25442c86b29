"""What a network predicts and how to read it (chapters 5 and 7).

- :mod:`~diffusion_lessons.denoisers.parameterizations`    x_0, ε and score predictions and their conversions
- :mod:`~diffusion_lessons.denoisers.denoiser`           the one interface D(x_t, log_snr) → x̂_0, wrappers and readers
- :mod:`~diffusion_lessons.denoisers.tweedie`              Tweedie's formula; the posterior mean by importance sampling; RMS errors
"""
