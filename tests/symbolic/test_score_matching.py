"""The sympy derivation that the three score-matching objectives differ by constants (chapter 8),
checked symbolically and against plain arithmetic."""

import math

import pytest
import sympy as sp

from diffusion_lessons.symbolic import score_matching


@pytest.fixture(scope="module")
def out():
    return score_matching.dsm_minus_esm()


def test_dsm_minus_esm_is_vincents_constant(out):
    """J_DSM − J_ESM = ½ (1/σ² − 1/(a²τ² + σ²)), free of the model's m and v (Vincent 2011)."""
    s = out["symbols"]
    var_t = s["a"] ** 2 * s["tau"] ** 2 + s["sigma"] ** 2
    expected = sp.Rational(1, 2) * (1 / s["sigma"] ** 2 - 1 / var_t)
    assert sp.simplify(out["dsm_minus_esm"] - expected) == 0
    assert not out["dsm_minus_esm"].has(s["m"], s["v"])


def test_esm_minus_ism_is_hyvarinens_constant(out):
    """J_ESM − J_ISM = ½ E[(∂_x log q_t)²] = ½ / (a²τ² + σ²), free of m and v (Hyvärinen 2005)."""
    s = out["symbols"]
    var_t = s["a"] ** 2 * s["tau"] ** 2 + s["sigma"] ** 2
    assert sp.simplify(out["esm_minus_ism"] - 1 / (2 * var_t)) == 0
    assert not out["esm_minus_ism"].has(s["m"], s["v"])


def test_esm_in_closed_form_by_plain_arithmetic(out):
    """J_ESM of N(m, v) against q_t = N(a μ, w) is ½ [w (1/v − 1/w)² + (a μ − m)²/v²], written by
    hand; it vanishes when the model is the truth (m = a μ, v = w)."""
    s = out["symbols"]
    vals = {s["m"]: 0.3, s["v"]: 0.7, s["mu"]: -0.4, s["tau"]: 0.8, s["a"]: 0.9, s["sigma"]: 0.5}
    w = 0.9**2 * 0.8**2 + 0.5**2
    by_hand = 0.5 * (w * (1 / 0.7 - 1 / w) ** 2 + (0.9 * -0.4 - 0.3) ** 2 / 0.7**2)
    assert math.isclose(float(out["esm"].subs(vals)), by_hand, rel_tol=1e-12)
    truth = {**vals, s["m"]: 0.9 * -0.4, s["v"]: w}
    assert abs(float(out["esm"].subs(truth))) < 1e-12


def test_moments_of_the_standard_normal():
    assert [score_matching._standard_normal_moment(k) for k in range(7)] == [1, 0, 1, 0, 3, 0, 15]
