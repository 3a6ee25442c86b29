"""Sympy derivations that the pages show and the tests re-run; no other module imports sympy.

- :mod:`~diffusion_lessons.symbolic.gaussian_identities`    a 1-D Gaussian posterior and KL (chapter 1)
- :mod:`~diffusion_lessons.symbolic.forward_marginal`       the forward marginal by composition and by induction (chapter 3)
- :mod:`~diffusion_lessons.symbolic.diffusion_posterior`    q(x_{t-1} | x_t, x_0) by completing the square; the SNR weight (chapter 4)
- :mod:`~diffusion_lessons.symbolic.snr_bound`              the bound in SNR form, its invariance, its continuous limit (chapter 6)
- :mod:`~diffusion_lessons.symbolic.tweedie_identities`     Tweedie's formula on two priors (chapter 7)
- :mod:`~diffusion_lessons.symbolic.score_matching`         denoising and implicit score matching = explicit + constants (chapter 8)
"""
