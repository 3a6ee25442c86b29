"""Conditional denoisers and the two guidances of guidance/guided.py, against the exact labelled
mixture: CFG's score is the tilted score γ ∇log p(x_t | y) + (1 − γ) ∇log p(x_t) with γ = 1 + w,
and w = 0 is the conditional model exactly; classifier guidance with s = 1 and the exact
p(y | x_t) is the conditional score (Bayes), so a sampler run with it and with the exact
conditional denoiser lands on the same points; label dropout drops at rate p.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_lessons.data.toy import GaussianMixture
from diffusion_lessons.denoisers.denoiser import FromEps, eps_from, score_from
from diffusion_lessons.guidance import guided, labelled
from diffusion_lessons.noise.schedules import get_schedule
from diffusion_lessons.sampling.ancestral import ancestral_sample

pytestmark = pytest.mark.usefixtures("one_thread")


def oracle() -> labelled.LabelledMixture:
    """Two classes in 2-D: class 0 one component on the left, class 1 two on the right."""
    means = torch.tensor([[-1.5, 0.0], [1.5, 1.0], [1.5, -1.0]], dtype=torch.float64)
    covs = torch.stack([torch.eye(2, dtype=torch.float64) * v for v in (0.3, 0.2, 0.25)])
    weights = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    return labelled.LabelledMixture(GaussianMixture(weights, means, covs), torch.tensor([0, 1, 1]))


def inputs(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    lam = torch.empty(n, dtype=torch.float64).uniform_(-4, 5, generator=g)
    return 2 * torch.randn(n, 2, generator=g, dtype=torch.float64), lam


def exact_pair(lm, y):
    return labelled.exact_denoiser_given(lm, y), labelled.exact_denoiser_given(lm, lm.num_classes)


def test_cfg_with_zero_weight_is_the_conditional_denoiser_exactly():
    """(1 + 0) x̂_c − 0 · x̂_u is x̂_c bit for bit (one computation, no rounding)."""
    lm = oracle()
    cond, uncond = exact_pair(lm, 1)
    xt, lam = inputs(16, 0)
    assert torch.equal(guided.classifier_free(cond, uncond, 0.0)(xt, lam), cond(xt, lam))


@pytest.mark.parametrize("w", [0.0, 1.0, 4.0, -0.5])
def test_cfg_of_the_exact_oracle_has_the_tilted_score(w):
    """ε̃ = (1 + w) ε_c − w ε_u read back by eps_from, and the score of the guided denoiser equals
    the tilted score with γ = 1 + w of the noised mixture, row by row (rounding of 1/σ², 1e-8)."""
    lm = oracle()
    cond, uncond = exact_pair(lm, 1)
    xt, lam = inputs(12, 1)
    cfg = guided.classifier_free(cond, uncond, w)
    torch.testing.assert_close(
        eps_from(cfg, xt, lam),
        (1 + w) * eps_from(cond, xt, lam) - w * eps_from(uncond, xt, lam),
        rtol=1e-9,
        atol=1e-9,
    )
    got = score_from(cfg, xt, lam)
    for b in range(12):
        noised = lm.noised(torch.sigmoid(lam[b]).item())
        want = noised.tilted_score(xt[b : b + 1], 1, 1 + w)
        torch.testing.assert_close(got[b : b + 1], want, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("s", [0.0, 1.0, 3.0])
def test_classifier_guidance_adds_s_times_the_exact_classifier_gradient(s):
    """Score of the guided denoiser = ∇log p(x_t) + s ∇log p(y | x_t) (autograd through the exact
    classifier against the closed-form gradient); at s = 1 it is ∇log p(x_t | y), by Bayes, from
    the class's own mixture (rounding of 1/σ², 1e-8)."""
    lm = oracle()
    uncond = labelled.exact_denoiser_given(lm, lm.num_classes)
    log_p = guided.classifier_log_prob(labelled.exact_classifier(lm), 0, lm.num_classes)
    xt, lam = inputs(10, 2)
    with torch.no_grad():  # samplers run without a graph; the guidance takes its own gradient
        got = score_from(guided.classifier_guided(uncond, log_p, s), xt, lam)
    for b in range(10):
        noised = lm.noised(torch.sigmoid(lam[b]).item())
        row = xt[b : b + 1]
        want = noised.score(row) + s * noised.class_log_prob_grad(row, 0)
        torch.testing.assert_close(got[b : b + 1], want, rtol=1e-8, atol=1e-8)
        if s == 1.0:
            torch.testing.assert_close(
                got[b : b + 1], noised.score_given(row, 0), rtol=1e-8, atol=1e-8
            )


