"""The book's shipped checkpoints (chapters 10 and 11): exported, found, verified, loaded.

A shipped checkpoint is two files in the repository's ``checkpoints/`` folder:

- ``<name>.safetensors``: the EMA weights of a run of the training engine (``model/…``), the loss
  of every training step (``losses``) and, as metadata, the run's configuration, the step reached
  and the architecture; no optimizer state, no pickle;
- ``<name>.json``: how it was made and what it measures: the exact commands, the library version,
  the device, the training time, and the negative ELBO of the test set in bits/dim, term by term
  with standard errors, measured on the shipped weights (:func:`measure`).

:func:`export_pretrained` writes both from a training state (``diffusion-lessons export``);
:func:`load_pretrained` reads them from the checkout, else from the cache, else downloads them
once from the book's repository and checks their SHA-256 against :data:`SHIPPED`, exactly like
the datasets (:mod:`diffusion_lessons.data.datasets`). A chapter only names the checkpoint, so a
better model replaces the shipped one without touching the page.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shlex
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

import diffusion_lessons
from diffusion_lessons.checks import check_choice, check_positive_int
from diffusion_lessons.data import datasets
from diffusion_lessons.likelihood import evaluate_bits_per_dim
from diffusion_lessons.nets.unet import UNet, count_parameters
from diffusion_lessons.noise.schedules import get_schedule
from diffusion_lessons.objectives import continuous_time, discrete_time
from diffusion_lessons.training import checkpoints
from diffusion_lessons.training.config import TrainConfig, as_denoiser, unconditional_label

PRETRAINED_FORMAT = "diffusion_lessons.pretrained/1"
"""The ``format`` metadata of a shipped checkpoint's safetensors file."""

BASE_URL = "https://raw.githubusercontent.com/diffusion-lessons/diffusion-lessons/main/checkpoints/"
"""Where readers without a checkout download the shipped checkpoints from."""

URL_ENV = "DIFFUSION_LESSONS_CHECKPOINT_URL"
"""Environment variable replacing :data:`BASE_URL` (a mirror, or a ``file://`` folder in tests)."""

CHECKPOINTS_ENV = "DIFFUSION_LESSONS_CHECKPOINTS"
"""Environment variable naming a folder that holds (or will cache) the shipped checkpoints."""


@dataclass(frozen=True)
class Shipped:
    """One shipped checkpoint: the SHA-256 of its weights file and of its JSON."""

    weights_sha256: str
    info_sha256: str


SHIPPED: dict[str, Shipped] = {
    # Chapter 10's MNIST U-Net (1.1M parameters), trained on a 2-core CPU: checkpoints/mnist.json.
    "mnist": Shipped(
        weights_sha256="5202bbf387dc93b01fe0633c7ebf0932c00376e22577d56580404f036d9afc2e",
        info_sha256="03dc13ec514c6ae78e9936e1850295472a92a774118126cd0e96e0914374a47a",
    ),
}
"""Every checkpoint shipped in ``checkpoints/``, by name, with the checksums a download must match."""


class CheckpointError(RuntimeError):
    """A shipped checkpoint is missing, corrupt or could not be downloaded; the message says what to do."""


# ---------------------------------------------------------------------------------------------
# Measuring: the negative ELBO of test images under a model, in bits/dim, term by term.


def terms_function(model: nn.Module, cfg: TrainConfig, method: str, T: int | None = None):
    """The terms function of :func:`~diffusion_lessons.likelihood.evaluate_bits_per_dim` for
    ``model`` (an ε-network trained with ``cfg``): VDM's continuous-time bound (``method="vdm"``)
    or DDPM's discrete bound at ``T`` steps (``method="ddpm"``)."""
    schedule, bins = get_schedule(cfg.schedule), datasets.DATASETS[cfg.dataset].bins
    denoiser = as_denoiser(model, unconditional_label(model))
    if method == "vdm":
        return functools.partial(continuous_time.vdm_terms, denoiser, schedule=schedule, bins=bins)
    if method == "ddpm":
        check_positive_int(T, name="T")
        alpha_bar = schedule.ddpm_alpha_bar(T).to(next(model.parameters()).device)
        return functools.partial(discrete_time.ddpm_terms, denoiser, alpha_bar=alpha_bar, bins=bins)
    raise ValueError(f"method must be 'vdm' or 'ddpm', got {method!r}")


