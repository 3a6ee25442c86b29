"""The image trainer with labels: a class-conditional U-Net trained with label dropout, the
classifier-free guidance recipe (Ho & Salimans 2022), on the engine's own batches."""

import dataclasses
import math

import pytest
import torch

from diffusion_lessons.data import datasets
from diffusion_lessons.denoisers.denoiser import FromEps
from diffusion_lessons.guidance import guided
from diffusion_lessons.noise import schedules
from diffusion_lessons.objectives import continuous_time, simple
from diffusion_lessons.training import config, engine, optimization

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = dataclasses.replace(config.PRESETS["tiny"], num_classes=10, label_dropout=0.25)


def _data(n=64, seed=0):
    """Random 8×8 'digits' on the 17-level grid and random labels 0..9 (no dataset needed)."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 17, (n, 1, 8, 8), generator=g)
    return k.float() / 8 - 1, torch.randint(0, 10, (n,), generator=g)


def test_label_dropout_replaces_labels_by_the_null_label_at_its_rate():
    images, labels = _data()
    null = 0
    kept_right = True
    n = 0
    for step in range(200):
        x0, t, eps, y = engine.step_batch(images, step, CFG, labels=labels)
        idx = engine.batch_indices(step, CFG.batch_size, len(images), CFG.seed)
        assert torch.equal(x0, images[idx])  # the labels travel with their images
        dropped = y == CFG.num_classes
        kept_right &= bool(torch.equal(y[~dropped], labels[idx][~dropped]))
        null += int(dropped.sum())
        n += len(y)
    assert kept_right
    # binomial(n, p): the count of null labels within 4.5 standard deviations of n p
    p = CFG.label_dropout
    assert abs(null - n * p) < 4.5 * math.sqrt(n * p * (1 - p))
    # the same step gives the same labels; the unconditional batch is the same (x0, t, eps)
    again = engine.step_batch(images, 5, CFG, labels=labels)
    plain = engine.step_batch(images, 5, CFG)
    assert torch.equal(again[3], engine.step_batch(images, 5, CFG, labels=labels)[3])
    for a, b in zip(again[:3], plain, strict=True):
        assert torch.equal(a, b)


def test_each_rank_takes_its_rows_of_the_global_labels():
    images, labels = _data()
    whole = engine.step_batch(images, 7, CFG, labels=labels)
    shares = [engine.step_batch(images, 7, CFG, r, 2, labels) for r in (0, 1)]
    for k in range(4):
        assert torch.equal(torch.cat([s[k] for s in shares]), whole[k])


def test_the_conditional_loss_is_the_library_loss_of_the_labelled_denoiser():
    """l_simple and vdm_loss with labels y are the library losses of
    FromEps(Labelled(unet, y)), divided by D: the labels reach the network, the null label
    gives its unconditional half, and a wrong label changes the loss."""
    images, labels = _data()
    x0, t, eps, y = engine.step_batch(images, 3, CFG, labels=labels)
    torch.manual_seed(1)
    model = engine.UNet(CFG.unet_config()).eval()
    for p in model.parameters():  # the label embedding starts at zero in a fresh U-Net
        torch.nn.init.normal_(p, std=0.1)
    torch.nn.init.normal_(model.label_emb.weight, std=1.0)
    d = x0[0].numel()
    schedule = schedules.get_schedule("linear_log_snr")
    labelled = FromEps(guided.Labelled(model, y))
    lib = simple.eps_loss_continuous(x0, labelled, schedule, t, eps).mean() / d
    torch.testing.assert_close(config.l_simple(schedule, model, x0, t, eps, y), lib)
    lib = continuous_time.continuous_diffusion_loss(x0, labelled, schedule, t, eps).mean() / d
    torch.testing.assert_close(config.vdm_loss(schedule, model, x0, t, eps, y), lib)
    other = (y + 1) % (CFG.num_classes + 1)
    lam = schedule.log_snr(t)
    with torch.no_grad():
        right, wrong = (FromEps(guided.Labelled(model, v)).predict(x0, lam) for v in (y, other))
    # the labels matter to this network, so the match above is a match at the right labels
    assert (wrong - right).abs().max() > 1e-2 * right.abs().max()


def test_a_conditional_run_trains_resumes_and_learns_its_labels(tmp_path):
    images, labels = _data()
    cfg = dataclasses.replace(CFG, steps=6, checkpoint_every=3)
    straight = engine.train(cfg, images=images, labels=labels, progress=False)
    assert straight.model.num_classes == 10 and len(straight.losses) == 6
    engine.train(
        dataclasses.replace(cfg, steps=3), tmp_path, images=images, labels=labels, progress=False
    )
    resumed = engine.train(cfg, tmp_path, resume=True, images=images, labels=labels, progress=False)
    assert resumed.losses == straight.losses
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    # build_state + train_step on the labelled batches is train()
    dev = torch.device("cpu")
    torch.manual_seed(cfg.seed)
    state = optimization.build_state(engine.UNet(cfg.unet_config()), cfg, dev)
    loss_fn = optimization.make_loss_fn(cfg, dev)
    losses = [
        optimization.train_step(
            state, engine.step_batch(images, s, cfg, labels=labels), loss_fn, cfg
        ).item()
        for s in range(cfg.steps)
    ]
    assert losses == straight.losses
    # the label embedding moved off its zero start: the labels reached the gradient
    assert straight.model.label_emb.weight.abs().sum() > 0


def test_a_conditional_run_reads_the_data_sets_labels():
    cfg = dataclasses.replace(CFG, steps=1, max_examples=32)
    images = datasets.load_images("digits", "train", limit=32)
    got = config.training_labels(cfg, None, len(images), torch.device("cpu"))
    assert torch.equal(got, datasets.load_labels("digits", "train", limit=32))
    assert torch.equal(datasets.load_digits("train")[1][:32], got)


def test_label_refusals():
    images, labels = _data()
    with pytest.raises(ValueError, match=r"num_classes must be 0 \(unconditional\) or 10"):
        dataclasses.replace(CFG, num_classes=5)
    with pytest.raises(ValueError, match="label_dropout=0.1 needs labels: set num_classes=10"):
        dataclasses.replace(CFG, num_classes=0, label_dropout=0.1)
    with pytest.raises(ValueError, match=r"label_dropout must lie in \[0, 1\)"):
        dataclasses.replace(CFG, label_dropout=1.0)
    plain = config.PRESETS["tiny"]
    with pytest.raises(ValueError, match="labels given to an unconditional run"):
        engine.train(plain, images=images, labels=labels, progress=False)
    with pytest.raises(ValueError, match=r"labels must have shape \(64,\)"):
        engine.train(CFG, images=images, labels=labels[:10], progress=False)
    with pytest.raises(ValueError, match="labels holds unknown labels"):
        engine.train(CFG, images=images, labels=labels + 5, progress=False)
    with pytest.raises(ValueError, match="must hold integer class labels"):
        engine.train(CFG, images=images, labels=labels.float(), progress=False)


def test_a_conditional_checkpoint_is_measured_as_its_unconditional_half():
    """pretrained.terms_function (what export and cli eval measure) reads a class-conditional
    U-Net at the null label: VDM's terms of FromEps(Labelled(unet, C)) on the same draws."""
    from diffusion_lessons.training import pretrained

    images, _ = _data(8)
    torch.manual_seed(2)
    model = engine.UNet(CFG.unet_config()).eval()
    for p in model.parameters():  # a fresh U-Net's output layer is zero
        torch.nn.init.normal_(p, std=0.1)
    torch.nn.init.normal_(model.label_emb.weight, std=1.0)
    assert config.unconditional_label(model) == 10
    assert config.unconditional_label(engine.UNet(config.PRESETS["tiny"].unet_config())) is None
    fn = pretrained.terms_function(model, CFG, "vdm")
    schedule = schedules.get_schedule(CFG.schedule)
    null = FromEps(guided.Labelled(model, 10))
    with torch.no_grad():
        got = fn(images, generator=torch.Generator().manual_seed(3))
        want = continuous_time.vdm_terms(
            null, images, schedule, bins=17, generator=torch.Generator().manual_seed(3)
        )
        class_0 = continuous_time.vdm_terms(
            FromEps(guided.Labelled(model, 0)),
            images,
            schedule,
            bins=17,
            generator=torch.Generator().manual_seed(3),
        )
    for name in want:
        torch.testing.assert_close(got[name], want[name])
    assert not torch.allclose(got["diffusion"], class_0["diffusion"])


