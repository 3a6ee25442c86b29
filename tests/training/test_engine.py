"""The image trainer: resumable onto the same loss curve, refusals, DDP = one big batch, CLI."""

import dataclasses
import os
import socket
import warnings

import pytest
import torch
import torch.multiprocessing as mp

from diffusion_lessons import cli
from diffusion_lessons.nets import mlp
from diffusion_lessons.noise import schedules
from diffusion_lessons.training import checkpoints, config, distributed, engine, optimization

TINY = config.PRESETS["tiny"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n=64, seed=0):
    """Random 8×8 'digits' on the 17-level grid (no dataset needed)."""
    k = torch.randint(0, 17, (n, 1, 8, 8), generator=torch.Generator().manual_seed(seed))
    return k.float() / 8 - 1


def test_resume_continues_on_the_same_loss_curve(tmp_path):
    """N steps straight vs N/2 steps, a new process state, then N/2 more from the checkpoint."""
    cfg = dataclasses.replace(TINY, steps=6, checkpoint_every=3, dropout=0.1)
    images = _images()
    straight = engine.train(cfg, images=images, progress=False)
    engine.train(dataclasses.replace(cfg, steps=3), tmp_path, images=images, progress=False)
    torch.manual_seed(123)  # any global state left over must not matter
    resumed = engine.train(cfg, tmp_path, resume=True, images=images, progress=False)
    assert len(straight.losses) == 6
    assert resumed.losses == straight.losses
    for a, b in zip(straight.ema.parameters(), resumed.ema.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_time_limit_stops_at_a_logging_step_and_resume_continues(tmp_path):
    """A run out of time stops at its next logging step, checkpoints there although no
    checkpoint is due, and ``resume`` then ends on the uninterrupted run's loss curve."""
    cfg = dataclasses.replace(TINY, steps=6, log_every=2, checkpoint_every=100)
    images = _images()
    straight = engine.train(cfg, images=images, progress=False)
    cut = engine.train(cfg, tmp_path, images=images, progress=False, time_limit=1e-9)
    assert cut.step == 2 and len(cut.losses) == 2  # the first logging step
    assert checkpoints.read_training_state(tmp_path / "checkpoint.safetensors").step == 2
    resumed = engine.train(cfg, tmp_path, resume=True, images=images, progress=False)
    assert resumed.step == 6
    assert resumed.losses == straight.losses
    ample = engine.train(cfg, images=images, progress=False, time_limit=3600.0)
    assert ample.step == 6 and ample.losses == straight.losses
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="time_limit must be a number of seconds > 0"):
            engine.train(cfg, images=images, progress=False, time_limit=bad)


