"""diffusion_lessons: the library behind the Diffusion Lessons textbook.

The package is cut by mathematical object, not by chapter: one object (the bound, a schedule, a
denoiser) serves several chapters. Sub-packages, in the order the book introduces them:

- :mod:`~diffusion_lessons.checks`         shape and range checks shared by every module
- :mod:`~diffusion_lessons.gaussians`      Gaussian densities and KLs, the discretized decoder, bits/dim
- :mod:`~diffusion_lessons.montecarlo`     Monte Carlo means and their standard errors
- :mod:`~diffusion_lessons.divergence`     the divergence of a vector field: exact, Hutchinson (chapter 8)
- :mod:`~diffusion_lessons.latent`         chapters 1–2: the ELBO, VAE, hierarchical VAE
- :mod:`~diffusion_lessons.noise`          chapters 3, 6: noise schedules, fixed and learned; time sampling
- :mod:`~diffusion_lessons.process`        chapters 3–4: the forward process and its posterior
- :mod:`~diffusion_lessons.denoisers`      chapters 5, 7: parameterizations, Tweedie
- :mod:`~diffusion_lessons.objectives`     chapters 4–6: the diffusion bound and training losses
- :mod:`~diffusion_lessons.sampling`       chapter 4: running the reverse process
- :mod:`~diffusion_lessons.guidance`       chapter 9: conditioning and guidance
- :mod:`~diffusion_lessons.nets`           chapters 4–10: noise-level embedding, MLP, U-Net
- :mod:`~diffusion_lessons.data`           every chapter: toy data, image sets, exact oracles
- :mod:`~diffusion_lessons.likelihood`     chapter 10: bits/dim of an image set
- :mod:`~diffusion_lessons.training`       chapters 1–10: the teaching loop, checkpoints, the image trainer, shipped models
- :mod:`~diffusion_lessons.coding`         chapter 11: bits-back compression with a diffusion model (ANS)
- :mod:`~diffusion_lessons.cli`            ``diffusion-lessons train|eval|export|compress|decompress``
- :mod:`~diffusion_lessons.symbolic`       sympy derivations the pages show
- :mod:`~diffusion_lessons.book`           page support: glue, sizes, plots, sliders

Pages import the module they teach (``from diffusion_lessons.process import forward``); nothing is
re-exported from here.
"""

__version__ = "0.1.0"

BOOK_REPOSITORY = "https://github.com/diffusion-lessons/diffusion-lessons"
"""Where the book and the library live; the Colab cells install from here."""
