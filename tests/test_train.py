"""The training loop and checkpoints."""

import pytest
import torch
from torch import nn

from diffusion_lessons import nets, train


def _regression_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 3, generator=g)
    w = torch.tensor([[1.0], [-2.0], [0.5]])
    return x, x @ w + 0.3


def _mse(model, batch, gen):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def test_fit_learns_a_linear_map_and_is_reproducible():
    x, y = _regression_data()
    a, b = nn.Linear(3, 1), nn.Linear(3, 1)
    b.load_state_dict(a.state_dict())
    ha = train.fit(a, _mse, (x, y), steps=300, lr=0.05, device="cpu", progress=False)
    hb = train.fit(b, _mse, (x, y), steps=300, lr=0.05, device="cpu", progress=False)
    assert ha.losses == hb.losses, "same seed, same run"
    # least squares is the independent answer
    sol = torch.linalg.lstsq(torch.cat([x, torch.ones(512, 1)], 1), y).solution
    assert torch.allclose(a.weight.detach().flatten(), sol[:3].flatten(), atol=1e-2)
    assert ha.losses[-1] < 1e-3 < ha.losses[0]
    assert len(ha.smoothed(10)) == 300


def test_checkpoint_round_trip_and_refusals(tmp_path):
    model = nets.MLPDenoiser(dim=2, hidden=16, depth=1, emb_dim=8)
    path = train.save_checkpoint(model, tmp_path / "m.safetensors", metadata={"loss": 1.5})
    other = nets.MLPDenoiser(dim=2, hidden=16, depth=1, emb_dim=8)
    assert train.load_checkpoint(other, path) == {"loss": 1.5}
    for k, v in model.state_dict().items():
        assert torch.equal(v, other.state_dict()[k])
    bigger = nets.MLPDenoiser(dim=2, hidden=32, depth=1, emb_dim=8)
    before = {k: v.clone() for k, v in bigger.state_dict().items()}
    with pytest.raises(ValueError, match="another architecture"):
        train.load_checkpoint(bigger, path)
    assert all(torch.equal(v, bigger.state_dict()[k]) for k, v in before.items()), (
        "model left untouched"
    )
    raw = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors checkpoint"):
        train.load_checkpoint(other, tmp_path / "cut.safetensors")


def test_fit_rejects_bad_arguments():
    x, y = _regression_data()
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        train.fit(nn.Linear(3, 1), _mse, (x, y), steps=0)
    with pytest.raises(ValueError, match="same first dimension"):
        train.fit(nn.Linear(3, 1), _mse, (x, y[:10]), steps=1)


def test_time_embedding_and_mlp_shapes():
    t = torch.tensor([0.0, 0.5])
    emb = nets.time_embedding(t, 6)
    assert emb.shape == (2, 6)
    assert torch.allclose(
        emb[0], torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    )  # cos 0 = 1, sin 0 = 0
    net = nets.MLPDenoiser(dim=2, hidden=8, depth=1, emb_dim=4)
    assert net(torch.zeros(2, 2), t).shape == (2, 2)
    with pytest.raises(ValueError, match=r"t must have shape \(B,\) = \(2,\)"):
        net(torch.zeros(2, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="dim must be even"):
        nets.time_embedding(t, 5)
