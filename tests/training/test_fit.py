"""The small training loop: it learns, it is reproducible, it checkpoints; no page imports."""

import ast

import pytest
import torch
from torch import nn

from diffusion_lessons.nets import embedding, mlp
from diffusion_lessons.training import checkpoints
from diffusion_lessons.training.fit import fit

from conftest import REPO


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
    ha = fit(a, _mse, (x, y), steps=300, lr=0.05, device="cpu", progress=False)
    hb = fit(b, _mse, (x, y), steps=300, lr=0.05, device="cpu", progress=False)
    assert ha.losses == hb.losses, "same seed, same run"
    # least squares is the independent answer
    sol = torch.linalg.lstsq(torch.cat([x, torch.ones(512, 1)], 1), y).solution
    assert torch.allclose(a.weight.detach().flatten(), sol[:3].flatten(), atol=1e-2)
    assert ha.losses[-1] < 1e-3 < ha.losses[0]
    assert len(ha.smoothed(10)) == 300


def test_fit_writes_a_weights_checkpoint(tmp_path):
    x, y = _regression_data()
    model = nn.Linear(3, 1)
    h = fit(
        model, _mse, (x, y), steps=3, device="cpu", progress=False, checkpoint=tmp_path / "w.st"
    )
    again = nn.Linear(3, 1)
    assert checkpoints.load_weights(again, tmp_path / "w.st") == {
        "steps": 3,
        "final_loss": h.losses[-1],
    }
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])


def test_the_library_does_not_import_page_support():
    """Only the pages import ``pages`` (the glue and the size switch), never a library module."""
    for path in sorted((REPO / "src" / "diffusion_lessons").rglob("*.py")):
        if path.name == "pages.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module or ''}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any(n.split(".")[-1] == "pages" for n in names), (
                f"{path.name}:{node.lineno} imports pages"
            )


def test_fit_rejects_bad_arguments():
    x, y = _regression_data()
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        fit(nn.Linear(3, 1), _mse, (x, y), steps=0)
    with pytest.raises(ValueError, match="same first dimension"):
        fit(nn.Linear(3, 1), _mse, (x, y[:10]), steps=1)


def test_time_embedding_and_mlp_shapes():
    t = torch.tensor([0.0, 0.5])
    emb = embedding.time_embedding(t, 6)
    assert emb.shape == (2, 6)
    assert torch.allclose(
        emb[0], torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    )  # cos 0 = 1, sin 0 = 0
    net = mlp.MLPDenoiser(dim=2, hidden=8, depth=1, emb_dim=4)
    assert net(torch.zeros(2, 2), t).shape == (2, 2)
    with pytest.raises(ValueError, match=r"noise input c must have shape \(B,\) = \(2,\)"):
        net(torch.zeros(2, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="dim must be even"):
        embedding.time_embedding(t, 5)


def test_a_batch_at_one_noise_level_is_embedded_once_with_the_same_values_and_gradients():
    from diffusion_lessons.guidance import guided

    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(8, 16), nn.SiLU(), nn.Linear(16, 16))
    t = torch.full((5,), 0.7)
    shared = embedding.embed_noise(head, t, 8, torch.float32)
    assert shared.shape == (5, 16)
    # independently: each row through the MLP on its own
    rows = torch.cat([head(embedding.time_embedding(t[i : i + 1], 8)) for i in range(5)])
    # a one-row against a five-row float32 product: rounding of sums of 16 terms of order 1
    torch.testing.assert_close(shared, rows, rtol=1e-6, atol=1e-6)
    # the networks that use it: a batch at one level against the row-by-row path, forced by
    # moving the last row's level one float32 step (which moves the output by about 1e-7)
    apart = t.clone()
    apart[-1] = torch.nextafter(apart[-1], torch.tensor(1.0))
    x = torch.randn(5, 2)
    y = torch.tensor([0, 1, 2, 3, 0])
    for net, call in (
        (mlp.MLPDenoiser(dim=2, hidden=16, depth=2, emb_dim=8), lambda n, c: n(x, c)),
        (
            guided.ConditionalMLP(dim=2, num_classes=3, hidden=16, depth=2, emb_dim=8),
            lambda n, c: n(x, c, y),
        ),
        (
            guided.NoiseAwareClassifier(dim=2, num_classes=3, hidden=16, emb_dim=8),
            lambda n, c: n(x, c),
        ),
    ):
        outs, grads = [], []
        for c in (t, apart):
            out = call(net, c)
            outs.append(out)
            grads.append(torch.autograd.grad(out.square().sum(), list(net.parameters())))
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
        for g_shared, g_rows in zip(*grads, strict=True):
            torch.testing.assert_close(g_shared, g_rows, rtol=1e-4, atol=1e-5)
