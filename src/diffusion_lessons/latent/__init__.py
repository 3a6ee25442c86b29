"""Latent-variable models and their ELBO (chapters 1–2).

- :mod:`~diffusion_lessons.latent.linear_gaussian`    the linear-Gaussian model: exact evidence, posterior and ELBO
- :mod:`~diffusion_lessons.latent.estimators`         the IWAE bound, held-out ELBO and IWAE; REINFORCE and reparameterization gradients
- :mod:`~diffusion_lessons.latent.vae`                the VAE: one latent level, its ELBO terms and rate
- :mod:`~diffusion_lessons.latent.hvae`               the Markovian hierarchical VAE, its ELBO terms, the diffusion top term
"""
