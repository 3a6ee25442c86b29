"""Shipped checkpoints: each one re-measured, and every way a reader's copy can be wrong."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from pathlib import Path

import pytest
import torch

from diffusion_lessons.data import datasets
from diffusion_lessons.nets.unet import UNet, count_parameters
from diffusion_lessons.training import config, engine, pretrained

BUDGET_BYTES = 25 * 10**6  # issue 15: at most 25 MB of checkpoints in the repository


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A training state of the engine's "tiny" preset (digits, a few steps)."""
    out = tmp_path_factory.mktemp("run")
    engine.train(config.PRESETS["tiny"], out, progress=False)
    return out / "checkpoint.safetensors"


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """The tiny run exported as shipped checkpoint "tiny", measured on 40 digit images."""
    out = tmp_path_factory.mktemp("shipped")
    weights, info = pretrained.export_pretrained(
        tiny_run,
        out,
        "tiny",
        info={"device": "test"},
        methods=[("vdm", None), ("ddpm", 10)],
        n=40,
        check_n=20,
    )
    return weights, info


def test_export_keeps_ema_weights_losses_and_measures_them(tiny_run, exported):
    from diffusion_lessons.training import checkpoints

    weights, info_path = exported
    ckpt = checkpoints.read_training_state(tiny_run)
    pre = pretrained.read_weights(weights)
    for k, v in ckpt.state("ema").items():
        torch.testing.assert_close(pre.model.state_dict()[k], v, rtol=0, atol=0)
    assert pre.losses.tolist() == ckpt.tensors["losses"].tolist()
    assert pre.step == ckpt.step == config.PRESETS["tiny"].steps
    info = json.loads(info_path.read_text())
    assert info["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert info["params"] == count_parameters(pre.model)
    assert set(info["bits_per_dim"]) == {"vdm", "ddpm_T10"}
    for terms in info["bits_per_dim"].values():
        parts = terms["prior"] + terms["reconstruction"] + terms["diffusion"]
        assert terms["total"] == pytest.approx(parts, rel=1e-6)  # terms summed in float32
        assert terms["total_se"] > 0


def test_float16_export_halves_the_file_and_measures_the_rounded_weights(
    tiny_run, exported, tmp_path
):
    """``dtype="float16"``: about half the bytes; the model read back is the EMA weights rounded
    to float16 (relative error at most 2⁻¹¹, half a float16 ulp, or below float16's smallest
    normal 6.1e-5 in absolute terms); its bits/dim are measured on those weights and stay within
    1 % of the float32 export's (the rounding moves each output by about 1e-3 relative)."""
    from diffusion_lessons.training import checkpoints

    weights32, info32 = exported
    weights, info_path = pretrained.export_pretrained(
        tiny_run,
        tmp_path,
        "tiny",
        info={},
        methods=[("vdm", None)],
        n=40,
        check_n=20,
        dtype="float16",
    )
    assert weights.stat().st_size < 0.6 * weights32.stat().st_size
    ema = checkpoints.read_training_state(tiny_run).state("ema")
    pre = pretrained.read_weights(weights)
    for k, v in pre.model.state_dict().items():
        assert v.dtype == torch.float32, k
        if v.is_floating_point() and v.numel():
            err = (v - ema[k]).abs()
            assert (err <= torch.maximum(ema[k].abs() * 2**-11, torch.tensor(6.1e-5))).all(), k
    ours = json.loads(info_path.read_text())["bits_per_dim"]["vdm"]["total"]
    full = json.loads(info32.read_text())["bits_per_dim"]["vdm"]["total"]
    assert ours == pytest.approx(full, rel=0.01)
    assert ours != full, "the measurement is of the rounded weights"
    with pytest.raises(ValueError, match="unknown dtype 'bfloat16'"):
        pretrained.export_weights(tiny_run, tmp_path / "x.safetensors", dtype="bfloat16")


def test_check_subset_is_what_measure_gives(exported):
    """The recorded check number is measure() on the first check_n test images (seed 0)."""
    weights, info_path = exported
    info = json.loads(info_path.read_text())
    pre = pretrained.read_weights(weights)
    images = datasets.load_images("digits", "test", limit=info["check"]["n"])
    again = pretrained.measure(pre.model, pre.config, images, method="vdm")
    assert again["total"] == pytest.approx(info["check"]["bits_per_dim"]["total"], abs=1e-4)


@pytest.mark.parametrize("name", sorted(pretrained.SHIPPED))
def test_shipped_checkpoint_reproduces_its_recorded_bits_per_dim(name):
    """Each shipped checkpoint, loaded from the checkout, re-measured on its fixed subset.

    Same images, same seed, same noise: only the CPU's rounding differs, far below 1e-3 bits/dim.
    The subset must also agree with the full test set within four of its standard errors.
    """
    pre = pretrained.load_pretrained(name, download=False)
    check = pre.info["check"]
    images = datasets.load_images(pre.config.dataset, "test", limit=check["n"])
    torch.manual_seed(0)
    again = pretrained.measure(pre.model, pre.config, images, method=check["method"])
    assert again["total"] == pytest.approx(check["bits_per_dim"]["total"], abs=1e-3)
    full = pre.info["bits_per_dim"]["vdm"]
    assert abs(again["total"] - full["total"]) < 4 * again["total_se"]
    assert pre.info["weights_sha256"] == pre.sha256


def test_shipped_checkpoints_fit_the_budget():
    folder = pretrained.checkout_dir()
    total = sum(p.stat().st_size for p in folder.glob("*")) if folder.exists() else 0
    assert total <= BUDGET_BYTES
    assert {p.stem for p in folder.glob("*.safetensors")} == set(pretrained.SHIPPED)


@pytest.fixture
def registry(exported, tmp_path, monkeypatch):
    """SHIPPED holds "tiny"; the checkout is an empty folder and the cache another."""
    weights, info = exported
    spec = pretrained.Shipped(
        hashlib.sha256(weights.read_bytes()).hexdigest(),
        hashlib.sha256(info.read_bytes()).hexdigest(),
    )
    monkeypatch.setitem(pretrained.SHIPPED, "tiny", spec)
    checkout, cache = tmp_path / "checkout", tmp_path / "cache"
    checkout.mkdir()
    monkeypatch.setattr(pretrained, "checkout_dir", lambda: checkout)
    monkeypatch.setenv(pretrained.CHECKPOINTS_ENV, str(cache))
    monkeypatch.delenv(pretrained.URL_ENV, raising=False)
    return {"weights": weights, "info": info, "checkout": checkout, "cache": cache}


def _serve(monkeypatch, files: dict[str, bytes], calls: list[str]):
    def urlopen(url, timeout):
        calls.append(url)
        name = url.rsplit("/", 1)[-1]
        if name not in files:
            raise OSError("no network")
        return io.BytesIO(files[name])

    monkeypatch.setattr(pretrained.urllib.request, "urlopen", urlopen)


def test_loads_from_checkout(registry):
    for key in ("weights", "info"):
        (registry["checkout"] / registry[key].name).write_bytes(registry[key].read_bytes())
    pre = pretrained.load_pretrained("tiny", download=False)
    assert isinstance(pre.model, UNet) and pre.info["device"] == "test"
    assert pre.path.parent == registry["checkout"]


def test_downloads_once_then_reads_the_cache(registry, monkeypatch):
    files = {p.name: p.read_bytes() for p in (registry["weights"], registry["info"])}
    calls: list[str] = []
    _serve(monkeypatch, files, calls)
    first = pretrained.load_pretrained("tiny")
    assert len(calls) == 2 and all(c.startswith(pretrained.BASE_URL) for c in calls)
    second = pretrained.load_pretrained("tiny")
    assert len(calls) == 2  # cached, verified, not fetched again
    assert first.sha256 == second.sha256 and second.path.parent == registry["cache"]


def test_download_from_a_mirror_named_by_the_environment(registry, monkeypatch):
    """A real urllib fetch (a file:// mirror): what the Colab-style chapter runs exercise."""
    monkeypatch.setenv(pretrained.URL_ENV, registry["weights"].parent.as_uri())
    pre = pretrained.load_pretrained("tiny")
    assert pre.path == registry["cache"] / registry["weights"].name
    assert pre.sha256 == pretrained.SHIPPED["tiny"].weights_sha256


def test_offline_with_nothing_cached_says_what_to_do(registry, monkeypatch):
    _serve(monkeypatch, {}, [])
    with pytest.raises(pretrained.CheckpointError, match="Connect to the internet once"):
        pretrained.load_pretrained("tiny")


def test_corrupt_download_is_refused_and_not_cached(registry, monkeypatch):
    files = {p.name: p.read_bytes() for p in (registry["weights"], registry["info"])}
    files[registry["weights"].name] = files[registry["weights"].name][:-10] + b"0123456789"
    _serve(monkeypatch, files, [])
    with pytest.raises(pretrained.CheckpointError, match="SHA-256"):
        pretrained.load_pretrained("tiny")
    assert not (registry["cache"] / registry["weights"].name).exists()


def test_corrupt_file_in_checkout_names_the_file(registry):
    bad = registry["checkout"] / registry["weights"].name
    raw = bytearray(registry["weights"].read_bytes())
    raw[-5] ^= 0xFF
    bad.write_bytes(bytes(raw))
    with pytest.raises(pretrained.CheckpointError, match=str(bad)):
        pretrained.load_pretrained("tiny", download=False)


def test_truncated_weights_file_names_the_file(exported, tmp_path):
    weights, _ = exported
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=str(cut)):
        pretrained.read_weights(cut)


