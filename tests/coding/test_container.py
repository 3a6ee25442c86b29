"""The compressed file: header checks and clear errors on bad input (never a wrong image)."""

from __future__ import annotations

import numpy as np
import pytest
from coding import coding_toy as toy

from diffusion_lessons.coding import container
from diffusion_lessons.coding.grids import LatentGrid

PROTOS = toy.random_prototypes()


@pytest.fixture(scope="module")
def made():
    images = toy.jittered(PROTOS, 6)
    den = toy.denoiser_for(PROTOS)
    sha = container.model_sha256(den)
    data, _ = container.compress(den, images, toy.code(6), model_sha256=sha, batch=3)
    return images, den, sha, data


def test_round_trip_and_header(made):
    images, den, sha, data = made
    assert np.array_equal(container.decompress(data, den, model_sha256=sha), images)
    header, words = container.read_header(data)
    assert header["model_sha256"] == sha and header["shape"] == list(images.shape)
    assert len(header["alpha_bar"]) == 7 and header["alpha_bar"][0] == 1.0
    assert words.dtype == np.uint32 and len(words) > header["initial_words"]


@pytest.mark.parametrize("cut", [3, 12, 40, -4, -1])
def test_truncated_file(made, cut):
    _, den, sha, data = made
    with pytest.raises(ValueError, match="truncated|not a diffusion-lessons|corrupted"):
        container.decompress(data[:cut], den, model_sha256=sha)


def test_corrupted_payload_and_magic(made):
    _, den, sha, data = made
    flipped = bytearray(data)
    flipped[-9] ^= 0x10
    with pytest.raises(ValueError, match="corrupted"):
        container.decompress(bytes(flipped), den, model_sha256=sha)
    with pytest.raises(ValueError, match="not a diffusion-lessons"):
        container.decompress(b"PNG0" + data[4:], den, model_sha256=sha)
    newer = bytearray(data)
    newer[4] = 9
    with pytest.raises(ValueError, match="version 9"):
        container.decompress(bytes(newer), den, model_sha256=sha)


def test_another_models_file(made):
    _, _, _, data = made
    other = toy.denoiser_for(toy.random_prototypes(seed=9))
    with pytest.raises(ValueError, match="another model"):
        container.decompress(data, other, model_sha256=container.model_sha256(other))


def test_model_checksum_sees_weights():
    a, b = toy.denoiser_for(PROTOS), toy.denoiser_for(PROTOS, scale=1.0)
    assert container.model_sha256(a) == container.model_sha256(b)
    c = toy.denoiser_for(np.clip(PROTOS.astype(int) + 1, 0, 255).astype(np.uint8))
    assert container.model_sha256(a) != container.model_sha256(c)


def test_bad_images():
    den = toy.denoiser_for(PROTOS)
    sha = container.model_sha256(den)
    code = toy.code(4)
    with pytest.raises(TypeError, match="uint8"):
        container.compress(den, PROTOS.astype(np.float32), code, model_sha256=sha)
    with pytest.raises(ValueError, match=r"values in \[0, 16\]"):
        container.compress(den, PROTOS, toy.code(4, bins=17), model_sha256=sha)
    with pytest.raises(ValueError, match="shape"):
        container.compress(den, PROTOS.reshape(-1), code, model_sha256=sha)
    with pytest.raises(ValueError, match=r"shape \(1, 4, 4\)"):
        container.compress(den, PROTOS[:, :, :2], code, model_sha256=sha, image_shape=(1, 4, 4))


def test_bad_grid_arguments():
    with pytest.raises(ValueError, match="precision"):
        LatentGrid(precision=13)
    with pytest.raises(TypeError, match="window"):
        LatentGrid(window=2.5)
