"""The GPU runs of issue 11 (gpu/), rehearsed on the CPU at tiny size: no GPU minute may be
spent on a bug. The outputs must also fit what a device command can bring back: at most 8 files
of at most 16 MiB each, named in letters, digits, '.', '_' and '-'."""

import json
import re

import pytest

from conftest import REPO, load_script

pytestmark = pytest.mark.usefixtures("one_thread")

RETURN_FILES, RETURN_BYTES = 8, 16 * 2**20


def _load(name):
    return load_script(REPO / "gpu" / f"{name}.py")


def _fits_the_return_limits(folder):
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert len(files) <= RETURN_FILES, files
    for p in files:
        assert p.stat().st_size <= RETURN_BYTES, p
        assert re.fullmatch(r"[A-Za-z0-9._-]+", p.name), p


def test_likelihood_run_trains_in_two_calls_and_exports(tmp_path, capsys):
    """Two time-limited calls add up their seconds; the export is a float16 shipped checkpoint
    measured term by term, which loads like the shipped one."""
    from diffusion_lessons.training import pretrained

    script = _load("mnist_likelihood")
    run, out = tmp_path / "run", tmp_path / "out"
    common = ["--config", "tiny", "--run", str(run), "--out", str(out), "--n", "16"]
    assert script.main([*common, "--train-seconds", "1e-9"]) == 0
    first = json.loads((run / "seconds.json").read_text())
    assert first["calls"][0]["step"] == 1  # stopped at the first logging step
    assert not out.exists(), "nothing to bring back before --export"
    argv = [*common, "--train-seconds", "600", "--resume", "--export", "--methods", "vdm"]
    assert script.main(argv) == 0
    record = json.loads((out / "mnist.json").read_text())
    calls = record["training_calls"]
    assert [c["step"] for c in calls] == [1, 4]
    assert record["training_seconds"] == pytest.approx(sum(c["seconds"] for c in calls))
    assert "--resume" in record["train_command"] and "&&" in record["train_command"]
    assert set(record["bits_per_dim"]) == {"vdm"} and record["test_images"] == 16
    terms = record["bits_per_dim"]["vdm"]
    assert terms["total"] == pytest.approx(
        terms["prior"] + terms["reconstruction"] + terms["diffusion"], rel=1e-6
    )
    pre = pretrained.read_weights(out / "mnist.safetensors")
    assert pre.step == 4 and pre.sha256 == record["weights_sha256"]
    assert "vdm:" in capsys.readouterr().out
    _fits_the_return_limits(out)
    with pytest.raises(SystemExit):
        script.main([*common, "--methods", "ddpm:0"])


def test_shipped_gpu_preset_fits_the_return_limit_as_float16():
    """The mnist-gpu U-Net stored as float16 fits one returned file (and chapter 10's 25 MB)."""
    from diffusion_lessons.nets.unet import UNet, count_parameters
    from diffusion_lessons.training import config

    params = count_parameters(UNet(config.PRESETS["mnist-gpu"].unet_config()))
    assert 2 * params < RETURN_BYTES - 2**20  # weights, with a MiB for the losses and header
    assert config.PRESETS["mnist-gpu"].objective == "vdm"  # the continuous-time bound


def test_guidance_run_trains_both_models_and_exports_the_sweep(tmp_path, capsys):
    """One call trains the conditional U-Net and the classifier, exports the U-Net as a shipped
    checkpoint (measured as its unconditional half) and the classifier, and writes the sweep:
    a row per weight and guidance, measured on samples of every class."""
    from diffusion_lessons.training import classifier, pretrained

    script = _load("mnist_guidance")
    run, out = tmp_path / "run", tmp_path / "out"
    argv = ["--config", "tiny-cfg", "--run", str(run), "--out", str(out), "--n", "32"]
    small = ["--per-class", "2", "--steps", "3", "--weights", "0", "3"]
    assert script.main([*argv, "--cfg-seconds", "600", "--clf-seconds", "1e-9"]) == 0
    assert not out.exists(), "nothing to bring back before --export"
    assert script.main([*argv, *small, "--export"]) == 0  # from the run's record
    result = json.loads((out / "guidance.json").read_text())
    assert result["training"]["cfg"]["step"] == 4
    assert result["training"]["classifier"]["steps"] == 50  # the first time check
    rows = result["sweep"]["rows"]
    assert [(r["guidance"], r["w"]) for r in rows] == [
        ("classifier-free", 0.0),
        ("classifier", 0.0),
        ("classifier-free", 3.0),
        ("classifier", 3.0),
    ]
    assert all(0 <= r["accuracy"] <= 1 and r["frechet_distance"] >= 0 for r in rows)
    pre = pretrained.read_weights(out / "mnist-cfg.safetensors")
    assert pre.model.num_classes == 10 and pre.config.label_dropout == 0.2
    record = json.loads((out / "mnist-cfg.json").read_text())
    assert set(record["bits_per_dim"]) == {"vdm"} and record["test_images"] == 32
    clf, info = classifier.read_classifier(out / "mnist-classifier.safetensors")
    assert clf.num_classes == 10 and set(info["accuracy"]) == {"8", "4", "0", "-4"}
    assert "classifier-free w = 3" in capsys.readouterr().out
    _fits_the_return_limits(out)
    with pytest.raises(SystemExit):
        script.main(["--config", "tiny", "--run", str(run), "--out", str(out)])


