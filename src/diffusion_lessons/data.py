"""Data: 2-D distributions with exact densities, scikit-learn's 8×8 digits, MNIST and Fashion-MNIST.

The 2-D distributions make every identity in the book checkable: a Gaussian mixture has an exact
density and score, and so does its law after any amount of forward noise
(:meth:`GaussianMixture.noised`).

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .checks import check_choice, check_positive_int

# ---------------------------------------------------------------------------------------------
# 2-D distributions with exact densities


@dataclass(frozen=True)
class GaussianMixture:
    """p(x) = Σ_k w_k N(x; μ_k, Σ_k) in D dimensions.

    ``weights: (K,)`` positive, summing to 1; ``means: (K, D)``; ``covs: (K, D, D)`` symmetric
    positive definite. Tensors are float64, so exact quantities are exact to rounding.
    """

    weights: Tensor
    means: Tensor
    covs: Tensor

    def __post_init__(self) -> None:
        w = torch.as_tensor(self.weights, dtype=torch.float64)
        m = torch.as_tensor(self.means, dtype=torch.float64)
        c = torch.as_tensor(self.covs, dtype=torch.float64)
        if w.ndim != 1 or m.ndim != 2 or c.ndim != 3:
            raise ValueError(
                "weights, means, covs must have shapes (K,), (K, D), (K, D, D); got "
                f"{tuple(w.shape)}, {tuple(m.shape)}, {tuple(c.shape)}"
            )
        K, D = m.shape
        if w.shape[0] != K or c.shape != (K, D, D):
            raise ValueError(
                f"weights, means, covs disagree: weights {tuple(w.shape)}, means {tuple(m.shape)}, "
                f"covs {tuple(c.shape)}; expected (K,), (K, D), (K, D, D)"
            )
        if (w <= 0).any() or abs(w.sum().item() - 1.0) > 1e-9:
            raise ValueError(f"weights must be positive and sum to 1, got {w.tolist()}")
        if not torch.allclose(c, c.transpose(1, 2)) or (torch.linalg.eigvalsh(c) <= 0).any():
            raise ValueError("covs must be symmetric positive definite")
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "means", m)
        object.__setattr__(self, "covs", c)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` points: shape ``(n, D)``, float64."""
        check_positive_int(n, name="n")
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        chol = torch.linalg.cholesky(self.covs)  # (K, D, D)
        return self.means[k] + torch.einsum("nij,nj->ni", chol[k], z)

    def component_log_probs(self, x: Tensor) -> Tensor:
        """log w_k + log N(x; μ_k, Σ_k) for each point and component: ``(N, K)``."""
        x = self._check_points(x)
        diff = x[:, None, :] - self.means[None]  # (N, K, D)
        chol = torch.linalg.cholesky(self.covs)  # (K, D, D)
        sol = torch.linalg.solve_triangular(chol[None], diff[..., None], upper=False)[..., 0]
        maha = (sol**2).sum(-1)  # (N, K)
        log_det = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # (K,)
        return torch.log(self.weights) - 0.5 * (maha + log_det + self.dim * math.log(2 * math.pi))

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) for ``x: (N, D)``: shape ``(N,)``."""
        return torch.logsumexp(self.component_log_probs(x), dim=1)

    def responsibilities(self, x: Tensor) -> Tensor:
        """p(k | x) for ``x: (N, D)``: shape ``(N, K)``."""
        return torch.softmax(self.component_log_probs(x), dim=1)

    def score(self, x: Tensor) -> Tensor:
        """∇_x log p(x) = Σ_k p(k | x) Σ_k⁻¹ (μ_k − x), for ``x: (N, D)``: shape ``(N, D)``."""
        x = self._check_points(x)
        r = self.responsibilities(x)  # (N, K)
        diff = self.means[None] - x[:, None, :]  # (N, K, D)
        pulls = torch.linalg.solve(self.covs[None], diff[..., None])[..., 0]  # (N, K, D)
        return (r[..., None] * pulls).sum(1)

    def noised(self, alpha_bar: float) -> GaussianMixture:
        """The law of x_t = √ᾱ x_0 + √(1 − ᾱ) ε when x_0 follows this mixture.

        Each component N(μ, Σ) becomes N(√ᾱ μ, ᾱ Σ + (1 − ᾱ) I); the weights stay.
        ``alpha_bar`` must lie in [0, 1].
        """
        if not 0.0 <= float(alpha_bar) <= 1.0:
            raise ValueError(f"alpha_bar must lie in [0, 1], got {alpha_bar!r}")
        a = float(alpha_bar)
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(
            self.weights, math.sqrt(a) * self.means, a * self.covs + (1 - a) * eye
        )

    def mean(self) -> Tensor:
        """E[x]: shape ``(D,)``."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """Cov[x] = Σ_k w_k (Σ_k + μ_k μ_kᵀ) − E[x] E[x]ᵀ: shape ``(D, D)``."""
        m = self.mean()
        second = torch.einsum(
            "k,kij->ij", self.weights, self.covs + self.means[:, :, None] * self.means[:, None, :]
        )
        return second - torch.outer(m, m)

    def _check_points(self, x: Tensor) -> Tensor:
        x = torch.as_tensor(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (N, {self.dim}), got {tuple(x.shape)}")
        return x.to(torch.float64)


def isotropic_mixture(weights, means, std: float) -> GaussianMixture:
    """A mixture whose components all have covariance std² I."""
    means = torch.as_tensor(means, dtype=torch.float64)
    K, D = means.shape
    covs = (std**2) * torch.eye(D, dtype=torch.float64).expand(K, D, D).clone()
    return GaussianMixture(torch.as_tensor(weights, dtype=torch.float64), means, covs)


def eight_gaussians(radius: float = 2.0, std: float = 0.15) -> GaussianMixture:
    """Eight equal Gaussians evenly spaced on a circle: the classic 2-D toy distribution."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return isotropic_mixture(torch.full((8,), 1 / 8, dtype=torch.float64), means, std)