def test_training_state_is_not_a_shipped_checkpoint(tiny_run):
    with pytest.raises(ValueError, match="diffusion-lessons export"):
        pretrained.read_weights(tiny_run)


def test_unknown_name_lists_the_shipped_ones():
    with pytest.raises(ValueError, match="name must be one of"):
        pretrained.load_pretrained("no-such-model")


@pytest.mark.parametrize("text", ["ddpm", "ddpm:0", "ddpm:-3", "ddim:10", "vdm:5"])
def test_methods_argument_refuses_bad_values(text):
    with pytest.raises(argparse.ArgumentTypeError, match="ddpm:T"):
        pretrained.parse_method(text)


def test_export_argv_reproduces_the_arguments():
    parser = argparse.ArgumentParser()
    pretrained.add_parsers(parser.add_subparsers())
    argv = ["export", "--checkpoint", "r/c.safetensors", "--out", "checkpoints"]
    argv += ["--train-command", "diffusion-lessons train --config tiny --out r"]
    argv += ["--device-label", "2-core CPU", "--training-seconds", "12.5"]
    argv += ["--methods", "vdm", "ddpm:10", "--n", "40"]
    args = parser.parse_args(argv)
    again = parser.parse_args(pretrained._export_argv(args)[1:])
    assert vars(again) == vars(args)
    assert Path(args.out) == Path("checkpoints")