def test_guidance_presets_fit_the_checkpoint_budget_beside_the_likelihood_model():
    """mnist-gpu's U-Net, mnist-gpu-cfg's and its classifier, all as float16, stay under the
    25 MB of shipped checkpoints (tests/training/test_pretrained.py), and each fits a return."""
    import dataclasses

    from diffusion_lessons.nets.unet import UNet, UNetClassifier, count_parameters
    from diffusion_lessons.training import config

    cfg = config.PRESETS["mnist-gpu-cfg"]
    sizes = [
        2 * count_parameters(UNet(config.PRESETS["mnist-gpu"].unet_config())),
        2 * count_parameters(UNet(cfg.unet_config())),
        2
        * count_parameters(
            UNetClassifier(dataclasses.replace(cfg.unet_config(), num_classes=None), 10)
        ),
    ]
    assert sum(sizes) < 25 * 10**6 - 2 * 2**20, sizes  # with room for headers and JSON
    assert all(s < RETURN_BYTES - 2**20 for s in sizes)
    assert cfg.num_classes == 10 and cfg.label_dropout > 0 and cfg.objective == "eps"


def test_chapter_runner_times_each_chapter_and_keeps_to_its_deadline(tmp_path):
    script = _load("run_chapters")
    chapters = tmp_path / "chapters"
    chapters.mkdir()
    (chapters / "01_ok.py").write_text(
        "import os, time\nprint('scale', os.environ['DIFFUSION_LESSONS_SCALE'])\ntime.sleep(0.3)\n"
    )
    (chapters / "02_fails.py").write_text("raise SystemExit('no such model')\n")
    out = tmp_path / "out"
    rc = script.main(["--out", str(out), "--chapters", str(chapters), "--scale", "small"])
    assert rc == 1, "a failing chapter fails the command"
    rows = {r["chapter"]: r for r in json.loads((out / "chapters.json").read_text())["chapters"]}
    assert rows["01_ok"]["returncode"] == 0 and rows["01_ok"]["seconds"] >= 0.3
    assert rows["01_ok"]["tail"] == ["scale small"]
    assert rows["02_fails"]["returncode"] == 1 and rows["02_fails"]["tail"] == ["no such model"]
    argv = ["--out", str(out), "--chapters", str(chapters), "--deadline", "0.1"]
    assert script.main(argv) == 1  # 01 is stopped at the deadline; 02 is not started
    rows = json.loads((out / "chapters.json").read_text())["chapters"]
    assert [r["returncode"] for r in rows] == ["timeout", "not started"]
    assert rows[0]["seconds"] < 0.3
    _fits_the_return_limits(out)
    with pytest.raises(SystemExit):
        script.main(["--out", str(out), "--chapters", str(chapters), "--only", "09_nothing"])


def test_device_script_names_every_item():
    """gpu/device.sh runs what gpu/README.md calls, and the wheels it installs are pinned."""
    text = (REPO / "gpu" / "device.sh").read_text()
    readme = (REPO / "gpu" / "README.md").read_text()
    for item, target in [
        ("bench", "benchmarks/bench_train.py"),
        ("likelihood", "gpu/mnist_likelihood.py"),
        ("chapters", "gpu/run_chapters.py"),
        ("guidance", "gpu/mnist_guidance.py"),
    ]:
        assert f"{item})" in text and target in text
        assert f"gpu/device.sh {item}" in readme
    lock = (REPO / "requirements.txt").read_text()
    for name in (REPO / "gpu" / "wheels.txt").read_text().split():
        assert re.search(rf"^{re.escape(name)}==", lock, re.M), f"{name} is not in the lock"
