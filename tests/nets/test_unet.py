"""The U-Net: published parameter count, shapes, attention, refusals."""

import dataclasses
import math

import pytest
import torch
from torch import nn

from diffusion_lessons.nets import unet

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ddpm_cifar10_model_has_the_published_35_7m_parameters():
    """Ho et al. (2020, appendix B) report 35.7M parameters for the CIFAR-10 model. The published
    figure is rounded to 0.1M, so the count must lie within ±0.05M of it."""
    count = unet.count_parameters(unet.UNet(unet.ddpm_cifar10_config()))
    assert abs(count - 35.7e6) <= 0.05e6, count


def test_parameter_count_of_a_one_level_unet_by_hand():
    """One level, one res block, no attention, ch = 8, 1 input channel: count every layer by hand."""
    m = unet.UNet(
        image_size=4,
        in_channels=1,
        ch=8,
        ch_mult=(1,),
        num_res_blocks=1,
        attn_resolutions=(),
        dropout=0.0,
    )
    conv = lambda i, o, k=3: i * o * k * k + o
    lin = lambda i, o: i * o + o
    gn = lambda c: 2 * c
    emb = 32
    res = lambda i, o: (
        gn(i) + conv(i, o) + lin(emb, o) + gn(o) + conv(o, o) + (conv(i, o, 1) if i != o else 0)
    )
    attn = gn(8) + conv(8, 24, 1) + conv(8, 8, 1)
    expected = (
        lin(8, emb)
        + lin(emb, emb)  # time MLP
        + conv(1, 8)  # conv_in
        + res(8, 8)  # down
        + res(8, 8)
        + attn
        + res(8, 8)  # middle
        + res(16, 8)
        + res(16, 8)  # up: concatenated skips
        + gn(8)
        + conv(8, 1)  # out
    )
    assert unet.count_parameters(m) == expected


def test_forward_shapes_and_noise_level_dependence():
    torch.manual_seed(0)
    m = unet.UNet(
        unet.UNetConfig(
            image_size=8, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0
        )
    ).eval()
    assert any(isinstance(mod, unet.AttnBlock) for mod in m.modules())
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(m(x, torch.rand(3)), torch.zeros(3, 1, 8, 8)), "zero-initialised output"
    for p in m.parameters():  # leave the zero init: every path is used
        nn.init.normal_(p, std=0.2)
    a, b = m(x, torch.full((3,), -4.0)), m(x, torch.full((3,), 10.0))  # two log-SNRs
    assert a.shape == (3, 1, 8, 8) and not torch.allclose(a, b)
    assert torch.allclose(m(x[:1], torch.full((1,), -4.0)), a[:1], atol=1e-5), "no batch mixing"


def test_the_embedding_sees_the_noise_input_times_noise_scale():
    """UNet(noise_scale=50) at λ is UNet(noise_scale=1) at 50 λ, with the same weights; the
    same for the MLP (noise_scale=4 at λ, as in chapters 6–7)."""
    from diffusion_lessons.nets import mlp

    torch.manual_seed(0)
    kw = dict(image_size=8, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=())
    m50 = unet.UNet(noise_scale=50.0, **kw).eval()
    for p in m50.parameters():
        nn.init.normal_(p, std=0.2)
    m1 = unet.UNet(noise_scale=1.0, **kw).eval()
    m1.load_state_dict(m50.state_dict())
    x, lam = torch.randn(3, 1, 8, 8), torch.tensor([-5.0, 0.3, 13.3])
    torch.testing.assert_close(m50(x, lam), m1(x, 50.0 * lam))
    assert unet.UNetConfig().noise_scale == 50.0
    f4 = mlp.MLPDenoiser(dim=2, hidden=16, depth=1, emb_dim=8, noise_scale=4.0)
    f1 = mlp.MLPDenoiser(dim=2, hidden=16, depth=1, emb_dim=8, noise_scale=1.0)
    f1.load_state_dict(f4.state_dict())
    z = torch.randn(3, 2)
    torch.testing.assert_close(f4(z, lam), f1(z, 4.0 * lam))
    assert mlp.MLPDenoiser().noise_scale == 1000.0  # chapters 4–5: t = i/T ∈ [0, 1]


def test_attention_block_is_softmax_attention():
    torch.manual_seed(0)
    blk = unet.AttnBlock(8)
    nn.init.normal_(blk.proj.weight, std=0.3)
    x = torch.randn(2, 8, 3, 3)
    q, k, v = blk.qkv(blk.norm(x)).flatten(2).chunk(3, dim=1)  # (B, C, N) each
    w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(8), dim=-1)
    out = torch.einsum("bij,bcj->bci", w, v).reshape(2, 8, 3, 3)
    assert torch.allclose(blk(x), x + blk.proj(out), atol=1e-5)


def test_book_mnist_configs_run_on_28x28():
    for small in (True, False):
        cfg = unet.mnist_config(small=small)
        assert cfg.image_size == 28 and cfg.attn_resolutions == (7,)
    m = unet.UNet(unet.mnist_config(small=True))
    assert m(torch.randn(2, 1, 28, 28), torch.rand(2)).shape == (2, 1, 28, 28)


