"""Chapter 11's sweep: bits-back file sizes on MNIST test images vs T, against the bound and baselines.

Run once (CPU, one thread is enough for a few images):

    python benchmarks/compression_sweep.py --model mnist --n 8 --steps 10 20 50 100 \
        --out benchmarks/results/compression_sweep.json

``--model`` is a shipped checkpoint's name or a weights file (as for ``diffusion-lessons compress``).

The JSON stores the command, per T: file bits/dim, net bits/dim (file minus initial bits), the
initial-bits overhead, the ledger's bound (Σ KL terms at the coded chain), seconds per image, and
the baselines gzip, bz2, lzma and PNG (WebP lossless if Pillow has it) on the same images.
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


def one(den, sha, sched, imgs, T: int, precision: int) -> dict:
    code = bbans.ChainCode(tuple(sched.alpha_bar_grid(T).tolist()), LatentGrid(precision))
    t0 = time.perf_counter()
    data, ledger = container.compress(den, imgs, code, model_sha256=sha, batch=len(imgs))
    enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    back = container.decompress(data, den, model_sha256=sha)
    dec = time.perf_counter() - t0
    header, words = container.read_header(data)
    dims = imgs.size
    return {
        "T": T,
        "round_trip": bool(np.array_equal(back, imgs)),
        "file_bpd": 8 * len(data) / dims,
        "net_bpd": 32 * (len(words) - header["initial_words"]) / dims,
        "initial_bpd": 32 * header["initial_words"] / dims,
        "bound_bpd": sum(r["bound"] for r in ledger) / dims,
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
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    den, sha, sched, _ = load_model(args.model)
    test = datasets.load_images("mnist", "test", root=args.data_root, limit=args.n)
    imgs = np.round((test.double().numpy() + 1) * 127.5).astype(np.uint8)
    rows = []
    for T in args.steps:
        rows.append(one(den, sha, sched, imgs, T, args.precision))
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "command": " ".join(["python", *sys.argv]),
        "checkpoint_sha256": sha,
        "n_images": args.n,
        "precision": args.precision,
        "rows": rows,
        "baselines_bpd": baselines(imgs),
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