def two_gaussians(distance: float = 2.0, std: float = 0.5, weight: float = 0.5) -> GaussianMixture:
    """Two Gaussians at (±distance/2, 0) with weights (weight, 1 − weight)."""
    means = torch.tensor([[-distance / 2, 0.0], [distance / 2, 0.0]], dtype=torch.float64)
    return isotropic_mixture([weight, 1 - weight], means, std)


@dataclass(frozen=True)
class Checkerboard:
    """Uniform density on the dark squares of a ``size`` × ``size`` board covering [−half, half]².

    Square (i, j) is dark when i + j is even. The exact density is 1 / (dark area) there, 0 elsewhere.
    """

    size: int = 4
    half: float = 2.0

    @property
    def cell(self) -> float:
        return 2 * self.half / self.size

    def _dark_cells(self) -> Tensor:
        ij = torch.cartesian_prod(torch.arange(self.size), torch.arange(self.size))
        return ij[(ij.sum(1) % 2) == 0]

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` points: shape ``(n, 2)``, float64."""
        check_positive_int(n, name="n")
        cells = self._dark_cells()
        k = torch.randint(len(cells), (n,), generator=generator)
        u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
        return -self.half + (cells[k].double() + u) * self.cell

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) for ``x: (N, 2)``: log(1 / dark area) on dark squares, −inf elsewhere."""
        x = torch.as_tensor(x, dtype=torch.float64)
        if x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"x must have shape (N, 2), got {tuple(x.shape)}")
        idx = torch.floor((x + self.half) / self.cell)
        inside = ((idx >= 0) & (idx < self.size)).all(1)
        dark = (idx.sum(1) % 2) == 0
        area = len(self._dark_cells()) * self.cell**2
        out = torch.full((x.shape[0],), -math.inf, dtype=torch.float64)
        out[inside & dark] = -math.log(area)
        return out


# ---------------------------------------------------------------------------------------------
# Images


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

DATASETS: dict[str, dict] = {
    "mnist": {
        "sha256": {
            "x_train": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "y_train": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "x_test": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "y_test": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        "mirrors": [
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ],
    },
    "fashion_mnist": {
        "sha256": {
            "x_train": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "y_train": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "x_test": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "y_test": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        "mirrors": [
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
        ],
    },
}

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
    for key, expected in DATASETS[name]["sha256"].items():
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
    check_choice(name, tuple(DATASETS), name="dataset")
    from tqdm.auto import tqdm

    folder = data_dir(root)
    mirrors = list(DATASETS[name]["mirrors"] if mirrors is None else mirrors)
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
            if got != DATASETS[name]["sha256"][key]:
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
    check_choice(name, tuple(DATASETS), name="dataset")
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