def test_a_chapter_8_sampler_takes_both_guidances_unchanged():
    """Ancestral sampling (50 steps, the same starting noise and generator seed) with classifier
    guidance at s = 1 and with CFG at w = 0 lands where the exact conditional denoiser does.

    CFG at w = 0 is the same computation (bit for bit). Classifier guidance reaches x̂_0 by
    another route, x̂_0 + σ²/√ᾱ ∇log p(y | x_t), whose rounding grows like 1/√ᾱ: on the log-SNR
    schedule from 13.3 to −5 (ᾱ_T = sigmoid(−5) ≈ 7e-3) that is ~1e-14 per step, 1e-9 allowed.
    (On the cosine grid ᾱ_T ≈ 4e-33 and the amplification is 1e16: no finite-precision route
    through the score survives there.) Most samples land in class 1: exact p(y = 1 | x) > 1/2.
    """
    lm = oracle()
    alpha_bar = get_schedule("linear_log_snr").alpha_bar_grid(50).double()
    cond, uncond = exact_pair(lm, 1)
    log_p = guided.classifier_log_prob(labelled.exact_classifier(lm), 1, lm.num_classes)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def run(denoiser):
        gen = torch.Generator().manual_seed(4)
        return ancestral_sample(
            denoiser, (64, 2), alpha_bar, x_T=x_T, generator=gen, dtype=torch.float64
        )

    want = run(cond)
    torch.testing.assert_close(
        run(guided.classifier_guided(uncond, log_p, 1.0)), want, atol=1e-9, rtol=0
    )
    torch.testing.assert_close(run(guided.classifier_free(cond, uncond, 0.0)), want, atol=0, rtol=0)
    assert (lm.class_log_probs(want)[:, 1].exp() > 0.5).double().mean() > 0.9


