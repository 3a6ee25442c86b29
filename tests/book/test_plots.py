import io

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from diffusion_lessons.book import plots


def test_image_grid_places_each_image():
    images = torch.stack([torch.full((1, 2, 3), v) for v in (-1.0, 0.0, 1.0)])  # (3, 1, 2, 3)
    grid = plots.image_grid(images, nrow=2, pad=1, pad_value=0.5)
    assert grid.shape == (2 * 3 - 1, 2 * 4 - 1)
    assert np.all(grid[0:2, 0:3] == 0.0)  # −1 → 0
    assert np.all(grid[0:2, 4:7] == 0.5)  # 0 → 0.5
    assert np.all(grid[3:5, 0:3] == 1.0)  # 1 → 1
    assert np.all(grid[3:5, 4:7] == 0.5)  # empty cell keeps the padding value
    with pytest.raises(ValueError, match=r"images must have shape \(N, 1, H, W\)"):
        plots.image_grid(torch.zeros(3, 2, 2), nrow=1)


def test_array_to_png_round_trip():
    img = np.linspace(0, 1, 12).reshape(3, 4)
    decoded = mpimg.imread(io.BytesIO(plots.array_to_png(img, scale=2)), format="png")
    assert decoded.shape[:2] == (6, 8)
    assert np.allclose(decoded[::2, ::2, 0], img, atol=1 / 255 + 1e-6)
    with pytest.raises(ValueError, match="image must be 2-D"):
        plots.array_to_png(np.zeros((2, 2, 2, 2)))


def test_figure_to_png_and_scatter_panels():
    fig = plots.scatter_panels([torch.zeros(5, 2), torch.ones(5, 2)], ["a", "b"])
    assert len(fig.axes) == 2
    png = plots.figure_to_png(fig)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)
