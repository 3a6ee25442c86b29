"""Image data sets: the registry, the loader, and the files against their published checksums."""

import gzip
import http.server
import threading
from functools import partial

import numpy as np
import pytest
import torch

from diffusion_lessons.data import datasets

from conftest import REPO


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
        for digest in spec.sha256.values():
            assert digest in text


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'"):
        datasets.load_mnist("train", name="cifar10")
    with pytest.raises(ValueError, match="unknown dataset 'digits'; choose one of 'mnist'"):
        datasets.load_mnist("train", name="digits")  # bundled with scikit-learn, not an IDX file
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'"):
        datasets.load_images("cifar10")


def test_registry_specs_are_consistent():
    """Each spec's shape and bins against the published sizes; downloaded sets carry all four hashes."""
    spec = datasets.DATASETS
    assert (spec["digits"].shape, spec["digits"].bins, spec["digits"].dim) == ((1, 8, 8), 17, 64)
    for name in ("mnist", "fashion_mnist"):
        assert (spec[name].shape, spec[name].bins, spec[name].dim) == ((1, 28, 28), 256, 784)
        assert set(spec[name].sha256) == set(datasets.IDX_FILES) and spec[name].mirrors
    assert datasets.DOWNLOADED == ("mnist", "fashion_mnist")
    assert not spec["digits"].sha256 and not spec["digits"].mirrors


@pytest.mark.parametrize("name", ["digits", "mnist"])
def test_load_images_shape_grid_and_limit(name, data_root):
    """load_images: (N, C, H, W) of the spec, every pixel on the grid 2k/(bins − 1) − 1, limit = a prefix."""
    spec = datasets.DATASETS[name]
    x = datasets.load_images(name, "test", root=data_root)
    assert x.dtype == torch.float32 and tuple(x.shape[1:]) == spec.shape
    levels = (x.double() + 1) / 2 * (spec.bins - 1)
    assert (levels - levels.round()).abs().max() < 1e-4  # float32 grid points, 1e-4 of a level
    assert levels.min().round() == 0 and levels.max().round() == spec.bins - 1
    head = datasets.load_images(name, "test", root=data_root, limit=7)
    assert head.shape == (7, *spec.shape) and torch.equal(head, x[:7])  # same file, same code
    train = datasets.load_images(name, "train", root=data_root, limit=3)
    assert train.shape == (3, *spec.shape)


def test_load_images_mnist_levels_are_the_raw_pixels(data_root):
    """The scaled MNIST test images map back to the uint8 pixels of the file (integers, exactly)."""
    raw, _ = datasets.load_mnist("test", root=data_root)
    x = datasets.load_images("mnist", "test", root=data_root, limit=100)
    assert torch.equal(((x[:, 0].double() + 1) / 2 * 255).round().to(torch.uint8), raw[:100])


def test_load_images_rejects_bad_arguments(data_root):
    with pytest.raises(ValueError, match="unknown split 'all'"):
        datasets.load_images("digits", "all")
    with pytest.raises(ValueError, match="limit"):
        datasets.load_images("digits", "train", limit=0)