def test_label_dropout_rate_is_p_within_binomial_error():
    """200,000 labels, p = 0.2: the dropped fraction within 4.5 binomial SEs (±0.004, so a rate
    off by 5% of p fails) of p; the kept labels unchanged; p = 0 and p = 1 drop none and all; a
    seed fixes the draw."""
    y = torch.arange(200_000) % 3
    dropped = guided.drop_labels(y, 0.2, 3, generator=torch.Generator().manual_seed(0))
    null = dropped == guided.null_label(3)
    assert abs(null.double().mean().item() - 0.2) <= 4.5 * math.sqrt(0.2 * 0.8 / 200_000)
    assert torch.equal(dropped[~null], y[~null])
    again = guided.drop_labels(y, 0.2, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(dropped, again)
    assert torch.equal(guided.drop_labels(y, 0.0, 3), y)
    assert (guided.drop_labels(y, 1.0, 3) == 3).all()


def test_conditional_network_as_a_denoiser_and_its_cfg():
    """FromEps(Labelled(net, y)) reads back the network's ε exactly (eq-eps-to-x0), and CFG of two
    label bindings of one network is (1 + w) ε(x, y) − w ε(x, ∅) of its raw outputs (float32
    rounding amplified by 1/σ ≤ e², tolerance 1e-4)."""
    torch.manual_seed(0)
    net = guided.ConditionalMLP(dim=2, num_classes=3, hidden=32, depth=2)
    x = torch.randn(8, 2)
    lam = torch.linspace(-4, 4, 8)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    cond = FromEps(guided.Labelled(net, y))
    uncond = FromEps(guided.Labelled(net, guided.null_label(3)))
    with torch.no_grad():
        assert torch.equal(eps_from(cond, x, lam), net(x, lam, y))
        cfg = eps_from(guided.classifier_free(cond, uncond, 2.0), x, lam)
        want = 3.0 * net(x, lam, y) - 2.0 * net(x, lam, torch.full((8,), 3))
    torch.testing.assert_close(cfg, want, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_noise_aware_classifier_learns_the_exact_class_posterior():
    """Trained with classifier_loss at random λ (1,500 steps, ~8 s), its cross-entropy on fresh
    noisy data comes within 0.02 nats of the exact conditional entropy E[−log p(y | x_t)] ≈ 0.25
    (the Bayes floor; measured gap 0.003 with an SE of 0.001 on the paired differences of 8,000
    draws) and does not fall below it by more than 4.5 SEs (nothing beats the exact posterior)."""
    from diffusion_lessons.training.fit import fit

    lm = oracle()
    x0, y = lm.sample(20_000, generator=torch.Generator().manual_seed(0))
    net = guided.NoiseAwareClassifier(dim=2, num_classes=2, hidden=64, depth=2).double()

    def loss_fn(model, batch, gen):
        xb, yb = batch
        lam = torch.empty(xb.shape[0], dtype=xb.dtype).uniform_(-4, 5, generator=gen)
        eps = torch.randn(xb.shape, generator=gen, dtype=xb.dtype)
        return guided.classifier_loss(model, xb, yb, lam, eps)

    fit(net, loss_fn, (x0, y), steps=1500, batch_size=256, lr=3e-3, progress=False, device="cpu")
    xt0, yt = lm.sample(8_000, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    lam = torch.empty(8_000, dtype=torch.float64).uniform_(-4, 5, generator=g)
    a, s = torch.sigmoid(lam).sqrt()[:, None], torch.sigmoid(-lam).sqrt()[:, None]
    xt = a * xt0 + s * torch.randn(8_000, 2, generator=g, dtype=torch.float64)
    exact = -labelled.exact_classifier(lm)(xt, lam).gather(1, yt[:, None])[:, 0]
    with torch.no_grad():
        learned = -guided.classifier_log_prob(net, yt, 2)(xt, lam)
    gap = learned - exact
    se = gap.std().item() / math.sqrt(8_000)
    assert -4.5 * se <= gap.mean().item() <= 0.02, (gap.mean().item(), se)


def test_classifier_loss_of_the_exact_posterior_is_the_conditional_entropy():
    """Scoring by the exact log p(y | x_t) as logits, the cross-entropy is the conditional entropy;
    a network that outputs those logits gives classifier_loss equal to −mean log p(y | x_t) on the
    same x_t (rounding, 1e-10)."""
    lm = oracle()

    class Exact(torch.nn.Module):
        num_classes = 2

        def forward(self, x, c):
            return labelled.exact_classifier(lm)(x, c)

    x0, y = lm.sample(256, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(6)
    lam = torch.empty(256, dtype=torch.float64).uniform_(-4, 5, generator=g)
    eps = torch.randn(256, 2, generator=g, dtype=torch.float64)
    xt = torch.sigmoid(lam).sqrt()[:, None] * x0 + torch.sigmoid(-lam).sqrt()[:, None] * eps
    want = -labelled.exact_classifier(lm)(xt, lam).gather(1, y[:, None]).mean()
    got = guided.classifier_loss(Exact(), x0, y, lam, eps)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_bad_input_raises_naming_the_argument():
    lm = oracle()
    cond, uncond = exact_pair(lm, 0)
    log_p = guided.classifier_log_prob(labelled.exact_classifier(lm), 0, 2)
    with pytest.raises(ValueError, match="w must be a finite number"):
        guided.classifier_free(cond, uncond, math.nan)
    with pytest.raises(ValueError, match="s must be a finite number"):
        guided.classifier_guided(uncond, log_p, math.inf)
    with pytest.raises(ValueError, match="y holds unknown labels"):
        guided.classifier_log_prob(labelled.exact_classifier(lm), 2, 2)  # null has no p(y | x)
    xt, lam = inputs(4, 7)
    wrong = guided.classifier_log_prob(labelled.exact_classifier(lm), 0, 3)
    with pytest.raises(ValueError, match=r"classifier must return logits \(B, num_classes\)"):
        wrong(xt, lam)
    net = guided.ConditionalMLP(dim=2, num_classes=3)
    with pytest.raises(ValueError, match="y holds unknown labels"):
        guided.Labelled(net, 4)
    with pytest.raises(ValueError, match=r"c and y must have shape \(B,\)"):
        net(torch.zeros(4, 2), torch.zeros(4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"p must lie in \[0, 1\]"):
        guided.drop_labels(torch.zeros(4, dtype=torch.long), 1.5, 3)
    with pytest.raises(ValueError, match="y holds unknown labels"):
        guided.drop_labels(torch.full((4,), 3), 0.1, 3)
    with pytest.raises(ValueError, match="eps has shape"):
        guided.classifier_loss(
            guided.NoiseAwareClassifier(2, 2),
            torch.zeros(4, 2),
            torch.zeros(4).long(),
            torch.zeros(4),
            torch.zeros(4, 3),
        )
    bad = guided.classifier_free(cond, lambda x, lam: x[:, :1], 1.0)
    with pytest.raises(ValueError, match="uncond_denoiser must return"):
        bad(xt, lam)
