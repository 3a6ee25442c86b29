"""Image data sets: scikit-learn's 8×8 digits, MNIST and Fashion-MNIST.

:data:`DATASETS` holds one :class:`DatasetSpec` per set (image shape, pixel levels, checksums,
mirrors) and :func:`load_images` is the one loader every chapter, the engine and the command line
call: ``load_images(name, split) → (N, C, H, W)`` in [−1, 1]. :func:`load_digits` and
:func:`load_mnist` below it read the raw sets with their labels.

MNIST and Fashion-MNIST are read from ``root`` (an argument), else from the folder named by the
environment variable ``DIFFUSION_LESSONS_DATA``, else from a cache folder
(``~/.cache/diffusion_lessons``); when the ``.npz`` file is missing there it is downloaded once from
the standard public mirrors, each file verified by its SHA-256, and written atomically.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diffusion_lessons.checks import check_choice, check_positive_int


def scale_images(images: Tensor, max_value: float = 255.0) -> Tensor:
    """Integer pixels 0..max_value → float32 in [−1, 1], with a channel axis: ``(N, H, W) → (N, 1, H, W)``."""
    images = torch.as_tensor(images)
    if images.ndim != 3:
        raise ValueError(f"images must have shape (N, H, W), got {tuple(images.shape)}")
    return (images.float() / max_value * 2.0 - 1.0)[:, None]


def load_digits(
    split: str = "train", *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled 8×8 digits (1,797 images, no download), split reproducibly.

    Returns ``(images, labels)``: images float32 ``(N, 1, 8, 8)`` in [−1, 1] (raw pixels 0..16),
    labels int64 ``(N,)``. ``split`` is ``"train"``, ``"test"`` or ``"all"``.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    check_choice(split, ("train", "test", "all"), name="split")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    bunch = _sk_load_digits()
    images = scale_images(torch.as_tensor(bunch.images), max_value=16.0)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    if split == "all":
        return images, labels
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = round(test_fraction * len(labels))
    idx = perm[:n_test] if split == "test" else perm[n_test:]
    return images[idx], labels[idx]


# MNIST-format datasets: the SHA-256 of each uncompressed IDX file (see shared/data/SOURCES.md).
# The same hashes check a downloaded file and a .npz: the IDX bytes are a 4-byte magic number,
# the big-endian int32 dimensions, then the uint8 payload, which is exactly the .npz array.
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class DatasetSpec:
    """One image data set: its ``name``, image ``shape`` (C, H, W), number of pixel levels ``bins``
    and of classes ``num_classes`` (labels 0..num_classes − 1).

    Pixel k of 0..bins−1 is the value 2k/(bins − 1) − 1 in [−1, 1]. A downloaded set also has
    the SHA-256 of each IDX file (keys of ``IDX_FILES``) and the ``mirrors`` that serve them;
    a bundled one (the digits) has neither.
    """

    name: str
    shape: tuple[int, int, int]
    bins: int
    sha256: Mapping[str, str] = field(default_factory=dict)
    mirrors: tuple[str, ...] = ()
    num_classes: int = 10

    @property
    def dim(self) -> int:
        """Pixels per image, C·H·W: the D of a flattened image ``(N, D)``."""
        return math.prod(self.shape)


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("digits", (1, 8, 8), 17),
        DatasetSpec(
            "mnist",
            (1, 28, 28),
            256,
            sha256={
                "x_train": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                "y_train": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                "x_test": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                "y_test": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            },
            mirrors=(
                "https://ossci-datasets.s3.amazonaws.com/mnist/",
                "https://storage.googleapis.com/cvdf-datasets/mnist/",
            ),
        ),
        DatasetSpec(
            "fashion_mnist",
            (1, 28, 28),
            256,
            sha256={
                "x_train": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                "y_train": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                "x_test": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                "y_test": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            },
            mirrors=(
                "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
            ),
        ),
    )
}
"""Every image data set the book uses, by name: the one registry (shape, bins, checksums, mirrors)."""

DOWNLOADED = tuple(name for name, spec in DATASETS.items() if spec.mirrors)
"""The data sets in MNIST's IDX format, read from ``{name}.npz`` (downloaded when missing)."""