def test_refusals_leave_the_checkpoint_untouched(tmp_path):
    images = _images()
    engine.train(dataclasses.replace(TINY, steps=2), tmp_path, images=images, progress=False)
    path = tmp_path / optimization.CHECKPOINT_NAME
    raw = path.read_bytes()
    with pytest.raises(ValueError, match="exists: pass resume=True"):
        engine.train(TINY, tmp_path, images=images, progress=False)
    changed = dataclasses.replace(TINY, batch_size=8, lr=3e-4)
    with pytest.raises(ValueError, match=r"differs in batch_size: 16 → 8; lr: 0.001 → 0.0003"):
        engine.train(changed, tmp_path, resume=True, images=images, progress=False)
    assert path.read_bytes() == raw
    # a checkpoint of another architecture (the weights file of an MLP)
    other = tmp_path / "other"
    checkpoints.save_weights(
        mlp.MLPDenoiser(dim=2, hidden=8, depth=1, emb_dim=4), other / optimization.CHECKPOINT_NAME
    )
    foreign = (other / optimization.CHECKPOINT_NAME).read_bytes()
    with pytest.raises(ValueError, match="not a training-engine checkpoint.*MLPDenoiser"):
        engine.train(TINY, other, resume=True, images=images, progress=False)
    assert (other / optimization.CHECKPOINT_NAME).read_bytes() == foreign
    # a truncated file
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / optimization.CHECKPOINT_NAME).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="may be truncated"):
        engine.train(TINY, cut, resume=True, images=images, progress=False)
    assert (cut / optimization.CHECKPOINT_NAME).read_bytes() == raw[: len(raw) // 2]
    with pytest.raises(FileNotFoundError):
        engine.train(TINY, tmp_path / "empty", resume=True, images=images, progress=False)


def test_batches_are_epochs_of_permutations():
    n, b = 10, 4
    seen = torch.cat([engine.batch_indices(s, b, n, seed=0) for s in range(5)])  # 20 = 2 epochs
    assert sorted(seen[:10].tolist()) == list(range(10))
    assert sorted(seen[10:].tolist()) == list(range(10))
    assert not torch.equal(seen[:10], seen[10:]), "each epoch is a new permutation"


def _random_unet(cfg):
    torch.manual_seed(0)
    model = engine.UNet(cfg.unet_config())
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return model


def test_vdm_loss_is_the_eps_loss_scaled_by_minus_half_the_slope():
    """For λ(t) = 13.3 − 18.3 t, −½ λ'(t) = 9.15 for every t (Kingma et al. 2021, eq. 17).

    The identity is checked in float64: the VDM loss is computed in x_0 units
    (continuous_time.continuous_diffusion_loss), and in float32 its x_t is formed with
    σ = √(1 − ᾱ) from a float32 ᾱ, which keeps only a few digits of σ² at λ near 13.3.
    """
    images = _images()
    cfg = TINY
    x0, t, eps = engine.step_batch(images, 0, cfg)
    model = _random_unet(cfg)
    schedule = schedules.get_schedule("linear_log_snr")
    log_snr = schedule.log_snr(t)
    ab = torch.sigmoid(log_snr)[:, None, None, None]
    by_hand = ((eps - model(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, log_snr)) ** 2).mean()
    # the two objectives TrainConfig names: λ from the schedule, and λ' by autograd for VDM
    plain = config.l_simple(schedule, model, x0, t, eps)
    torch.testing.assert_close(plain, by_hand, rtol=1e-5, atol=0)
    wide = (model.double(), x0.double(), t.double(), eps.double())
    weighted = config.vdm_loss(schedule, *wide)
    torch.testing.assert_close(weighted, 9.15 * config.l_simple(schedule, *wide), rtol=1e-9, atol=0)
    assert config.OBJECTIVES == {"eps": config.l_simple, "vdm": config.vdm_loss}
    # train reports the loss of its objective at step 0 (same initial weights, same batch)
    for objective, loss in (("vdm", config.vdm_loss), ("eps", config.l_simple)):
        run = engine.train(
            dataclasses.replace(cfg, objective=objective, steps=1), images=images, progress=False
        )
        torch.manual_seed(cfg.seed)
        fresh = engine.UNet(cfg.unet_config())
        assert run.losses[0] == pytest.approx(loss(schedule, fresh, x0, t, eps).item(), rel=1e-5)


def test_engine_losses_are_the_library_losses_per_dimension():
    """The engine's "eps" and "vdm" losses are simple.eps_loss_continuous and
    continuous_time.continuous_diffusion_loss of FromEps(unet) on the same draws, divided by D;
    as_denoiser (what cli eval uses) is that FromEps, conditioned on λ itself."""
    from diffusion_lessons.denoisers.denoiser import FromEps
    from diffusion_lessons.objectives import continuous_time, simple

    x0, t, eps = engine.step_batch(_images(), 3, TINY)
    model = _random_unet(TINY)
    d = x0[0].numel()
    lam = torch.linspace(-5.0, 13.0, len(t))
    torch.testing.assert_close(config.as_denoiser(model)(x0, lam), FromEps(model)(x0, lam))
    assert config.as_denoiser(model).cond(lam) is lam
    for name in ("linear_log_snr", "cosine"):
        schedule = schedules.get_schedule(name)
        lib = simple.eps_loss_continuous(x0, FromEps(model), schedule, t, eps).mean() / d
        torch.testing.assert_close(config.l_simple(schedule, model, x0, t, eps), lib)
    schedule = schedules.get_schedule("linear_log_snr")
    lib = continuous_time.continuous_diffusion_loss(x0, FromEps(model), schedule, t, eps)
    torch.testing.assert_close(config.vdm_loss(schedule, model, x0, t, eps), lib.mean() / d)


class _OptimalEps(torch.nn.Module):
    """E[ε | x_t] for x_0 ∼ N(0, v I), by hand: σ x_t / (ᾱ v + σ²), at the log-SNR λ."""

    def __init__(self, v):
        super().__init__()
        self.v = v
        self.unused = torch.nn.Parameter(torch.zeros(1))  # the optimizer needs a parameter

    def forward(self, x, log_snr):
        ab = torch.sigmoid(log_snr.double())[:, None, None, None]
        var = torch.sigmoid(-log_snr.double())[:, None, None, None]
        return (var.sqrt() * x / (ab * self.v + var)).to(x.dtype)


@pytest.mark.parametrize("objective", ["eps", "vdm"])
def test_engine_loss_of_the_optimal_denoiser_is_the_closed_form(objective):
    """Gaussian data N(0, v I), the optimal ε-network: the engine's loss of each step, averaged
    over 400 independent batches, is oracles.gaussian_eps_loss_exact / D (L_simple) or
    oracles.gaussian_continuous_loss_exact / D (L_∞) within 4.5 standard errors."""
    from diffusion_lessons.data import oracles
    from diffusion_lessons.montecarlo import mean_se

    v, steps = 0.4, 400
    cfg = dataclasses.replace(TINY, objective=objective)
    g = torch.Generator().manual_seed(9)
    images = v**0.5 * torch.randn(steps * cfg.batch_size, 1, 8, 8, generator=g)  # seen once each
    loss_fn = optimization.make_loss_fn(cfg, torch.device("cpu"))
    model = _OptimalEps(v)
    draws = torch.stack(
        [loss_fn(model, *engine.step_batch(images, s, cfg)).detach() for s in range(steps)]
    )
    d = 64
    exact = {
        "eps": oracles.gaussian_eps_loss_exact(v, d, 13.3, -5.0),
        "vdm": oracles.gaussian_continuous_loss_exact(v, d, 13.3, -5.0),
    }[objective]
    est = mean_se(draws)
    assert est.within(exact / d), (est, exact / d)


def test_oom_message_suggests_a_batch_that_fits():
    def fake(b):
        if b > 24:
            raise torch.OutOfMemoryError("CUDA out of memory")

    fits = distributed.largest_fitting_batch(fake, 128)
    assert fits == 16
    msg = distributed.oom_message(256, fits, world=2)
    assert "batch_size=256 (128 per GPU)" in msg and "--batch-size 32" in msg
    assert "even 1 image" in distributed.oom_message(8, 0)


def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch):
    def broken_compile(module):
        def fail(*args, **kwargs):
            raise RuntimeError("no compiler here")

        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    cfg = dataclasses.replace(TINY, steps=3)
    with pytest.warns(UserWarning, match="torch.compile failed.*training eagerly") as record:
        compiled = engine.train(
            dataclasses.replace(cfg, compile=True), images=_images(), progress=False
        )
    assert len([w for w in record if "torch.compile" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        eager = engine.train(cfg, images=_images(), progress=False)
    assert compiled.losses == eager.losses


def test_train_is_train_step_over_the_step_batches():
    """The loop adds nothing to the step the benchmark times: build_state + train_step on
    step_batch reproduces train() (no dropout in TINY, so no per-step seed is needed)."""
    cfg = dataclasses.replace(TINY, steps=3)
    images = _images()
    run = engine.train(cfg, images=images, progress=False)
    dev = torch.device("cpu")
    torch.manual_seed(cfg.seed)
    state = optimization.build_state(engine.UNet(cfg.unet_config()), cfg, dev)
    loss_fn = optimization.make_loss_fn(cfg, dev)
    losses = [
        optimization.train_step(state, engine.step_batch(images, s, cfg), loss_fn, cfg).item()
        for s in range(cfg.steps)
    ]
    assert state.step == run.step == 3
    assert losses == run.losses
    for a, b in zip(run.ema.parameters(), state.ema.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(run.model.parameters(), state.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_learning_rate_warm_up_and_ema_update():
    """lr · min(1, (s + 1)/warm-up), and θ_ema ← d θ_ema + (1 − d) θ written out by hand."""
    cfg = dataclasses.replace(TINY, lr=1e-3, warmup_steps=4)
    lrs = [optimization.lr_at(s, cfg) for s in range(6)]
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3], rel=1e-12)
    assert optimization.lr_at(0, dataclasses.replace(cfg, warmup_steps=0)) == 1e-3
    torch.manual_seed(0)
    ema, model = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in ema.parameters()]
    optimization.ema_update(ema, model, 0.9)
    for e, b, p in zip(ema.parameters(), before, model.parameters(), strict=True):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * p.detach())


