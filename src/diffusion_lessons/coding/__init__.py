"""Lossless compression with a diffusion model: bits-back coding with ANS (book: chapter 11,
"Likelihood and compression").

- :mod:`~diffusion_lessons.coding.grids`      latent grids: symbol ↔ value, alphabet, leak bound
- :mod:`~diffusion_lessons.coding.bbans`      the BB-ANS encoder/decoder of a diffusion chain
- :mod:`~diffusion_lessons.coding.container`  the file format (versioned header, checksums)
- :mod:`~diffusion_lessons.coding.commands`   the ``compress`` / ``decompress`` CLI subcommands
- :mod:`~diffusion_lessons.coding.measured`   the stored MNIST sweep (file sizes vs T and bound)
"""
