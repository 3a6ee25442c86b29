import pytest
import torch

from diffusion_lessons.checks import (
    append_dims,
    as_coefficient,
    check_choice,
    check_positive_int,
    check_step,
    check_time,
    promote_coefficient,
    sum_except_batch,
)


def test_append_dims_broadcasts_per_example_coefficients():
    x = torch.randn(3, 2, 4, 5)
    coef = torch.tensor([1.0, 2.0, 3.0])
    out = append_dims(coef, x)
    assert out.shape == (3, 1, 1, 1)
    # multiplying scales example k by coef[k], which we check element by element (up to rounding:
    # a broadcast and a scalar product may run through different kernels)
    y = out * x
    for k in range(3):
        torch.testing.assert_close(y[k], coef[k] * x[k])


def test_append_dims_keeps_scalars_and_rejects_mismatch():
    x = torch.randn(4, 2)
    assert append_dims(torch.tensor(0.5), x).shape == ()
    with pytest.raises(ValueError, match=r"t has shape \(3,\) but x has shape \(4, 2\)"):
        append_dims(torch.ones(3), x)
    with pytest.raises(ValueError, match="alpha_bar"):
        append_dims(torch.ones(4, 1), x, name="alpha_bar")


def test_check_time_range_and_nan():
    # bitwise on purpose: check_time returns valid input unchanged, with no arithmetic
    assert torch.equal(check_time(torch.tensor([0.0, 1.0])), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"t must lie in \[0.0, 1.0\].*1.5"):
        check_time(torch.tensor([0.2, 1.5]))
    with pytest.raises(ValueError, match="NaN"):
        check_time(torch.tensor([float("nan")]))
    assert check_time(1).dtype == torch.get_default_dtype()


def test_check_step_and_choice_and_positive_int():
    assert check_step(torch.tensor([1, 5]), 5).dtype == torch.long
    with pytest.raises(ValueError, match=r"i must lie in 1..5"):
        check_step(torch.tensor([0]), 5)
    with pytest.raises(ValueError, match="integer steps"):
        check_step(torch.tensor([1.0]), 5)
    with pytest.raises(ValueError, match=r"unknown color 'red'; choose one of 'blue', 'green'"):
        check_choice("red", ("blue", "green"), name="color")
    with pytest.raises(ValueError, match="T must be an integer >= 1"):
        check_positive_int(0, name="T")
    with pytest.raises(ValueError):
        check_positive_int(True, name="T")


def test_coefficients_keep_every_digit():
    """A Python float is a double: as_coefficient keeps it float64 (torch.as_tensor would round)."""
    c = as_coefficient(0.1)
    assert c.dtype == torch.float64 and c.item() == 0.1  # the same double, exactly
    assert as_coefficient([1, 2]).dtype == torch.float64
    assert as_coefficient(torch.tensor([3])).dtype == torch.float64
    t32 = torch.tensor([0.1])
    assert as_coefficient(t32) is t32, "a floating tensor is passed through untouched"


def test_promote_coefficient_uses_the_wider_dtype():
    x32, x64 = torch.zeros(2), torch.zeros(2, dtype=torch.float64)
    c32 = torch.tensor(0.1)
    assert promote_coefficient(0.1, x32).dtype == torch.float64
    assert promote_coefficient(c32, x64).dtype == torch.float64
    assert promote_coefficient(c32, x32).dtype == torch.float32, "float32 with float32 stays"
    assert promote_coefficient(c32, x64).item() == c32.item(), "widening is exact"


def test_sum_except_batch_is_the_per_example_total():
    x = torch.arange(24.0).reshape(2, 3, 4)
    totals = sum_except_batch(x)
    assert totals.shape == (2,)
    assert totals.tolist() == [sum(range(12)), sum(range(12, 24))]  # small integers: exact
    assert sum_except_batch(torch.ones(5)).tolist() == [1.0] * 5  # (B,) stays (B,)
