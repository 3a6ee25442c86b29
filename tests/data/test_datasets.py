"""Data: exact densities against scipy and autograd; datasets against their published checksums."""

import gzip
import http.server
import math
import threading
from functools import partial

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from diffusion_lessons.data import datasets, toy

from conftest import REPO


def _random_mixture(seed=0, K=3, D=2):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(K, D, D, generator=g, dtype=torch.float64)
    covs = A @ A.transpose(1, 2) + 0.3 * torch.eye(D, dtype=torch.float64)
    w = torch.rand(K, generator=g, dtype=torch.float64) + 0.2
    return toy.GaussianMixture(
        w / w.sum(), torch.randn(K, D, generator=g, dtype=torch.float64), covs
    )


def test_mixture_log_prob_matches_scipy():
    gm = _random_mixture()
    x = torch.randn(50, 2, dtype=torch.float64)
    expected = np.log(
        sum(
            w * multivariate_normal(m, c).pdf(x.numpy())
            for w, m, c in zip(gm.weights.numpy(), gm.means.numpy(), gm.covs.numpy(), strict=True)
        )
    )
    assert np.allclose(gm.log_prob(x).numpy(), expected, rtol=1e-10)


def test_mixture_score_matches_autograd():
    gm = _random_mixture(1)
    x = torch.randn(40, 2, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(gm.log_prob(x).sum(), x)
    assert torch.allclose(gm.score(x.detach()), grad, atol=1e-10)


def test_mixture_sample_moments():
    gm = _random_mixture(2)
    n = 200_000
    x = gm.sample(n, generator=torch.Generator().manual_seed(0))
    cov = gm.covariance()
    se = torch.sqrt(torch.diagonal(cov) / n)
    assert (torch.abs(x.mean(0) - gm.mean()) < 5 * se).all()
    assert torch.allclose(torch.cov(x.T), cov, rtol=0.03, atol=0.03)


def test_noised_mixture_is_the_law_of_xt():
    """noised(ᾱ) against Monte Carlo of x_t = √ᾱ x_0 + √(1 − ᾱ) ε: moments and log-likelihood."""
    gm = toy.eight_gaussians()
    ab = 0.3
    n = 100_000
    g = torch.Generator().manual_seed(3)
    x0 = gm.sample(n, generator=g)
    xt = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * torch.randn(
        x0.shape, generator=g, dtype=torch.float64
    )
    law = gm.noised(ab)
    assert torch.allclose(xt.mean(0), law.mean(), atol=0.02)
    assert torch.allclose(torch.cov(xt.T), law.covariance(), atol=0.03)
    # The true law has the highest expected log-likelihood; a wrong variance does worse.
    wrong = toy.GaussianMixture(law.weights, law.means, law.covs * 1.3)
    assert law.log_prob(xt).mean() > wrong.log_prob(xt).mean()


def test_mixture_rejects_bad_parameters():
    with pytest.raises(ValueError, match="weights must be positive and sum to 1"):
        toy.isotropic_mixture([0.5, 0.6], [[0.0, 0.0], [1.0, 1.0]], 1.0)
    with pytest.raises(ValueError, match="symmetric positive definite"):
        toy.GaussianMixture(torch.ones(1), torch.zeros(1, 2), -torch.eye(2)[None])
    with pytest.raises(ValueError, match=r"x must have shape \(N, 2\)"):
        toy.eight_gaussians().log_prob(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"alpha_bar must lie in \[0, 1\]"):
        toy.eight_gaussians().noised(1.5)


def test_checkerboard_density_integrates_to_one_and_covers_samples():
    cb = toy.Checkerboard()
    h = 0.01
    g = torch.arange(-2.5 + h / 2, 2.5, h, dtype=torch.float64)
    pts = torch.cartesian_prod(g, g)
    assert (cb.log_prob(pts).exp().sum() * h * h).item() == pytest.approx(1.0, abs=1e-3)
    samples = cb.sample(5000, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(cb.log_prob(samples)).all()


def test_digits_shapes_range_and_split():
    x_tr, y_tr = datasets.load_digits("train")
    x_te, y_te = datasets.load_digits("test")
    x_all, _ = datasets.load_digits("all")
    assert x_tr.shape[1:] == (1, 8, 8) and len(x_tr) + len(x_te) == len(x_all) == 1797
    assert x_all.min() == -1.0 and x_all.max() == 1.0  # 0/16·2 − 1 and 16/16·2 − 1 are exact
    # the split is a partition: no test image is also a training image (row sets are disjoint)
    rows = lambda x: {tuple(r) for r in x.flatten(1).tolist()}
    assert len(rows(x_tr) & rows(x_te)) <= 5  # the 8×8 set holds a few exact duplicates
    with pytest.raises(ValueError, match="unknown split 'val'"):
        datasets.load_digits("val")


def test_idx_round_trip():
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(datasets.parse_idx(datasets.idx_bytes(a)), a)
    with pytest.raises(datasets.DatasetError, match="magic"):
        datasets.parse_idx(b"\x01\x02\x03\x04")


def test_mnist_from_folder_matches_published_counts(data_root):
    """Label counts from shared/data/SOURCES.md (the standard MNIST counts)."""
    x, y = datasets.load_mnist("test", root=data_root)
    assert x.shape == (10000, 28, 28) and x.dtype == torch.uint8
    assert torch.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    scaled = datasets.scale_images(x[:5])
    assert scaled.shape == (5, 1, 28, 28) and scaled.min() >= -1 and scaled.max() <= 1


def test_mnist_reads_environment_variable(data_root, monkeypatch):
    monkeypatch.setenv(datasets.DATA_ENV, str(data_root))
    assert datasets.data_dir() == data_root
    _, y = datasets.load_mnist("train")
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]


def test_corrupt_and_truncated_files_fail_with_clear_message(data_root, tmp_path):
    with np.load(data_root / "mnist.npz") as npz:
        arrays = {k: npz[k].copy() for k in npz.files}
    arrays["x_test"][0, 14, 14] ^= 1  # one flipped bit
    np.savez(tmp_path / "mnist.npz", **arrays)
    with pytest.raises(datasets.DatasetError, match=r"'x_test' fails its checksum.*delete it"):
        datasets.load_mnist("test", root=tmp_path, download=False)
    raw = (data_root / "mnist.npz").read_bytes()
    (tmp_path / "mnist.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(datasets.DatasetError, match="corrupt or truncated"):
        datasets.load_mnist("test", root=tmp_path, download=False)


def test_missing_file_without_download(tmp_path):
    with pytest.raises(datasets.DatasetError, match="DIFFUSION_LESSONS_DATA"):
        datasets.load_mnist("test", root=tmp_path, download=False)


@pytest.fixture(scope="module")
def mirrors(data_root, tmp_path_factory):
    """Two local HTTP mirrors on 127.0.0.1: one serving MNIST's gzipped IDX files, one corrupt."""
    base = tmp_path_factory.mktemp("mirrors")
    good, bad = base / "good", base / "bad"
    good.mkdir()
    bad.mkdir()
    with np.load(data_root / "mnist.npz") as npz:
        for key, fname in datasets.IDX_FILES.items():
            raw = datasets.idx_bytes(npz[key])
            (good / f"{fname}.gz").write_bytes(gzip.compress(raw, compresslevel=1))
            broken = bytearray(raw)
            broken[-1] ^= 0xFF
            (bad / f"{fname}.gz").write_bytes(gzip.compress(bytes(broken), compresslevel=1))

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = partial(QuietHandler, directory=str(base))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    yield {"good": f"{url}/good/", "bad": f"{url}/bad/", "missing": f"{url}/missing/"}
    server.shutdown()


def test_download_verifies_and_caches(mirrors, tmp_path, data_root):
    path = datasets.download_dataset(
        "mnist", tmp_path, mirrors=[mirrors["bad"], mirrors["good"]], progress=False
    )
    assert path == tmp_path / "mnist.npz"
    x, y = datasets.load_mnist("test", root=tmp_path, download=False)
    x_ref, _ = datasets.load_mnist("test", root=data_root)
    assert torch.equal(x, x_ref)  # uint8 pixels of the same file: integers, compared exactly
    assert not list(tmp_path.glob("*.part")), "no temporary file is left behind"


def test_download_never_caches_a_corrupt_file(mirrors, tmp_path):
    with pytest.raises(datasets.DatasetError, match=r"(?s)checksum mismatch.*Nothing was cached"):
        datasets.download_dataset("mnist", tmp_path, mirrors=[mirrors["bad"]], progress=False)
    assert list(tmp_path.iterdir()) == []


def test_offline_error_says_what_to_do(tmp_path):
    closed = "http://127.0.0.1:9/"  # the discard port: nothing listens there
    with pytest.raises(datasets.DatasetError) as err:
        datasets.download_dataset("mnist", tmp_path, mirrors=[closed], timeout=2, progress=False)
    message = str(err.value)
    assert "mnist.npz" in message and datasets.DATA_ENV in message and "root=" in message
    assert not (tmp_path / "mnist.npz").exists()


def test_checksums_match_sources_md():
    """The hashes in the library are the IDX hashes listed in shared/data/SOURCES.md."""
    sources = REPO.parent / "shared" / "data" / "SOURCES.md"
    if not sources.exists():
        pytest.skip("shared/data/SOURCES.md is not beside the repository")
    text = sources.read_text()
    for spec in datasets.DATASETS.values():
        for digest in spec["sha256"].values():
            assert digest in text


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'"):
        datasets.load_mnist("train", name="cifar10")
