"""The labelled Gaussian mixture of guidance/labelled.py, each exact quantity against a second,
independent route: Bayes' rule between two ways of computing the class posterior, autograd and
finite differences for its closed-form gradient, eq-score-eps per class for the conditional
denoiser, the class's own mixture density for the tilted density at γ = 1.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_lessons.data.toy import GaussianMixture
from diffusion_lessons.denoisers.denoiser import score_from
from diffusion_lessons.guidance import labelled

pytestmark = pytest.mark.usefixtures("one_thread")


def oracle() -> labelled.LabelledMixture:
    """Three classes over five anisotropic components in 2-D (class 1 has two, class 2 two)."""
    means = torch.tensor([[-2.0, 0.0], [1.5, 1.0], [2.0, -1.5], [0.0, 2.0], [-1.0, -2.0]])
    rot = torch.tensor([[0.3, 0.1], [0.1, 0.2]], dtype=torch.float64)
    covs = torch.stack([rot * (1 + 0.3 * k) for k in range(5)])
    weights = torch.tensor([0.3, 0.2, 0.15, 0.2, 0.15], dtype=torch.float64)
    return labelled.LabelledMixture(
        GaussianMixture(weights, means, covs), torch.tensor([0, 1, 1, 2, 2])
    )


def points(n: int, seed: int) -> torch.Tensor:
    return 2.0 * torch.randn(
        n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


LEVELS = [0.999, 0.5, 0.05]  # ᾱ: nearly clean, half noise, nearly pure noise


@pytest.mark.parametrize("alpha_bar", LEVELS)
def test_class_posterior_sums_to_one_and_is_bayes_rule(alpha_bar):
    """p(y | x_t) = p(x_t | y) p(y) / p(x_t), with p(x_t | y) from the class's own mixture and
    p(y | x_t) from masked component log-densities: two routes, agreeing to rounding (1e-10)."""
    lm = oracle().noised(alpha_bar)
    x = points(64, 0)
    log_post = lm.class_log_probs(x)
    torch.testing.assert_close(log_post.exp().sum(1), torch.ones(64, dtype=torch.float64))
    for c in range(lm.num_classes):
        bayes = lm.log_prob_given(x, c) + lm.class_prior()[c].log() - lm.log_prob(x)
        torch.testing.assert_close(log_post[:, c], bayes, rtol=0, atol=1e-10)


@pytest.mark.parametrize("alpha_bar", LEVELS)
def test_class_log_prob_grad_matches_autograd_and_finite_differences(alpha_bar):
    """The closed form Σ_k [p(k | x, y) − p(k | x)] Σ_k⁻¹ (μ_k − x) against autograd of
    log p(y | x) (rounding, 1e-10) and central differences with h = 1e-5 (error O(h²) ≈ 1e-9
    times third derivatives of order one; tolerance 1e-6)."""
    lm = oracle().noised(alpha_bar)
    x = points(32, 1)
    y = torch.arange(32) % 3
    closed = lm.class_log_prob_grad(x, y)
    xg = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(lm.class_log_probs(xg).gather(1, y[:, None]).sum(), xg)
    torch.testing.assert_close(closed, auto, rtol=0, atol=1e-10)
    h = 1e-5
    for d in range(2):
        step = torch.zeros(2, dtype=torch.float64)
        step[d] = h
        up = lm.class_log_probs(x + step).gather(1, y[:, None])[:, 0]
        down = lm.class_log_probs(x - step).gather(1, y[:, None])[:, 0]
        torch.testing.assert_close(closed[:, d], (up - down) / (2 * h), rtol=0, atol=1e-6)


def test_conditional_score_is_the_score_plus_the_classifier_gradient():
    """Bayes: ∇log p(x_t | y) = ∇log p(x_t) + ∇log p(y | x_t), the first from the class's own
    mixture, the other two from the whole mixture (to rounding, 1e-9)."""
    lm = oracle().noised(0.4)
    x = points(48, 2)
    y = torch.arange(48) % 3
    torch.testing.assert_close(
        lm.score_given(x, y), lm.score(x) + lm.class_log_prob_grad(x, y), rtol=0, atol=1e-9
    )


def test_exact_conditional_denoiser_has_the_conditional_score():
    """eq-score-eps per class: (√ᾱ E[x_0 | x_t, y] − x_t)/σ² = ∇log p(x_t | y), one λ per row;
    the null label C gives the unconditional score."""
    lm = oracle()
    g = torch.Generator().manual_seed(3)
    lam = torch.empty(30, dtype=torch.float64).uniform_(-4, 6, generator=g)
    xt = points(30, 4)
    y = torch.tensor([0, 1, 2, 3] * 7 + [3, 0])  # 3 is the null label
    got = score_from(labelled.exact_denoiser_given(lm, y), xt, lam)
    for b in range(30):
        noised = lm.noised(torch.sigmoid(lam[b]).item())
        row = xt[b : b + 1]
        want = noised.score(row) if y[b] == 3 else noised.score_given(row, int(y[b]))
        torch.testing.assert_close(got[b : b + 1], want, rtol=1e-8, atol=1e-8)


def test_exact_classifier_is_the_class_posterior_of_each_rows_noise_level():
    """Rows at different λ (some repeated) get log p(y | x_t) of their own noised mixture."""
    lm = oracle()
    lam = torch.tensor([2.0, -1.0, 2.0, 0.5, -1.0], dtype=torch.float64)
    xt = points(5, 5)
    got = labelled.exact_classifier(lm)(xt, lam)
    for b in range(5):
        want = lm.noised(torch.sigmoid(lam[b]).item()).class_log_probs(xt[b : b + 1])
        torch.testing.assert_close(got[b : b + 1], want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 3.0])
def test_tilted_density_integrates_to_one_and_is_the_class_density_at_gamma_one(gamma):
    """The grid density sums to 1 over the grid; at γ = 1 it is p(x | y) and at γ = 0 it is p(x),
    computed pointwise from the mixtures. The box [−6, 6]² holds all but ~1e-15 of the mass, and
    the midpoint rule on a smooth, rapidly decaying density converges faster than any power of
    the cell size (it is the trapezoid rule's twin), so Z is 1 to ~1e-9 on a 241² grid:
    tolerance 1e-6 of the peak."""
    lm = oracle()
    grid = labelled.tilted_density_on_grid(lm, 1, gamma, low=-6.0, high=6.0, n=241)
    assert abs(grid.density.sum().item() * grid.cell_volume - 1) < 1e-12
    if gamma == 1.0:
        want = lm.log_prob_given(grid.points, 1).exp()
    elif gamma == 0.0:
        want = lm.log_prob(grid.points).exp()
    else:  # γ > 1 shifts mass towards class 1: its probability under the tilt grows
        p_y = lm.class_log_probs(grid.points)[:, 1].exp()
        untilted = (lm.log_prob_given(grid.points, 1).exp() * p_y).sum() * grid.cell_volume
        tilted = (grid.density * p_y).sum() * grid.cell_volume
        assert tilted > untilted
        return
    assert (grid.density - want).abs().max() < 1e-6 * want.max()


def test_tilted_score_is_the_gradient_of_the_tilted_log_density():
    """γ ∇log p(x | y) + (1 − γ) ∇log p(x) against autograd of γ log p(x | y) + (1 − γ) log p(x)."""
    lm = oracle().noised(0.7)
    x = points(20, 6).requires_grad_(True)
    (auto,) = torch.autograd.grad(lm.tilted_log_prob(x, 2, 2.5).sum(), x)
    torch.testing.assert_close(lm.tilted_score(x.detach(), 2, 2.5), auto, rtol=0, atol=1e-9)


def test_samples_follow_the_class_prior():
    """Class frequencies of 20,000 draws within 4.5 binomial SEs of p(y); each class's points
    have its mixture's mean within 4.5 SEs per coordinate."""
    lm = oracle()
    x, y = lm.sample(20_000, generator=torch.Generator().manual_seed(7))
    prior = lm.class_prior()
    for c in range(3):
        freq = (y == c).double().mean()
        assert abs(freq - prior[c]) <= 4.5 * math.sqrt(prior[c] * (1 - prior[c]) / 20_000)
        rows = x[y == c]
        se = rows.std(0) / math.sqrt(rows.shape[0])
        assert ((rows.mean(0) - lm.class_mixture(c).mean()).abs() <= 4.5 * se).all()


def test_bad_input_raises_naming_the_argument():
    lm = oracle()
    x = points(4, 8)
    with pytest.raises(ValueError, match="y holds unknown labels"):
        lm.score_given(x, 3)  # the null label has no class density
    with pytest.raises(ValueError, match="y holds unknown labels"):
        labelled.exact_denoiser_given(lm, 4)
    with pytest.raises(ValueError, match="y must hold integer"):
        lm.log_prob_given(x, torch.zeros(4))
    with pytest.raises(ValueError, match=r"y must be one label or have shape \(N,\)"):
        lm.log_prob_given(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="gamma must be a finite number"):
        lm.tilted_score(x, 0, math.inf)
    with pytest.raises(ValueError, match="labels must use every class"):
        labelled.LabelledMixture(lm.mixture, torch.tensor([0, 2, 2, 3, 3]))
    with pytest.raises(ValueError, match="labels must hold one integer class per component"):
        labelled.LabelledMixture(lm.mixture, torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 2\)"):
        lm.class_log_prob_grad(torch.zeros(4, 3), 0)


def test_draws_from_the_grid_have_the_class_moments():
    """sample_from_grid at γ = 1: 20,000 draws with the mean of p(x | y) within 4.5 SEs per
    coordinate (the jitter within a 0.05-wide cell moves the variance by h²/12 ≈ 2e-4 only)."""
    lm = oracle()
    grid = labelled.tilted_density_on_grid(lm, 2, 1.0, low=-6.0, high=6.0, n=241)
    x = labelled.sample_from_grid(grid, 20_000, generator=torch.Generator().manual_seed(9))
    se = x.std(0) / math.sqrt(20_000)
    assert ((x.mean(0) - lm.class_mixture(2).mean()).abs() <= 4.5 * se).all()
    torch.testing.assert_close(torch.cov(x.T), lm.class_mixture(2).covariance(), atol=0.03, rtol=0)