def method_name(method: str, T: int | None = None) -> str:
    """The key of a measurement in a checkpoint's JSON: ``"vdm"`` or ``"ddpm_T<T>"``."""
    return "vdm" if method == "vdm" else f"ddpm_T{T}"


@torch.no_grad()
def measure(
    model: nn.Module,
    cfg: TrainConfig,
    images: Tensor,
    *,
    method: str = "vdm",
    T: int | None = None,
    batch_size: int = 250,
    seed: int = 0,
) -> dict[str, float]:
    """Negative ELBO of ``images`` (``(N, C, H, W)`` in [−1, 1]) in bits/dim, each term with its
    standard error (:func:`~diffusion_lessons.likelihood.evaluate_bits_per_dim`)."""
    fn = terms_function(model, cfg, method, T)
    return evaluate_bits_per_dim(fn, images, batch_size=batch_size, seed=seed)


# ---------------------------------------------------------------------------------------------
# Exporting a training state as a shipped checkpoint.


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16}
"""How a shipped checkpoint may store its weights (:func:`read_weights` computes in float32):
float16 halves the file (a 6.5M-parameter U-Net in 13 MB instead of 26), and the JSON measures
the stored, rounded weights."""


def export_weights(
    training_state: str | os.PathLike, out: str | os.PathLike, *, dtype: str = "float32"
) -> Path:
    """Write the EMA weights (stored as ``dtype``, a key of :data:`WEIGHT_DTYPES`), losses and
    configuration of a training state to ``out``."""
    check_choice(dtype, tuple(WEIGHT_DTYPES), name="dtype")
    ckpt = checkpoints.read_training_state(training_state)
    to = WEIGHT_DTYPES[dtype]
    tensors = {
        f"model/{k}": v.to(to) if v.is_floating_point() else v for k, v in ckpt.state("ema").items()
    }
    tensors["losses"] = ckpt.tensors["losses"]
    meta = {
        "format": PRETRAINED_FORMAT,
        "config": json.dumps(ckpt.config),
        "step": str(ckpt.step),
        "architecture": ckpt.metadata.get("architecture", "UNet"),
    }
    return checkpoints.write_safetensors(tensors, out, meta)


@dataclass
class Pretrained:
    """A loaded shipped checkpoint: the EMA ``model`` (eval mode, float32, on the CPU), the run's
    ``config``, its ``info`` (the JSON), the loss of every training ``step`` (``losses``), the
    weights file's ``path`` and its ``sha256``."""

    model: UNet
    config: TrainConfig
    info: dict = field(default_factory=dict)
    losses: Tensor = field(default_factory=lambda: torch.zeros(0))
    path: Path | None = None
    sha256: str = ""
    step: int = 0

    @property
    def denoiser(self):
        """The model as a :class:`~diffusion_lessons.denoisers.denoiser.Denoiser` (ε-prediction
        conditioned on the schedule's time, :func:`~diffusion_lessons.training.config.as_denoiser`;
        a class-conditional model's unconditional half)."""
        return as_denoiser(self.model, unconditional_label(self.model))

    @property
    def schedule(self):
        """The run's noise schedule (:func:`~diffusion_lessons.noise.schedules.get_schedule`)."""
        return get_schedule(self.config.schedule)