def test_config_refusals():
    with pytest.raises(ValueError, match="unknown dataset"):
        config.TrainConfig(dataset="cifar100")
    with pytest.raises(ValueError, match="unknown objective 'x0'; choose one of 'eps', 'vdm'"):
        config.TrainConfig(objective="x0")
    with pytest.raises(ValueError, match="objective 'vdm' needs a finite log-SNR"):
        config.TrainConfig(objective="vdm", schedule="linear_beta")
    with pytest.raises(ValueError, match="image_size must be divisible"):
        config.TrainConfig(ch_mult=(1, 2, 2, 2))
    assert config.TrainConfig.from_dict(TINY.to_dict()) == TINY


# --- DistributedDataParallel on the CPU (gloo), two processes --------------------------------


def _ddp_worker(rank, world, port, out_dir):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    # rank 0's clock decides when time is up (at step 2, the first logging step), not rank 1's
    cfg = dataclasses.replace(TINY, steps=6, batch_size=8, log_every=2)
    limit = 1e-9 if rank == 0 else 3600.0
    result = engine.train(
        cfg,
        out_dir if rank == 0 else None,
        images=_images(),
        device="cpu",
        progress=False,
        time_limit=limit,
    )
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in result.model.state_dict().items()}
    state["losses"] = torch.tensor(result.losses)
    save_file(state, os.path.join(out_dir, f"rank{rank}.safetensors"))


