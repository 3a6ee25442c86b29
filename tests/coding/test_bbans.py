"""Bits-back coding through a diffusion chain: round trips, accounting, rate vs the bound."""

from __future__ import annotations

import functools
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from coding import coding_toy as toy

from diffusion_lessons.coding import bbans, container
from diffusion_lessons.coding.grids import MAX_HALF_WIDTH, LatentGrid, Lattice
from diffusion_lessons.data.datasets import load_digits
from diffusion_lessons.likelihood import evaluate_bits_per_dim
from diffusion_lessons.objectives import nelbo
from diffusion_lessons.objectives.discrete_time import log_snr_grid, nelbo_terms_exact_sum

HERE = Path(__file__).resolve().parent
PROTOS = toy.random_prototypes()

CHILD = """
import sys, numpy as np
sys.path.insert(0, {here!r})
from coding import coding_toy as toy
from diffusion_lessons.coding import container
protos = np.load({protos!r})
den = toy.denoiser_for(protos, bins={bins})
data = open({src!r}, "rb").read()
out = container.decompress(data, den, model_sha256=container.model_sha256(den))
np.save({dst!r}, out)
"""


def _decode_in_fresh_process(tmp_path, data: bytes, protos: np.ndarray, bins: int) -> np.ndarray:
    src, dst, pfile = tmp_path / "x.dlbb", tmp_path / "out.npy", tmp_path / "protos.npy"
    src.write_bytes(data)
    np.save(pfile, protos)
    code = CHILD.format(
        here=str(HERE.parent), protos=str(pfile), bins=bins, src=str(src), dst=str(dst)
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    return np.load(dst)


def test_round_trip_random_images_fresh_process(tmp_path):
    images = toy.jittered(PROTOS, 12)
    den = toy.denoiser_for(PROTOS)
    data, _ = container.compress(
        den, images, toy.code(8), model_sha256=container.model_sha256(den), batch=5
    )
    back = _decode_in_fresh_process(tmp_path, data, PROTOS, 256)
    assert back.dtype == np.uint8 and np.array_equal(back, images)


def test_round_trip_real_digits_fresh_process(tmp_path):
    train, _ = load_digits("train")
    test, _ = load_digits("test")
    protos = ((train[:200].numpy() + 1) * 8).round().astype(np.uint8)  # raw levels 0..16
    images = ((test[:6].numpy() + 1) * 8).round().astype(np.uint8)
    den = toy.denoiser_for(protos, bins=17)
    code = toy.code(6, bins=17)
    data, _ = container.compress(den, images, code, model_sha256=container.model_sha256(den))
    back = _decode_in_fresh_process(tmp_path, data, protos, 17)
    assert np.array_equal(back, images)


def test_initial_bits_come_back_exactly():
    images = toy.jittered(PROTOS, 6)
    den, code = toy.denoiser_for(PROTOS), toy.code(6)
    init = bbans.initial_words(500, seed=3)
    words, _ = bbans.encode(den, images, code, batch=3, init=init)
    back, recovered = bbans.decode(den, words, code, images.shape, batch=3)
    assert np.array_equal(back, images)
    assert recovered.dtype == np.uint32 and np.array_equal(recovered, init)


def test_cheating_model_diffusion_steps_cost_nothing():
    # one prototype and data equal to it: x̂_0 = x_0 exactly, so p_θ(x_{t-1}|x_t) = q(x_{t-1}|x_t, x_0)
    proto = PROTOS[:1]
    images = np.repeat(proto, 8, axis=0)
    den, code = toy.denoiser_for(proto), toy.code(10)
    init = bbans.initial_words(4000, 0)
    words, ledger = bbans.encode(den, images, code, batch=8, init=init)
    dims = images.size
    steps = [r for r in ledger if 2 <= r["step"] <= code.T]
    net_steps = sum(r["pushed"] - r["popped"] for r in steps)
    popped = sum(r["popped"] for r in steps)
    # pushing back exactly what was popped returns the bits up to ANS rounding: a few bits in all
    assert popped > 2 * (code.T - 1) * dims  # the steps did consume bits (≥ 2 per latent) ...
    assert abs(net_steps) <= 0.01 * dims  # ... and gave them all back
    assert all(r["bound"] < 1e-6 for r in steps)  # x̂_0 = x_0 up to the 2^-20 rounding
    # what is left is the prior term: the coded bits within 1 % of KL(q(x_T|x_0) ‖ N(0, I))
    prior = [r for r in ledger if r["step"] == code.T + 1][0]
    assert prior["pushed"] - prior["popped"] == pytest.approx(prior["bound"], rel=0.01, abs=2.0)


def test_ledger_adds_up_to_the_file_size():
    images = toy.jittered(PROTOS, 20)
    den, code = toy.denoiser_for(PROTOS), toy.code(10)
    init = bbans.initial_words(2000, 0)
    words, ledger = bbans.encode(den, images, code, batch=7, init=init)
    ledger_bits = sum(r["pushed"] - r["popped"] for r in ledger)
    # the stack is stored in whole 32-bit words: file bits and valid bits differ by < 32 each end
    assert abs(bbans.net_bits(words, init) - ledger_bits) < 64
    assert {r["batch"] for r in ledger} == {0, 1, 2}


def test_net_rate_of_a_long_sequence_is_near_the_negative_elbo():
    images = toy.jittered(PROTOS, 192, seed=5)
    den, code = toy.denoiser_for(PROTOS), toy.code(10)
    init = bbans.initial_words(3000, 0)
    words, _ = bbans.encode(den, images, code, batch=64, init=init)
    rate = bbans.net_bits(words, init) / images.size
    # independent: the library's −ELBO of the same chain (continuous latents, exact sum over steps)
    x0 = 2.0 * torch.from_numpy(images.astype(np.float64)) / 255 - 1
    lam = log_snr_grid(torch.tensor(code.alpha_bar, dtype=torch.float64))
    dec = lambda a, b, s: nelbo.discretized_reconstruction_nll(a, b, s, 256)  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    terms = nelbo_terms_exact_sum(den, x0, lam, decoder_nll=dec, generator=gen)
    bound = terms["total"].mean().item() / math.log(2) / images[0].size
    # margin: latents on a lattice of σ/8 change each step's KL by O(2^-6) relative; the spread of a
    # 192-image mean of the per-image cost is a few %; 8 % covers both (measured gap ≈ 1 %)
    assert rate == pytest.approx(bound, rel=0.08)


def _x0(images: np.ndarray, bins: int) -> torch.Tensor:
    return 2.0 * torch.from_numpy(images.astype(np.float64)) / (bins - 1) - 1


@pytest.mark.parametrize(("bins", "T"), [(256, 10), (17, 6)])
def test_coder_terms_are_the_elbo_of_the_clipped_model_on_the_code_grid(bins, T):
    # scale 1.3 pushes x̂_0 past ±1 for bright and dark pixels, so the clipping matters here
    protos = PROTOS * (bins - 1) // 255
    den, code = toy.denoiser_for(protos, bins=bins, scale=1.3), toy.code(T, bins=bins)
    x0 = _x0(toy.jittered(protos, 32, jitter=0), bins)

    # by hand: x̂_0 clipped and rounded as the coder does, on the ᾱ grid, decoder with `bins` levels
    def clipped(x, log_snr):
        return torch.round(den(x, log_snr).clamp(-1.0, 1.0) / 2**-20) * 2**-20

    lam = log_snr_grid(torch.tensor(code.alpha_bar, dtype=torch.float64))
    dec = functools.partial(nelbo.discretized_reconstruction_nll, bins=bins)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    hand = nelbo_terms_exact_sum(clipped, x0, lam, decoder_nll=dec, generator=gen())
    terms = bbans.coder_terms(den, code)(x0, generator=gen())
    assert terms.keys() == hand.keys()
    # the same float64 operations on the same draws: equal to rounding (1e-9 nats allows for a
    # different summation order), where leaving the clipping out moves the total by > 1 nat
    for k in hand:
        torch.testing.assert_close(terms[k], hand[k], rtol=1e-9, atol=1e-9)
    raw = nelbo_terms_exact_sum(den, x0, lam, decoder_nll=dec, generator=gen())
    assert (raw["total"] - hand["total"]).abs().max() > 1.0


def test_net_rate_of_an_overshooting_model_is_its_clipped_bound():
    # x̂_0 · 1.3 overshoots [−1, 1]: the coder codes with the clipped model, and its net rate on 256
    # images is coder_terms' bound, not the unclipped model's (12 % higher here)
    images = toy.jittered(PROTOS, 256, seed=5)
    den, code = toy.denoiser_for(PROTOS, scale=1.3), toy.code(10)
    init = bbans.initial_words(3000, 0)
    words, _ = bbans.encode(den, images, code, batch=64, init=init)
    rate = bbans.net_bits(words, init) / images.size
    x0 = _x0(images, 256).repeat(4, 1, 1, 1)  # 4 draws of the chain per image
    bound = evaluate_bits_per_dim(bbans.coder_terms(den, code), x0, batch_size=1024)["total"]
    dec = functools.partial(nelbo.discretized_reconstruction_nll, bins=256)
    unclipped = evaluate_bits_per_dim(
        lambda x, generator: nelbo_terms_exact_sum(
            den, x, code.log_snr, decoder_nll=dec, generator=generator
        ),
        x0,
        batch_size=1024,
    )["total"]
    # margin 3 %: the rate is one draw of the chain per image (its 256-image mean moved by ≤ 0.6 %
    # over 6 seeds of images and initial bits), the bound's standard error is 0.15 %, whole words
    # add < 64 bits (0.25 %), latents on a σ/8 lattice change each KL by O(2^-6); the unclipped
    # bound lies ≥ 6 % (measured 12 %) above
    assert rate == pytest.approx(bound, rel=0.03)
    assert unclipped > 1.06 * bound


def test_coder_terms_names_a_bad_argument():
    with pytest.raises(TypeError, match="code must be a ChainCode"):
        bbans.coder_terms(toy.denoiser_for(PROTOS), code=toy.code(4).alpha_bar)
    with pytest.raises(TypeError, match="denoiser must be callable"):
        bbans.coder_terms(None, toy.code(4))


def test_decoder_perturbed_by_1e_12_still_decodes_but_1e_3_does_not():
    images = toy.jittered(PROTOS, 8)
    code = toy.code(10)
    den = toy.denoiser_for(PROTOS)
    sha = container.model_sha256(den)
    data, _ = container.compress(den, images, code, model_sha256=sha, batch=4)
    near = toy.denoiser_for(PROTOS, scale=1 + 1e-12)
    assert np.array_equal(container.decompress(data, near, model_sha256=sha), images)
    far = toy.denoiser_for(PROTOS, scale=1 - 1e-3)
    try:
        out = container.decompress(data, far, model_sha256=sha)
    except ValueError:
        return  # detected: the initial bits did not come back
    assert not np.array_equal(out, images)  # pragma: no cover - never a silent wrong success


def test_leak_mass_bound():
    for T in (10, 50, 200):
        for precision in (0, 3, 6):
            code = toy.code(T, precision=precision)
            assert code.leak_bound() < 1e-4
    lat = LatentGrid(precision=12, window=64).lattice(1e-3, 1.0)
    assert lat.half_width <= MAX_HALF_WIDTH and lat.alphabet / 2**24 < 1e-4


def test_lattice_values_and_anchor():
    lat = Lattice(step=0.25, half_width=10)
    assert np.array_equal(lat.value(np.array([-2, 0, 3])), [-0.5, 0.0, 0.75])
    assert np.array_equal(lat.anchor(np.array([0.3, -0.3, 0.126])), [1, -1, 1])
    g = LatentGrid(precision=3, window=8).lattice(0.5, 1.0)
    assert g.step == pytest.approx(0.5 / 8) and g.half_width == math.ceil(5.0 / (0.5 / 8)) + 2


def test_draws_from_q_use_the_narrow_window():
    """A draw is coded within `window` standard deviations of q's own mean, on the same lattice
    step as the model's wide window: at a low-noise step the alphabet shrinks from the capped
    1537 symbols to 2 (8 σ/δ + 1) + 1, and the leak bound by as much."""
    grid = LatentGrid(precision=3, window=8)
    std = 1e-3
    wide = grid.lattice(std, 0.3)  # c_0 = 0.3 ≫ σ̃: the step is widened to fit the cap
    narrow = wide.around_mean(std, grid.window)
    assert wide.half_width == MAX_HALF_WIDTH and narrow.step == wide.step
    assert narrow.half_width == math.ceil(8 * std / wide.step)
    assert narrow.leak_bound() < wide.leak_bound() / 10
    code = toy.code(50, precision=3)
    narrow_leaks = [
        code.lattice(i).around_mean(code.std(i), code.grid.window).leak_bound()
        for i in range(1, code.T + 1)
    ]
    assert code.leak_bound() == max(narrow_leaks)
