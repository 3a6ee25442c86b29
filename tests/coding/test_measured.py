"""The stored MNIST sweep of chapter 11: made with the shipped model, and one of its rows re-measured."""

import json

import numpy as np
import pytest

from diffusion_lessons.coding import bbans, commands, container, measured
from diffusion_lessons.coding.grids import LatentGrid
from diffusion_lessons.data import datasets

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sweep_is_of_the_shipped_model_and_every_file_round_tripped():
    sweep = measured.load_sweep()
    _, sha, _, _ = commands.load_model("mnist")
    assert sweep["checkpoint_sha256"] == sha  # a new shipped model needs a new sweep
    assert sweep["command"].startswith("python benchmarks/compression_sweep.py")
    assert [r["T"] for r in sweep["rows"]] == sorted(r["T"] for r in sweep["rows"])
    for r in sweep["rows"]:
        assert r["round_trip"]
        # file = initial bits + net, to the word
        assert r["file_bpd"] > r["net_bpd"] + r["initial_bpd"] - 1e-9
        assert r["leak_bound"] < 1e-4


def test_the_smallest_row_is_reproduced(data_root):
    """Re-run the T = 10 row on the same images: the coder is deterministic, so the file size is
    the stored one up to the last bits of the float64 model on another CPU (a few words at most)."""
    sweep = measured.load_sweep()
    row = sweep["rows"][0]
    den, sha, sched, _ = commands.load_model("mnist")
    test = datasets.load_images("mnist", "test", root=data_root, limit=sweep["n_images"])
    imgs = np.round((test.double().numpy() + 1) * 127.5).astype(np.uint8)
    code = bbans.ChainCode(
        tuple(sched.alpha_bar_grid(row["T"]).tolist()), LatentGrid(sweep["precision"])
    )
    data, _ = container.compress(den, imgs, code, model_sha256=sha, batch=len(imgs))
    header, words = container.read_header(data)
    net = 32 * (len(words) - header["initial_words"]) / imgs.size
    assert net == pytest.approx(row["net_bpd"], abs=32 * 4 / imgs.size)


def test_missing_sweep_names_the_file_and_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="compression_sweep.py"):
        measured.load_sweep(tmp_path / "none.json")
    (tmp_path / "s.json").write_text(json.dumps({"rows": []}))
    assert measured.load_sweep(tmp_path / "s.json") == {"rows": []}
