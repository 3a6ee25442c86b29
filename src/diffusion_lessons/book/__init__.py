"""Page support: glue, the CPU/GPU size switch, plots and sliders. No math module imports it.

- :mod:`~diffusion_lessons.book.pages`          glue, the size switch, the device
- :mod:`~diffusion_lessons.book.plots`          plotting helpers that keep hidden cells short
- :mod:`~diffusion_lessons.book.interactive`    sliders: live (ipywidgets) and static (no kernel)
"""
