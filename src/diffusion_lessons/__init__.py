"""diffusion_lessons: the library behind the Diffusion Lessons textbook.

Modules follow the order in which the book introduces their objects:

- :mod:`~diffusion_lessons.checks`            shape and range checks shared by every module
- :mod:`~diffusion_lessons.pages`             glue for the pages, the CPU/GPU size switch, the device
- :mod:`~diffusion_lessons.distributions`     Gaussian densities and KLs, the discretized decoder, bits/dim
- :mod:`~diffusion_lessons.derivations`       sympy derivations (forward process, chapter 1)
- :mod:`~diffusion_lessons.elbo`              the ELBO on an exact linear-Gaussian model; gradient estimators
- :mod:`~diffusion_lessons.vae`               VAE and Markovian hierarchical VAE
- :mod:`~diffusion_lessons.schedules`         noise schedules: beta, alpha_bar, sigma, SNR, log-SNR
- :mod:`~diffusion_lessons.forward`           the forward process q(x_t | x_{t-1}) and q(x_t | x_0)
- :mod:`~diffusion_lessons.posterior`         q(x_{t-1} | x_t, x_0); exact posterior means of mixtures
- :mod:`~diffusion_lessons.parameterizations` x_0, eps and score predictions and their conversions
- :mod:`~diffusion_lessons.losses`            the discrete-time diffusion ELBO and training losses
- :mod:`~diffusion_lessons.samplers`          ancestral sampling with a trajectory callback
- :mod:`~diffusion_lessons.vlb`               the bound through the SNR, continuous time, time samplers
- :mod:`~diffusion_lessons.learned_schedule`  a monotone learned log-SNR schedule
- :mod:`~diffusion_lessons.tweedie`           Tweedie's formula
- :mod:`~diffusion_lessons.nets`              time embedding and the MLP denoiser
- :mod:`~diffusion_lessons.unet`              the U-Net for images
- :mod:`~diffusion_lessons.train`             the small training loop of the chapters
- :mod:`~diffusion_lessons.checkpoints`       safetensors checkpoints: weights files and training states
- :mod:`~diffusion_lessons.engine`            the fast image trainer (GPU, resumable, DDP)
- :mod:`~diffusion_lessons.likelihood`        image bits/dim in discrete and continuous time
- :mod:`~diffusion_lessons.cli`               ``python -m diffusion_lessons.cli train|eval``
- :mod:`~diffusion_lessons.data`              2-D distributions with exact densities, digits, MNIST
- :mod:`~diffusion_lessons.plots`             plotting helpers that keep hidden notebook cells short
- :mod:`~diffusion_lessons.interactive`       sliders: live (ipywidgets) and static (no kernel)
"""

__version__ = "0.1.0"

BOOK_REPOSITORY = "https://github.com/diffusion-lessons/diffusion-lessons"
"""Where the book and the library live; the Colab cells install from here."""