def read_weights(path: str | os.PathLike) -> Pretrained:
    """Read a shipped weights file (no JSON needed); raises ``FileNotFoundError`` or a
    ``ValueError`` naming the file when it is truncated, corrupt or of another format."""
    meta, tensors = checkpoints.read_safetensors(path)
    if meta.get("format") != PRETRAINED_FORMAT:
        raise ValueError(
            f"{path} is not a shipped checkpoint (format {meta.get('format')!r}); expected "
            f"{PRETRAINED_FORMAT!r} (a training state is exported with `diffusion-lessons export`)"
        )
    state = {k[len("model/") :]: v.float() for k, v in tensors.items() if k.startswith("model/")}
    return _pretrained(
        TrainConfig.from_dict(json.loads(meta["config"])),
        state,
        path,
        meta.get("architecture", "?"),
        losses=tensors.get("losses", torch.zeros(0)),
        step=int(meta.get("step", 0)),
    )


def read_training_ema(path: str | os.PathLike) -> Pretrained:
    """The EMA weights of a training state (what :func:`export_weights` ships, before any
    rounding to float16) as a :class:`Pretrained`, checked on load; ``cli eval`` measures it."""
    ckpt = checkpoints.read_training_state(path)
    return _pretrained(
        TrainConfig.from_dict(ckpt.config),
        ckpt.state("ema"),
        path,
        ckpt.metadata.get("architecture", "?"),
        losses=ckpt.tensors["losses"],
        step=ckpt.step,
    )


def _pretrained(
    cfg: TrainConfig, state: dict, path, architecture: str, *, losses: Tensor, step: int
) -> Pretrained:
    model = UNet(cfg.unet_config())
    checkpoints.load_module_state(model, state, path=path, architecture=architecture)
    return Pretrained(
        model=model.eval(),
        config=cfg,
        losses=losses,
        path=Path(path),
        sha256=sha256_file(path),
        step=step,
    )


def export_pretrained(
    training_state: str | os.PathLike,
    out_dir: str | os.PathLike,
    name: str,
    *,
    info: dict,
    methods: list[tuple[str, int | None]],
    n: int | None = None,
    check_n: int = 200,
    device: str | torch.device = "cpu",
    data_root: str | None = None,
    dtype: str = "float32",
) -> tuple[Path, Path]:
    """Export ``training_state`` as ``out_dir/<name>.safetensors`` and measure it into
    ``out_dir/<name>.json``.

    The JSON is ``info`` (commands, device, training time…) with the library version, the step,
    the parameter count, the weights' SHA-256 and ``bits_per_dim``: for each ``(method, T)`` of
    ``methods``, the terms on the first ``n`` test images (all by default) and, under
    ``"check"``, VDM's bound on the first ``check_n`` (seed 0), which the test suite re-measures.
    The weights are stored as ``dtype`` (:data:`WEIGHT_DTYPES`), and what is measured is the
    model read back from the file.
    """
    out_dir = Path(out_dir)
    weights = export_weights(training_state, out_dir / f"{name}.safetensors", dtype=dtype)
    pre = read_weights(weights)
    model = pre.model.to(device)
    images = datasets.load_images(pre.config.dataset, "test", root=data_root, limit=n)
    images = images.to(device)
    results = {}
    for method, T in methods:
        start = time.perf_counter()
        results[method_name(method, T)] = measure(model, pre.config, images, method=method, T=T)
        results[method_name(method, T)]["seconds"] = time.perf_counter() - start
    check = measure(model, pre.config, images[:check_n], method="vdm")
    record = {
        **info,
        "library_version": diffusion_lessons.__version__,
        "torch_version": torch.__version__,
        "step": pre.step,
        "params": count_parameters(pre.model),
        "weights_sha256": pre.sha256,
        "test_images": int(images.shape[0]),
        "bits_per_dim": results,
        "check": {"method": "vdm", "n": check_n, "seed": 0, "bits_per_dim": check},
    }
    info_path = out_dir / f"{name}.json"
    info_path.write_text(json.dumps(record, indent=2) + "\n")
    return weights, info_path


# ---------------------------------------------------------------------------------------------
# Finding and loading: checkout, cache, or download once.


def checkout_dir() -> Path:
    """The ``checkpoints/`` folder of the repository this library was installed from (editable)."""
    return Path(__file__).resolve().parents[3] / "checkpoints"


