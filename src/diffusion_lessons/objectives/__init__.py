"""The diffusion bound and the losses that train (chapters 4–6, 8).

- :mod:`~diffusion_lessons.objectives.nelbo`                the terms of the bound, each once in log-SNR form
- :mod:`~diffusion_lessons.objectives.discrete_time`        the bound on a grid of T noise levels; its training loss
- :mod:`~diffusion_lessons.objectives.continuous_time`      the bound on a schedule λ(t): L_T, L_∞, the −ELBO
- :mod:`~diffusion_lessons.objectives.schedule_variance`    VDM's objective for a learned schedule; the variance from t
- :mod:`~diffusion_lessons.objectives.simple`               the simple losses: each parameterization's own squared error
- :mod:`~diffusion_lessons.objectives.score_matching`       score matching: fitting a score without the density
"""