def test_refusals():
    with pytest.raises(ValueError, match="divisible"):
        unet.UNetConfig(image_size=28, ch_mult=(1, 2, 2, 2))
    with pytest.raises(ValueError, match="dropout"):
        unet.UNetConfig(dropout=1.0)
    with pytest.raises(ValueError, match="ch_mult"):
        unet.UNetConfig(ch_mult=())
    with pytest.raises(ValueError, match="not both"):
        unet.UNet(unet.UNetConfig(), ch=8)
    m = unet.UNet(image_size=8, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=())
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 8, 8\)"):
        m(torch.randn(2, 1, 16, 16), torch.rand(2))
    with pytest.raises(ValueError, match=r"log_snr must have shape \(B,\) = \(2,\)"):
        m(torch.randn(2, 1, 8, 8), torch.rand(3))
    with pytest.raises(ValueError, match="noise_scale must be > 0"):
        unet.UNetConfig(noise_scale=0.0)
    cfg = unet.ddpm_cifar10_config()
    assert unet.UNetConfig.from_dict(cfg.to_dict()) == cfg


def _conditional(num_classes=3):
    torch.manual_seed(0)
    cfg = unet.UNetConfig(
        image_size=8,
        ch=8,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(4,),
        dropout=0.0,
        num_classes=num_classes,
    )
    model = unet.UNet(cfg).eval()
    # The output convolution and each residual branch's last one start at zero (the model
    # starts as ε̂ = 0 and the blocks as identities), which also hides the embedding: give
    # them weights, as training would.
    with torch.no_grad():
        for w in model.parameters():
            if w.ndim > 1 and not w.any():
                nn.init.normal_(w, std=0.1)
    return model


def test_class_conditional_unet_adds_one_label_embedding_and_refuses_bad_labels():
    """num_classes = C adds an embedding of C + 1 rows (the null label C) to the noise input;
    the labels change the output, and only through that embedding."""
    from diffusion_lessons.guidance.guided import Labelled, null_label

    model = _conditional(3)
    plain = unet.UNet(dataclasses.replace(model.config, num_classes=None))
    extra = set(model.state_dict()) - set(plain.state_dict())
    assert extra == {"label_emb.weight"} and model.label_emb.weight.shape == (4, 4 * 8)
    assert not hasattr(plain, "label_emb") and plain.num_classes is None
    x, lam = torch.randn(4, 1, 8, 8), torch.linspace(-3, 5, 4)
    with torch.no_grad():
        outs = [model(x, lam, torch.full((4,), k)) for k in range(4)]  # 3 classes and null
        assert all((outs[0] - o).abs().max() > 1e-4 for o in outs[1:])
        model.label_emb.weight.zero_()  # no label information left: every label alike
        again = [model(x, lam, torch.full((4,), k)) for k in range(4)]
        assert all(torch.allclose(again[0], o, atol=1e-6) for o in again[1:])
        fixed = Labelled(model, null_label(3))(x, lam)  # the guidance wrapper works as for MLPs
        assert torch.allclose(fixed, again[3], atol=1e-6)
    for bad, message in [
        (None, "class-conditional: pass labels y"),
        (torch.full((4,), 4), "unknown labels"),
        (torch.zeros(3, dtype=torch.long), r"y must have shape \(B,\) = \(4,\)"),
        (torch.zeros(4), "integer class labels"),
    ]:
        with pytest.raises(ValueError, match=message):
            model(x, lam, bad)
    with pytest.raises(ValueError, match="y given to an unconditional UNet"):
        plain(x, lam, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="num_classes"):
        unet.UNetConfig(num_classes=0)


def test_label_embedding_learns():
    """One gradient step on a label-dependent target moves the label embedding."""
    model = _conditional(2).train()
    x, lam, y = torch.randn(6, 1, 8, 8), torch.zeros(6), torch.tensor([0, 1, 2, 0, 1, 2])
    loss = ((model(x, lam, y) - y.float()[:, None, None, None]) ** 2).mean()
    loss.backward()
    assert model.label_emb.weight.grad.abs().sum(1).min() > 0  # every label's row, null too


def _digit_classifier_config():
    return unet.UNetConfig(
        image_size=8, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0
    )


def test_unet_classifier_is_the_unets_way_down_with_a_pooled_head():
    """The classifier's encoder has exactly the U-Net's modules of the way down and the middle
    (same names, same shapes, same initial values from the same seed), and a head of K logits;
    it refuses a label-taking config and a bad number of classes."""
    cfg = _digit_classifier_config()
    torch.manual_seed(0)
    clf = unet.UNetClassifier(cfg, num_classes=10)
    torch.manual_seed(0)
    full = unet.UNet(cfg)
    shared = {k: v for k, v in clf.state_dict().items() if not k.startswith(("head", "norm_out"))}
    for k, v in shared.items():
        assert torch.equal(v, full.state_dict()[k]), k
    assert not any(k.startswith("up") for k in clf.state_dict())
    x, lam = torch.randn(5, 1, 8, 8), torch.linspace(-4, 6, 5)
    assert clf(x, lam).shape == (5, 10) and clf.features(x, lam).shape == (5, 16)
    with pytest.raises(ValueError, match="a UNetClassifier takes no labels"):
        unet.UNetClassifier(dataclasses.replace(cfg, num_classes=10), num_classes=10)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1"):
        unet.UNetClassifier(cfg, num_classes=0)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 8, 8\)"):
        clf(torch.randn(5, 1, 7, 7), lam)


def test_unet_classifier_gives_classifier_guidance_its_gradient():
    """guided.classifier_log_prob of the classifier is log softmax at the label, and its
    gradient in x_t (what classifier_guided adds) is finite and nonzero."""
    from diffusion_lessons.guidance import guided

    torch.manual_seed(0)
    clf = unet.UNetClassifier(_digit_classifier_config(), num_classes=10).eval()
    x, lam = torch.randn(4, 1, 8, 8), torch.zeros(4)
    log_p = guided.classifier_log_prob(clf, 3, 10)
    with torch.no_grad():
        torch.testing.assert_close(log_p(x, lam), torch.log_softmax(clf(x, lam), 1)[:, 3])
    xt = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_p(xt, lam).sum(), xt)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