@pytest.mark.slow  # spawns two processes (4 s); make test runs it after the book
def test_two_processes_equal_one_process_on_the_combined_batch(tmp_path):
    from safetensors.torch import load_file

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1))
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"ranks differ in {k}"
    single = engine.train(
        dataclasses.replace(TINY, steps=2, batch_size=8, log_every=2),
        images=_images(),
        device="cpu",
        progress=False,
    )
    for k, v in single.model.state_dict().items():
        assert torch.allclose(r0[k], v, atol=1e-5, rtol=1e-4), k
    assert torch.allclose(r0["losses"], torch.tensor(single.losses), rtol=1e-5)
    assert len(r1["losses"]) == 2, "rank 1 stopped with rank 0, its own limit not reached"
    assert (tmp_path / optimization.CHECKPOINT_NAME).exists(), "rank 0 wrote the checkpoint"


# --- command line ---------------------------------------------------------------------------


def test_cli_train_resume_and_eval(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert (
        cli.main(["train", "--config", "tiny", "--steps", "2", "--out", out, "--no-progress"]) == 0
    )
    assert "step 2" in capsys.readouterr().out
    with pytest.raises(ValueError, match="exists"):  # --traceback: the error itself, not one line
        cli.main(
            [
                "--traceback",
                "train",
                "--config",
                "tiny",
                "--steps",
                "4",
                "--out",
                out,
                "--no-progress",
            ]
        )
    cli.main(
        ["train", "--config", "tiny", "--steps", "4", "--out", out, "--resume", "--no-progress"]
    )
    assert "step 4" in capsys.readouterr().out
    ckpt = checkpoints.read_training_state(tmp_path / "run" / optimization.CHECKPOINT_NAME)
    cfg, step, tensors = config.TrainConfig.from_dict(ckpt.config), ckpt.step, ckpt.tensors
    assert step == 4 and tensors["losses"].shape == (4,) and cfg.steps == 4
    straight = engine.train(dataclasses.replace(TINY, steps=4), progress=False)
    assert tensors["losses"].tolist() == straight.losses
    cli.main(
        ["eval", "--checkpoint", str(tmp_path / "run" / optimization.CHECKPOINT_NAME), "--n", "32"]
    )
    text = capsys.readouterr().out
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()[1:]}
    terms = {"prior", "reconstruction", "diffusion", "total"}
    assert set(values) == terms | {f"{k}_se" for k in terms}
    parts = values["prior"] + values["reconstruction"] + values["diffusion"]
    assert values["total"] == pytest.approx(parts, abs=2e-4)


