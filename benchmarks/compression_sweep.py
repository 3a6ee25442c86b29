"""Chapter 11's sweep: bits-back file sizes on MNIST test images vs T, against the bound and baselines.

Run once (CPU, one thread is enough for a few images):

    python benchmarks/compression_sweep.py --model mnist --n 8 --steps 10 20 50 100 200 \
        --out src/diffusion_lessons/coding/measured/compression_sweep.json

``--model`` is a shipped checkpoint's name or a weights file (as for ``diffusion-lessons compress``).

The JSON stores the command, per T: file bits/dim, net bits/dim (file minus initial bits), the
initial-bits overhead, the ledger's bound (Σ KL terms at the coded chain), the negative ELBO of
the same images at the same time grid for the coder's model (x̂_0 clipped to [−1, 1];
``bbans.coder_terms``, every step, ``--repeats`` Monte Carlo draws per image, with its standard
error), seconds per image; the continuous-time bound of the same images for the same model
(``vdm_terms`` of ``bbans.coded_denoiser``), the asymptote as T grows; and the baselines gzip,
bz2, lzma and PNG (WebP lossless if Pillow has it) on the same images and on the whole test set.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
import json
import lzma
import sys
import time

import numpy as np
import torch
from PIL import Image, features

from diffusion_lessons.coding import bbans, container
from diffusion_lessons.coding.commands import load_model
from diffusion_lessons.coding.grids import LatentGrid
from diffusion_lessons.data import datasets
from diffusion_lessons.likelihood import evaluate_bits_per_dim
from diffusion_lessons.objectives import continuous_time


def baselines(imgs: np.ndarray) -> dict:
    raw = imgs.tobytes()
    out = {
        "gzip": 8 * len(gzip.compress(raw, 9)) / len(raw),
        "bz2": 8 * len(bz2.compress(raw, 9)) / len(raw),
        "lzma": 8 * len(lzma.compress(raw, preset=9)) / len(raw),
    }
    formats = [("png", {"format": "PNG", "optimize": True})]
    if features.check("webp"):
        formats.append(("webp_lossless", {"format": "WEBP", "lossless": True, "quality": 100}))
    for name, kw in formats:
        total = 0
        for im in imgs.reshape(-1, *imgs.shape[-2:]):
            buf = io.BytesIO()
            Image.fromarray(im).save(buf, **kw)
            total += len(buf.getvalue())
        out[name] = 8 * total / len(raw)
    return out


def bound(terms_fn, imgs: np.ndarray, repeats: int) -> tuple[float, float]:
    """(mean, standard error) of the negative ELBO of ``imgs`` in bits/dim, ``repeats`` draws each."""
    x = torch.from_numpy(imgs).double() / 127.5 - 1
    x = x.reshape(len(imgs), 1, *imgs.shape[-2:]).repeat(repeats, 1, 1, 1)
    with torch.no_grad():
        out = evaluate_bits_per_dim(terms_fn, x, batch_size=64, seed=0)
    return out["total"], out["total_se"]


def one(den, sha, sched, imgs, T: int, precision: int, repeats: int) -> dict:
    ab = sched.alpha_bar_grid(T)
    code = bbans.ChainCode(tuple(ab.tolist()), LatentGrid(precision))
    t0 = time.perf_counter()
    data, ledger = container.compress(den, imgs, code, model_sha256=sha, batch=len(imgs))
    enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    back = container.decompress(data, den, model_sha256=sha)
    dec = time.perf_counter() - t0
    header, words = container.read_header(data)
    dims = imgs.size
    nelbo_bpd, nelbo_se = bound(bbans.coder_terms(den, code), imgs, repeats)
    return {
        "T": T,
        "round_trip": bool(np.array_equal(back, imgs)),
        "file_bpd": 8 * len(data) / dims,
        "net_bpd": 32 * (len(words) - header["initial_words"]) / dims,
        "initial_bpd": 32 * header["initial_words"] / dims,
        "bound_bpd": sum(r["bound"] for r in ledger) / dims,
        "nelbo_bpd": nelbo_bpd,
        "nelbo_se": nelbo_se,
        "encode_s_per_image": enc / len(imgs),
        "decode_s_per_image": dec / len(imgs),
        "leak_bound": code.leak_bound(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mnist", help="shipped checkpoint name or weights file")
    ap.add_argument("--data-root", default=None, help="folder holding mnist.npz")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50])
    ap.add_argument("--precision", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2, help="draws of the chain per image")
    ap.add_argument(
        "--continuous-repeats", type=int, default=32, help="draws of t per image, continuous bound"
    )
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    den, sha, sched, _ = load_model(args.model)
    test = datasets.load_images("mnist", "test", root=args.data_root, limit=args.n)
    imgs = np.round((test.double().numpy() + 1) * 127.5).astype(np.uint8)
    full = datasets.load_images("mnist", "test", root=args.data_root)
    full_test = np.round((full.double().numpy() + 1) * 127.5).astype(np.uint8)
    rows = []
    for T in args.steps:
        rows.append(one(den, sha, sched, imgs, T, args.precision, args.repeats))
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "command": " ".join(["python", *sys.argv]),
        "checkpoint_sha256": sha,
        "n_images": args.n,
        "precision": args.precision,
        "repeats": args.repeats,
        "continuous_repeats": args.continuous_repeats,
        "rows": rows,
        "continuous_bound_bpd": bound(
            lambda x, generator: continuous_time.vdm_terms(
                bbans.coded_denoiser(den), x, schedule=sched, generator=generator
            ),
            imgs,
            args.continuous_repeats,
        ),
        "baselines_bpd": baselines(imgs),
        "baselines_full_test_bpd": baselines(full_test),
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
