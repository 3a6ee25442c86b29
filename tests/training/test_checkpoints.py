"""Safetensors checkpoints: the atomic writer, both formats, and the checks before any copy."""

import pytest
import torch
from torch import nn

from diffusion_lessons.nets import mlp
from diffusion_lessons.training import checkpoints


def test_weights_round_trip_and_refusals(tmp_path):
    model = mlp.MLPDenoiser(dim=2, hidden=16, depth=1, emb_dim=8)
    path = checkpoints.save_weights(model, tmp_path / "m.safetensors", metadata={"loss": 1.5})
    other = mlp.MLPDenoiser(dim=2, hidden=16, depth=1, emb_dim=8)
    assert checkpoints.load_weights(other, path) == {"loss": 1.5}
    for k, v in model.state_dict().items():
        assert torch.equal(v, other.state_dict()[k])
    bigger = mlp.MLPDenoiser(dim=2, hidden=32, depth=1, emb_dim=8)
    before = {k: v.clone() for k, v in bigger.state_dict().items()}
    with pytest.raises(ValueError, match="another architecture"):
        checkpoints.load_weights(bigger, path)
    assert all(torch.equal(v, bigger.state_dict()[k]) for k, v in before.items()), (
        "model left untouched"
    )
    raw = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors checkpoint"):
        checkpoints.load_weights(other, tmp_path / "cut.safetensors")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        checkpoints.load_weights(other, tmp_path / "absent.safetensors")


def test_an_interrupted_write_leaves_the_old_file_and_no_debris(tmp_path, monkeypatch):
    import safetensors.torch

    path = checkpoints.save_weights(nn.Linear(2, 2), tmp_path / "w.safetensors")
    raw = path.read_bytes()

    def dies_half_way(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_weights(nn.Linear(2, 2), path)
    assert path.read_bytes() == raw
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def _trained(seed):
    """A model, its EMA and an AdamW that has taken one step (so it has state to save)."""
    torch.manual_seed(seed)
    model, ema = nn.Linear(3, 2), nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(4, 3)).pow(2).mean().backward()
    opt.step()
    return model, ema, opt


def test_training_state_round_trip_continues_the_same_optimisation(tmp_path):
    model, ema, opt = _trained(0)
    path = checkpoints.save_training_state(
        tmp_path / "s.safetensors",
        modules={"model": model, "ema": ema},
        opt=opt,
        step=1,
        losses=[0.5],
        config={"lr": 1e-2, "sizes": [3, 2]},
        metadata={"architecture": "Linear"},
    )
    ckpt = checkpoints.read_training_state(path)
    assert (ckpt.config, ckpt.step, ckpt.metadata["architecture"]) == (
        {"lr": 1e-2, "sizes": [3, 2]},
        1,
        "Linear",
    )
    model2, ema2, opt2 = _trained(1)  # other weights and other optimizer moments
    step, losses = checkpoints.load_training_state(
        ckpt, modules={"model": model2, "ema": ema2}, opt=opt2, path=path
    )
    assert (step, losses) == (1, [0.5])
    for a, b in ((model, model2), (ema, ema2)):
        for k, v in a.state_dict().items():
            assert torch.equal(v, b.state_dict()[k]), k
    # the same next step from both optimizers: only equal if the moments were restored
    x = torch.randn(4, 3)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()
    for k, v in model.state_dict().items():
        assert torch.equal(v, model2.state_dict()[k]), k


def test_training_state_refusals_copy_nothing(tmp_path):
    model, ema, opt = _trained(0)
    weights = checkpoints.save_weights(model, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="not a training-engine checkpoint.*'Linear'"):
        checkpoints.read_training_state(weights)
    path = checkpoints.save_training_state(
        tmp_path / "s.safetensors",
        modules={"model": model, "ema": nn.Linear(3, 5)},
        opt=opt,
        step=1,
        losses=[0.5],
        config={},
    )
    ckpt = checkpoints.read_training_state(path)
    target, target_ema, target_opt = _trained(1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match=r"another architecture.*weight: file \(5, 3\) vs model"):
        checkpoints.load_training_state(
            ckpt, modules={"model": target, "ema": target_ema}, opt=target_opt, path=path
        )
    for k, v in before.items():  # model/ matched, yet nothing was copied before ema/ was checked
        assert torch.equal(v, target.state_dict()[k]), k
    small = nn.Linear(3, 2, bias=False)
    with pytest.raises(ValueError, match="optimizer state for another architecture"):
        checkpoints.load_training_state(
            checkpoints.read_training_state(
                checkpoints.save_training_state(
                    tmp_path / "o.safetensors",
                    modules={"model": model},
                    opt=opt,
                    step=1,
                    losses=[0.5],
                    config={},
                )
            ),
            modules={"model": model},
            opt=torch.optim.AdamW(small.parameters()),
            path=path,
        )


def test_config_differences_name_every_field():
    stored = {"lr": 1e-3, "batch_size": 16, "steps": 4, "seed": 0}
    new = {"lr": 3e-4, "batch_size": 16, "steps": 8, "ema": 0.9}
    assert checkpoints.config_differences(stored, new, may_differ=("steps",)) == [
        "lr: 0.001 → 0.0003",
        "seed: 0 → '<absent>'",
        "ema: '<absent>' → 0.9",
    ]
    checkpoints.check_resumable(stored, dict(stored, steps=9), may_differ=("steps",), path="p")
    with pytest.raises(ValueError, match=r"cannot resume from p: the configuration differs in lr"):
        checkpoints.check_resumable(stored, new, may_differ=("steps",), path="p")
