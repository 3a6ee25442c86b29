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
