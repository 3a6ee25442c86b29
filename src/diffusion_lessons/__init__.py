"""diffusion_lessons: the library behind the Diffusion Lessons textbook.

Modules follow the order in which the book introduces their objects:

- :mod:`~diffusion_lessons.checks`      shape and range checks shared by every module
- :mod:`~diffusion_lessons.schedules`   noise schedules: beta, alpha_bar, sigma, SNR, log-SNR
- :mod:`~diffusion_lessons.forward`     the forward process q(x_t | x_{t-1}) and q(x_t | x_0)
- :mod:`~diffusion_lessons.derivations` sympy derivations that the chapters show and the tests re-run
- :mod:`~diffusion_lessons.data`        2-D distributions with exact densities, digits, MNIST
- :mod:`~diffusion_lessons.plots`       plotting helpers that keep hidden notebook cells short
- :mod:`~diffusion_lessons.interactive` sliders: live (ipywidgets) and static (no kernel)
"""

__version__ = "0.1.0"

BOOK_REPOSITORY = "https://github.com/diffusion-lessons/diffusion-lessons"
"""Where the book and the library live; the Colab cells install from here."""
