"""The noise level (chapters 3 and 6).

- :mod:`~diffusion_lessons.noise.schedules`           fixed schedules: β, ᾱ, σ, SNR and log-SNR
- :mod:`~diffusion_lessons.noise.learned_schedule`    a learned monotone log-SNR (VDM)
- :mod:`~diffusion_lessons.noise.time_sampling`       uniform and low-discrepancy times, and the steps they map to
"""
