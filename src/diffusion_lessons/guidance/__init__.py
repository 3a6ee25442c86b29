"""Conditioning and guidance (chapter 9).

- :mod:`~diffusion_lessons.guidance.labelled`     a labelled Gaussian mixture, exact at every noise level
- :mod:`~diffusion_lessons.guidance.guided`       conditional denoisers, classifier(-free) guidance
- :mod:`~diffusion_lessons.guidance.metrics`      accuracy, features, Fréchet distance, KID, intervals
"""
