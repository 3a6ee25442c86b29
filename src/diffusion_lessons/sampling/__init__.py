"""Running the reverse process (chapter 4).

- :mod:`~diffusion_lessons.sampling.ancestral`    ancestral sampling with a trajectory callback
"""
