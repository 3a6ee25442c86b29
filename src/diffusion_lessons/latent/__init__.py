"""Latent-variable models and their ELBO (chapters 1–2).

- :mod:`~diffusion_lessons.latent.linear_gaussian`    the linear-Gaussian model: exact evidence, posterior and ELBO
- :mod:`~diffusion_lessons.latent.estimators`         the IWAE bound; REINFORCE and reparameterization gradients
- :mod:`~diffusion_lessons.latent.vae`                the VAE and the Markovian hierarchical VAE
"""