def test_cli_time_limit_checkpoints_and_resumes(tmp_path, capsys):
    out = str(tmp_path / "run")
    argv = ["train", "--config", "tiny", "--steps", "3", "--out", out, "--no-progress"]
    assert cli.main([*argv, "--time-limit", "1e-9"]) == 0
    assert "step 1:" in capsys.readouterr().out  # the tiny preset logs every step
    assert cli.main([*argv, "--resume", "--time-limit", "600"]) == 0
    assert "step 3:" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--time-limit", "0"])
    assert exit_info.value.code == 2
    assert "--time-limit" in capsys.readouterr().err


def test_cli_eval_checks_the_ema_weights(tmp_path):
    """A training state whose EMA is another architecture is refused before any evaluation."""
    torch.manual_seed(0)
    model = engine.UNet(TINY.unet_config())
    wider = engine.UNet(dataclasses.replace(TINY, ch=16).unet_config())
    path = tmp_path / optimization.CHECKPOINT_NAME
    checkpoints.save_training_state(
        path,
        modules={"model": model, "ema": wider},
        opt=torch.optim.AdamW(model.parameters()),
        step=0,
        losses=[],
        config=TINY.to_dict(),
        metadata={"architecture": "UNet"},
    )
    with pytest.raises(ValueError, match=r"another architecture \(UNet\).*shape mismatches"):
        cli.main(["--traceback", "eval", "--checkpoint", str(path), "--n", "4"])


def test_benchmark_script_runs_at_tiny_size(capsys, monkeypatch):
    """Smoke test of benchmarks/bench_train.py (the GPU numbers come from a GPU session)."""
    from conftest import REPO, load_script

    bench = load_script(REPO / "benchmarks" / "bench_train.py")
    timed = []  # the benchmark times the engine's own step, not a copy of it
    step = optimization.train_step
    monkeypatch.setattr(optimization, "train_step", lambda *a: timed.append(1) or step(*a))
    rows = bench.main(["--device", "cpu", "--tiny", "--steps", "1", "--warmup", "0"])
    assert len(timed) == 4, "one timed optimization.train_step per model and mode"
    assert [r["mode"] for r in rows] == ["plain", "fast"] * 2
    assert all(r["images_per_s"] > 0 and 0 < r["mfu"] < 1 for r in rows)
    # the CIFAR-shaped model (32×32×3, 4 levels) costs more per step than the MNIST-shaped one
    assert rows[2]["gflops_per_step"] > rows[0]["gflops_per_step"]
    assert "speed-up" in capsys.readouterr().out