def cache_dir() -> Path:
    """Where downloaded checkpoints are kept: $DIFFUSION_LESSONS_CHECKPOINTS, else the cache."""
    if os.environ.get(CHECKPOINTS_ENV):
        return Path(os.environ[CHECKPOINTS_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "diffusion_lessons" / "checkpoints"


def _verified(path: Path, sha256: str) -> bool:
    return path.is_file() and sha256_file(path) == sha256


def _download(name: str, filename: str, sha256: str, folder: Path, timeout: float) -> Path:
    """Download ``BASE_URL + filename`` into ``folder``, check it, and move it into place."""
    base = os.environ.get(URL_ENV) or BASE_URL
    url = base + ("" if base.endswith("/") else "/") + filename
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            raw = response.read()
    except OSError as err:
        raise CheckpointError(
            f"checkpoint {name!r} is not in {checkout_dir()} or {folder}, and downloading {url} "
            f"failed ({err}). Connect to the internet once, or copy {filename} from the book's "
            f"repository into {folder} (or set {CHECKPOINTS_ENV} to the folder holding it)."
        ) from err
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise CheckpointError(
            f"{url} does not have the SHA-256 this library expects for {filename} ({sha256}): "
            "the download is corrupt or the library is older than the repository; upgrade "
            "diffusion-lessons or retry."
        )
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / (filename + ".part")
    part.write_bytes(raw)
    os.replace(part, folder / filename)
    return folder / filename


def locate(name: str, *, download: bool = True, timeout: float = 60.0) -> tuple[Path, Path]:
    """The verified weights and JSON files of shipped checkpoint ``name``.

    Looked for in the checkout (:func:`checkout_dir`), then in :func:`cache_dir`; with
    ``download``, fetched once into the cache. Files found are checked against :data:`SHIPPED`'s
    SHA-256; a mismatch raises :class:`CheckpointError` naming the file.
    """
    if name not in SHIPPED:
        raise ValueError(
            f"name must be one of the shipped checkpoints {sorted(SHIPPED)}, got {name!r}"
        )
    spec = SHIPPED[name]
    found = []
    for filename, sha in (
        (f"{name}.safetensors", spec.weights_sha256),
        (f"{name}.json", spec.info_sha256),
    ):
        for folder in (checkout_dir(), cache_dir()):
            if _verified(folder / filename, sha):
                found.append(folder / filename)
                break
            if (folder / filename).exists() and folder == checkout_dir():
                raise CheckpointError(
                    f"{folder / filename} does not match the SHA-256 in "
                    f"diffusion_lessons.training.pretrained.SHIPPED ({sha}): it is corrupt, "
                    "or it was replaced without updating SHIPPED (run `git status`)."
                )
        else:
            if not download:
                raise CheckpointError(
                    f"{filename} is not in {checkout_dir()} or {cache_dir()} (download=False)"
                )
            found.append(_download(name, filename, sha, cache_dir(), timeout))
    return found[0], found[1]


def load_pretrained(name: str = "mnist", *, download: bool = True) -> Pretrained:
    """Load shipped checkpoint ``name`` (:data:`SHIPPED`) with its JSON as ``info``.

    Examples
    --------
    >>> pre = load_pretrained("mnist")                    # doctest: +SKIP
    >>> pre.info["bits_per_dim"]["vdm"]["total"]          # doctest: +SKIP
    """
    weights, info = locate(name, download=download)
    pre = read_weights(weights)
    pre.info = json.loads(info.read_text())
    return pre


# ---------------------------------------------------------------------------------------------
# The command line: ``diffusion-lessons export``.


def parse_method(text: str) -> tuple[str, int | None]:
    """A measurement named on the command line: ``"vdm"`` → ``("vdm", None)``, ``"ddpm:T"`` →
    ``("ddpm", T)``; anything else raises ``argparse.ArgumentTypeError`` saying what is allowed."""
    if text == "vdm":
        return ("vdm", None)
    if text.startswith("ddpm:") and text[5:].isdigit() and int(text[5:]) > 0:
        return ("ddpm", int(text[5:]))
    raise argparse.ArgumentTypeError(
        f"expected 'vdm' or 'ddpm:T' with T a positive integer, got {text!r}"
    )


def add_parsers(sub) -> None:
    """Register ``export`` on the ``diffusion-lessons`` sub-parsers ``sub``."""
    ex = sub.add_parser(
        "export",
        help="export a run's EMA weights as a shipped checkpoint and measure its bits/dim",
        description="Write OUT/NAME.safetensors (EMA weights, losses, config) and OUT/NAME.json "
        "(commands, device, training time, test-set bits/dim term by term with standard errors).",
    )
    ex.add_argument("--checkpoint", required=True, help="the run's checkpoint.safetensors")
    ex.add_argument("--out", required=True, help="folder to write NAME.safetensors and NAME.json")
    ex.add_argument("--name", default="mnist")
    ex.add_argument("--train-command", required=True, help="the command that trained the run")
    ex.add_argument("--device-label", required=True, help="the training device, in words")
    ex.add_argument("--training-seconds", type=float, required=True)
    ex.add_argument("--label", default=None, help="how pages label the model's outputs")
    ex.add_argument("--methods", type=parse_method, nargs="+", default=[("vdm", None)])
    ex.add_argument("--n", type=int, default=None, help="test images (default all)")
    ex.add_argument("--device", default="cpu")
    ex.add_argument("--data-root", default=None)
    ex.add_argument(
        "--weights-dtype",
        choices=tuple(WEIGHT_DTYPES),
        default="float32",
        help="how the file stores the weights (float16: half the size; computed in float32)",
    )
    ex.set_defaults(func=export_command)


def _export_argv(args: argparse.Namespace) -> list[str]:
    """The ``diffusion-lessons export …`` command line that reproduces ``args``."""
    argv = ["diffusion-lessons", "export", "--checkpoint", args.checkpoint, "--out", args.out]
    argv += ["--name", args.name, "--train-command", args.train_command]
    argv += [
        "--device-label",
        args.device_label,
        "--training-seconds",
        f"{args.training_seconds:g}",
    ]
    argv += ["--label", args.label] if args.label else []
    argv += ["--methods", *(m if T is None else f"{m}:{T}" for m, T in args.methods)]
    argv += ["--n", str(args.n)] if args.n is not None else []
    argv += ["--weights-dtype", args.weights_dtype] if args.weights_dtype != "float32" else []
    return argv


def export_command(args: argparse.Namespace) -> int:
    """``export``: :func:`export_pretrained` with the command line recorded in the JSON."""
    info = {
        "train_command": args.train_command,
        "export_command": shlex.join(_export_argv(args)),
        "device": args.device_label,
        "training_seconds": args.training_seconds,
        "label": args.label or f"trained on a {args.device_label}",
    }
    weights, path = export_pretrained(
        args.checkpoint,
        args.out,
        args.name,
        info=info,
        methods=args.methods,
        n=args.n,
        device=args.device,
        data_root=args.data_root,
        dtype=args.weights_dtype,
    )
    print("\n".join(export_report(weights, path)))
    return 0


def export_report(weights: Path, info_path: Path) -> list[str]:
    """What an export says: the two files with their sizes and hashes, and each measurement's
    total and terms in bits/dim with their standard errors (``export``, ``gpu/`` scripts)."""
    record = json.loads(Path(info_path).read_text())
    lines = [
        f"{weights} ({Path(weights).stat().st_size} bytes, sha256 {record['weights_sha256']})",
        f"{info_path} (sha256 {sha256_file(info_path)})",
    ]
    for key, terms in record["bits_per_dim"].items():
        parts = ", ".join(
            f"{t} {terms[t]:.4f} ± {terms[t + '_se']:.4f}"
            for t in ("prior", "reconstruction", "diffusion")
        )
        lines.append(f"  {key}: {terms['total']:.4f} ± {terms['total_se']:.4f} bits/dim ({parts})")
    return lines