DATA_ENV = "DIFFUSION_LESSONS_DATA"
"""Environment variable naming a folder that holds (or will hold) ``mnist.npz`` etc."""


class DatasetError(RuntimeError):
    """A dataset file is missing, corrupt, or could not be downloaded; the message says what to do."""


def data_dir(root: str | os.PathLike | None = None) -> Path:
    """The folder datasets are read from and cached in: ``root``, else $DIFFUSION_LESSONS_DATA, else the cache."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "diffusion_lessons"


def idx_bytes(array: np.ndarray) -> bytes:
    """The bytes of the IDX file holding a uint8 ``array``: magic number, dimensions, payload."""
    if array.dtype != np.uint8:
        raise ValueError(f"array must have dtype uint8, got {array.dtype}")
    header = np.array([0x800 + array.ndim, *array.shape], dtype=">i4").tobytes()
    return header + np.ascontiguousarray(array).tobytes()


def parse_idx(raw: bytes) -> np.ndarray:
    """Parse the bytes of an uncompressed IDX file of uint8 data (MNIST's format)."""
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise DatasetError("not an IDX file of uint8 data (bad magic number)")
    ndim = raw[3]
    shape = tuple(np.frombuffer(raw[4 : 4 + 4 * ndim], dtype=">i4"))
    payload = np.frombuffer(raw[4 + 4 * ndim :], dtype=np.uint8)
    if payload.size != math.prod(shape):
        raise DatasetError(f"IDX payload has {payload.size} bytes, header promises {shape}")
    return payload.reshape(shape)


def _verify_arrays(arrays: dict[str, np.ndarray], name: str, source: str) -> None:
    for key, expected in DATASETS[name].sha256.items():
        if key not in arrays:
            raise DatasetError(f"{source} has no array {key!r}; expected {sorted(IDX_FILES)}")
        got = hashlib.sha256(idx_bytes(arrays[key])).hexdigest()
        if got != expected:
            raise DatasetError(
                f"{source}: array {key!r} fails its checksum (sha256 {got[:16]}…, expected "
                f"{expected[:16]}…). The file is corrupt or truncated: delete it and run again to "
                "download a fresh copy."
            )


def _download(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (public https mirror)
        return response.read()


def download_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    mirrors: list[str] | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``name`` ("mnist" or "fashion_mnist") into ``data_dir(root) / f"{name}.npz"``.

    Each IDX file is fetched (gzip) from the first mirror that serves it with the right SHA-256;
    nothing is written unless all four verify, and the ``.npz`` is written atomically.
    """
    check_choice(name, DOWNLOADED, name="dataset")
    from tqdm.auto import tqdm

    folder = data_dir(root)
    mirrors = list(DATASETS[name].mirrors if mirrors is None else mirrors)
    arrays: dict[str, np.ndarray] = {}
    failures: list[str] = []
    for key in tqdm(IDX_FILES, desc=f"downloading {name}", disable=not progress):
        for mirror in mirrors:
            url = mirror + IDX_FILES[key] + ".gz"
            try:
                raw = gzip.decompress(_download(url, timeout))
            except (urllib.error.URLError, OSError, EOFError, ValueError) as err:
                failures.append(f"{url}: {err}")
                continue
            got = hashlib.sha256(raw).hexdigest()
            if got != DATASETS[name].sha256[key]:
                failures.append(f"{url}: checksum mismatch (sha256 {got[:16]}…)")
                continue
            arrays[key] = parse_idx(raw)
            break
        else:
            raise DatasetError(
                f"could not download {name} ({IDX_FILES[key]}); tried:\n  "
                + "\n  ".join(failures)
                + f"\nNothing was cached. If you are offline, copy {name}.npz (arrays x_train, "
                f"y_train, x_test, y_test) into a folder and set {DATA_ENV}=/that/folder, or pass "
                "root='/that/folder'."
            )
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.npz"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".npz.part")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


_VERIFIED: dict[tuple[str, int, int], bool] = {}


def load_mnist(
    split: str = "train",
    *,
    name: str = "mnist",
    root: str | os.PathLike | None = None,
    download: bool = True,
) -> tuple[Tensor, Tensor]:
    """MNIST or Fashion-MNIST as ``(images, labels)``: uint8 ``(N, 28, 28)`` and int64 ``(N,)``.

    ``split`` is ``"train"`` (60,000) or ``"test"`` (10,000); ``name`` is ``"mnist"`` or
    ``"fashion_mnist"``. The file ``{name}.npz`` is looked up in :func:`data_dir` and verified
    against the published checksums; if it is missing and ``download`` is true it is downloaded.
    Use :func:`scale_images` to get floats in [−1, 1].
    """
    check_choice(split, ("train", "test"), name="split")
    check_choice(name, DOWNLOADED, name="dataset")
    path = data_dir(root) / f"{name}.npz"
    if not path.exists():
        if not download:
            raise DatasetError(
                f"{path} does not exist. Call load_mnist(..., download=True), or set {DATA_ENV} "
                f"to a folder holding {name}.npz."
            )
        download_dataset(name, root)
    stat = path.stat()
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError) as err:
        raise DatasetError(
            f"{path} could not be read ({err}); it is corrupt or truncated: delete it and run "
            "again to download a fresh copy."
        ) from err
    except Exception as err:  # zipfile.BadZipFile and friends
        raise DatasetError(
            f"{path} could not be read ({type(err).__name__}: {err}); it is corrupt or truncated: "
            "delete it and run again to download a fresh copy."
        ) from err
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        _verify_arrays(arrays, name, str(path))
        _VERIFIED[key] = True
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    return torch.from_numpy(x.copy()), torch.from_numpy(y.astype(np.int64))


def _check_request(name: str, split: str, limit: int | None) -> None:
    check_choice(name, tuple(DATASETS), name="dataset")
    check_choice(split, ("train", "test"), name="split")
    if limit is not None:
        check_positive_int(limit, name="limit")


def load_images(
    name: str,
    split: str = "train",
    *,
    root: str | os.PathLike | None = None,
    limit: int | None = None,
    download: bool = True,
) -> Tensor:
    """The images of data set ``name`` (a key of :data:`DATASETS`): float32 ``(N, C, H, W)`` in [−1, 1].

    ``split`` is ``"train"`` or ``"test"``; ``limit`` keeps the first ``limit`` images of the
    split. Pixel values lie on the grid of ``DATASETS[name].bins`` levels. A page that models
    flat vectors takes ``load_images(...).flatten(1)``, shape ``(N, D)`` with
    D = ``DATASETS[name].dim``. ``root`` and ``download`` are as in :func:`load_mnist`.
    """
    _check_request(name, split, limit)
    if name == "digits":
        return load_digits(split)[0][:limit]
    raw, _ = load_mnist(split, name=name, root=root, download=download)
    return scale_images(raw[:limit], max_value=DATASETS[name].bins - 1)


def load_labels(
    name: str,
    split: str = "train",
    *,
    root: str | os.PathLike | None = None,
    limit: int | None = None,
    download: bool = True,
) -> Tensor:
    """The class labels of the images :func:`load_images` returns for the same arguments: int64
    ``(N,)`` in 0..``DATASETS[name].num_classes`` − 1, row k the label of image k."""
    _check_request(name, split, limit)
    if name == "digits":
        return load_digits(split)[1][:limit]
    return load_mnist(split, name=name, root=root, download=download)[1][:limit]
