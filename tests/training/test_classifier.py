"""The noise-aware classifier's trainer, measurement and file (training.classifier)."""

import dataclasses

import pytest
import torch

from diffusion_lessons.data import datasets
from diffusion_lessons.nets import unet
from diffusion_lessons.training import classifier

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = unet.UNetConfig(
    image_size=8, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0
)


def test_it_learns_digits_at_low_noise_and_falls_to_chance_in_noise():
    """150 steps on the 8×8 digits: clean held-out digits far above chance (10 %), pure noise
    near it; the same seed gives the same losses."""
    x, y = datasets.load_digits("train")
    x_test, y_test = datasets.load_digits("test")
    run = classifier.train_classifier(CFG, 10, x, y, steps=150, batch_size=64, lr=3e-3)
    assert run.steps == 150 and len(run.losses) == 150 and not run.model.training
    acc = classifier.accuracy_by_level(run.model, x_test, y_test, (8.0, -9.0))
    assert acc[8.0].mean > 0.6, acc  # 359 test digits: SE about 2.5 %
    assert abs(acc[-9.0].mean - 0.1) < 4.5 * 0.016 + 0.02, acc  # chance, SE √(0.09/359)
    again = classifier.train_classifier(CFG, 10, x, y, steps=5, batch_size=64, lr=3e-3)
    assert again.losses == run.losses[:5]


def test_time_limit_ends_at_a_multiple_of_50_steps():
    x, y = datasets.load_digits("train")
    run = classifier.train_classifier(CFG, 10, x, y, steps=1000, batch_size=8, time_limit=1e-9)
    assert run.steps == 50


def test_save_and_read_round_trip_without_pickle(tmp_path):
    torch.manual_seed(0)
    model = unet.UNetClassifier(CFG, 10).eval()
    x, lam = torch.randn(3, 1, 8, 8), torch.zeros(3)
    path = classifier.save_classifier(model, tmp_path / "clf.safetensors", {"accuracy": 0.9})
    back, info = classifier.read_classifier(path)
    assert info == {"accuracy": 0.9} and back.num_classes == 10 and back.config == CFG
    with torch.no_grad():
        assert torch.equal(back(x, lam), model(x, lam))  # float32 weights, stored exactly
    half, _ = classifier.read_classifier(
        classifier.save_classifier(model, tmp_path / "half.safetensors", dtype="float16")
    )
    with torch.no_grad():  # weights rounded to float16: relative error 2^-11 per weight
        torch.testing.assert_close(half(x, lam), model(x, lam), rtol=2e-2, atol=2e-2)
    with pytest.raises(
        ValueError, match="unknown dtype 'bfloat16'; choose one of 'float32', 'float16'"
    ):
        classifier.save_classifier(model, tmp_path / "x.safetensors", dtype="bfloat16")


def test_refusals(tmp_path):
    from diffusion_lessons.training import checkpoints

    x, y = datasets.load_digits("train")
    other = checkpoints.write_safetensors({"w": torch.zeros(1)}, tmp_path / "o.safetensors", {})
    with pytest.raises(ValueError, match="is not a saved classifier"):
        classifier.read_classifier(other)
    with pytest.raises(ValueError, match=r"labels must have shape \(1438,\)"):
        classifier.train_classifier(CFG, 10, x, y[:5], steps=1)
    with pytest.raises(ValueError, match="labels holds unknown labels"):
        classifier.train_classifier(CFG, 5, x, y, steps=1)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        classifier.train_classifier(CFG, 10, x, y, steps=0)
    with pytest.raises(ValueError, match="a UNetClassifier takes no labels"):
        classifier.train_classifier(dataclasses.replace(CFG, num_classes=10), 10, x, y, steps=1)
