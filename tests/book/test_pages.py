import pytest
import torch

from diffusion_lessons.book import pages


def test_glue_returns_its_value():
    assert pages.glue("test_value", 3.5) == 3.5


@pytest.mark.parametrize(
    "value,expected", [("small", "small"), ("FULL", "full"), (" small ", "small")]
)
def test_scale_switch(monkeypatch, value, expected):
    monkeypatch.setenv(pages.SCALE_ENV, value)
    assert pages.scale() == expected


def test_scale_auto_follows_cuda(monkeypatch):
    monkeypatch.setenv(pages.SCALE_ENV, "auto")
    assert pages.scale() == ("full" if torch.cuda.is_available() else "small")


def test_scale_rejects_unknown_value(monkeypatch):
    monkeypatch.setenv(pages.SCALE_ENV, "huge")
    with pytest.raises(
        ValueError,
        match=r"unknown \$DIFFUSION_LESSONS_SCALE 'huge'; choose one of 'auto', 'small', 'full'",
    ):
        pages.scale()


def test_setup_cpu_uses_one_thread_without_cuda():
    before = torch.get_num_threads()
    try:
        pages.setup_cpu()
        assert torch.get_num_threads() == (before if torch.cuda.is_available() else 1)
    finally:
        torch.set_num_threads(before)


def test_sizes_picks_by_scale(monkeypatch):
    monkeypatch.setenv(pages.SCALE_ENV, "small")
    assert pages.sizes(small={"steps": 1}, full={"steps": 9}) == {"steps": 1}
    monkeypatch.setenv(pages.SCALE_ENV, "full")
    assert pages.sizes(small={"steps": 1}, full={"steps": 9}) == {"steps": 9}


def test_sizes_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="only in small \\['b'\\]"):
        pages.sizes(small={"a": 1, "b": 2}, full={"a": 3})
    with pytest.raises(TypeError, match="one type"):
        pages.sizes(small={"a": 1}, full=3)


def test_show_source_is_the_function_source_as_markdown():
    shown = pages.show_source(pages.sizes)
    text = getattr(shown, "data", shown)
    assert text.startswith("```python\ndef sizes(")
    assert text.endswith("```")
    assert "return full if scale() == " in text


def test_numpy_scalars_are_glued_as_python_numbers(monkeypatch):
    """MyST-NB formats a glued number from its repr; NumPy 2's is np.float64(…), which breaks it."""
    import sys
    import types

    import numpy as np

    seen = {}
    fake = types.ModuleType("myst_nb")
    fake.glue = lambda name, value, display: seen.__setitem__(name, value)
    monkeypatch.setitem(sys.modules, "myst_nb", fake)
    assert pages.glue("x", np.float64(0.25)) == 0.25
    assert type(seen["x"]) is float and repr(seen["x"]) == "0.25"
    pages.glue("k", np.int64(3))
    assert type(seen["k"]) is int
    pages.glue("t", torch.tensor(1.0))  # anything else is passed through
    assert isinstance(seen["t"], torch.Tensor)
