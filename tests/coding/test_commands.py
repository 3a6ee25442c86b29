"""The compress / decompress subcommands, with the model loader swapped for the toy model."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from coding import coding_toy as toy

from diffusion_lessons.coding import commands, container
from diffusion_lessons.noise.schedules import get_schedule

PROTOS = toy.random_prototypes()


@pytest.fixture
def parser(monkeypatch):
    den = toy.denoiser_for(PROTOS)
    loaded = (den, container.model_sha256(den), get_schedule("cosine"), (1, 4, 4))
    monkeypatch.setattr(commands, "load_model", lambda name: loaded)
    p = argparse.ArgumentParser()
    commands.add_parsers(p.add_subparsers(dest="command", required=True))
    return p


def test_compress_then_decompress(parser, tmp_path, capsys):
    images = toy.jittered(PROTOS, 5)[:, 0]  # (N, H, W)
    np.save(tmp_path / "in.npy", images)
    args = parser.parse_args(
        ["compress", str(tmp_path / "in.npy"), str(tmp_path / "x.dlbb"), "--steps", "6"]
    )
    assert args.func(args) == 0 and "bits/dim" in capsys.readouterr().out
    args = parser.parse_args(["decompress", str(tmp_path / "x.dlbb"), str(tmp_path / "out.npy")])
    assert args.func(args) == 0
    assert np.array_equal(np.load(tmp_path / "out.npy"), images)


def test_wrong_shape_and_bad_steps(parser, tmp_path):
    np.save(tmp_path / "in.npy", np.zeros((2, 5, 5), np.uint8))
    args = parser.parse_args(["compress", str(tmp_path / "in.npy"), str(tmp_path / "x.dlbb")])
    with pytest.raises(ValueError, match="shape"):
        args.func(args)
    with pytest.raises(SystemExit):
        parser.parse_args(["compress", "a.npy", "b.dlbb", "--steps", "0"])