def test_cli_trains_a_conditional_preset_on_the_data_sets_labels_and_evaluates_it(tmp_path, capsys):
    """`train --config tiny-cfg` reads the digits' labels itself (the same run as engine.train
    with them), and `eval` measures the unconditional half of the EMA weights."""
    from diffusion_lessons import cli
    from diffusion_lessons.training import checkpoints, pretrained

    out = tmp_path / "run"
    argv = ["train", "--config", "tiny-cfg", "--steps", "3", "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    ckpt = checkpoints.read_training_state(out / optimization.CHECKPOINT_NAME)
    cfg = config.TrainConfig.from_dict(ckpt.config)
    assert cfg.num_classes == 10 and cfg.label_dropout == 0.2
    x = datasets.load_images("digits", "train", limit=cfg.max_examples)
    y = datasets.load_labels("digits", "train", limit=cfg.max_examples)
    direct = engine.train(cfg, images=x, labels=y, progress=False)
    assert ckpt.tensors["losses"].tolist() == direct.losses
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(out / optimization.CHECKPOINT_NAME)]) == 0
    text = capsys.readouterr().out
    total = next(float(line.split()[1]) for line in text.splitlines() if line.split()[0] == "total")
    ema = pretrained.read_training_ema(out / optimization.CHECKPOINT_NAME)
    test_x = datasets.load_images("digits", "test")
    terms = pretrained.measure(ema.model, cfg, test_x, method="vdm", batch_size=256)
    assert total == pytest.approx(terms["total"], abs=1e-4)  # eval prints 4 decimals
