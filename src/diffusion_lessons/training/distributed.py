"""The image trainer's devices and processes: the device of a run, the ``torchrun`` context,
DistributedDataParallel, the loss averaged over processes, and what to say when a batch does not
fit in memory."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

# ---------------------------------------------------------------------------------------------
# The device and the processes.


def training_device(device: torch.device | str | None = None, local_rank: int = 0) -> torch.device:
    """``device``, or by default ``cuda:<local_rank>`` when CUDA is available and the CPU otherwise.

    On CUDA the GPU becomes the current device and TF32 is allowed for what stays in fp32.
    """
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dev


def describe_device(device: torch.device | str) -> str:
    """The device in words, for a measurement's record: the GPU's name, or the CPU, and the
    PyTorch version."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (PyTorch {torch.__version__})"
    return f"{device.type.upper()} (PyTorch {torch.__version__})"


def distributed_context() -> tuple[int, int, int, bool]:
    """``(rank, world_size, local_rank, initialised_here)`` from torchrun's environment variables.

    With WORLD_SIZE > 1 the default process group is initialised (NCCL on CUDA, gloo on a CPU)
    unless it already is.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0, False
    here = not dist.is_initialized()
    if here:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank()
    return rank, world, int(os.environ.get("LOCAL_RANK", rank)), here


def distribute(model: nn.Module, device: torch.device, world: int = 1) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel when ``world > 1`` (gradients averaged)."""
    if world == 1:
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def mean_over_processes(values: Tensor, world: int = 1) -> Tensor:
    """The mean of ``values`` over the ``world`` processes (all-reduced in place; itself if 1)."""
    if world > 1:
        dist.all_reduce(values)
        values /= world
    return values


# ---------------------------------------------------------------------------------------------
# Out of memory.


def largest_fitting_batch(try_batch: Callable[[int], object], batch_size: int) -> int:
    """Halve ``batch_size`` until ``try_batch(b)`` runs without ``torch.OutOfMemoryError``.

    Returns the first size that fits (0 if even 1 does not).
    """
    b = batch_size
    while b >= 1:
        try:
            try_batch(b)
            return b
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            b //= 2
    return 0


def oom_message(batch_size: int, fits_per_process: int, world: int = 1) -> str:
    """The error text for running out of GPU memory at global ``batch_size``."""
    if fits_per_process == 0:
        return (
            f"out of GPU memory at batch_size={batch_size}, and even 1 image per GPU does not "
            "fit: use a smaller model (ch, num_res_blocks) or a larger GPU"
        )
    return (
        f"out of GPU memory at batch_size={batch_size} ({batch_size // world} per GPU); "
        f"a forward and backward pass fits with {fits_per_process} per GPU: try "
        f"--batch-size {fits_per_process * world}"
    )
