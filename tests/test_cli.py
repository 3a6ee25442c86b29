"""The command line as a reader meets it: `diffusion-lessons --help` names the program, a user's
mistake is one line on stderr and exit status 2, a bug keeps its traceback. Each mistake is checked
through the installed console script (a subprocess) and through ``cli.main(argv)``."""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from diffusion_lessons import cli
from diffusion_lessons.training import engine, optimization

SCRIPT = Path(sys.executable).with_name("diffusion-lessons")
TINY = ["--config", "tiny", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished 2-step run of the ``tiny`` preset (8×8 digits, no download)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert cli.main(["train", *TINY, "--steps", "2", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def truncated(run_dir, tmp_path_factory):
    """The run's checkpoint cut to half its bytes."""
    path = tmp_path_factory.mktemp("cut") / "checkpoint.safetensors"
    raw = (run_dir / optimization.CHECKPOINT_NAME).read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def mistakes(run_dir, truncated, tmp):
    """(argv, words the one error line must contain) for each user mistake of the issue."""
    missing = tmp / "nowhere" / "checkpoint.safetensors"
    resume_dir = tmp / "resume"
    resume_dir.mkdir(exist_ok=True)
    shutil.copy(truncated, resume_dir / optimization.CHECKPOINT_NAME)
    return {
        "existing run folder": (
            ["train", *TINY, "--out", str(run_dir)],
            [str(run_dir / optimization.CHECKPOINT_NAME), "exists", "--resume"],
        ),
        "truncated checkpoint (eval)": (
            ["eval", "--checkpoint", str(truncated)],
            [str(truncated)],
        ),
        "truncated checkpoint (resume)": (
            ["train", *TINY, "--out", str(resume_dir), "--resume"],
            [str(resume_dir / optimization.CHECKPOINT_NAME)],
        ),
        "missing file": (["eval", "--checkpoint", str(missing)], [str(missing)]),
        "negative batch size": (
            ["train", *TINY, "--out", str(tmp / "new"), "--batch-size", "-3"],
            ["--batch-size", "positive integer", "'-3'"],
        ),
        "zero steps": (
            ["train", *TINY, "--out", str(tmp / "new"), "--steps", "0"],
            ["--steps", "positive integer", "'0'"],
        ),
        "eval with --n 1.5": (
            ["eval", "--checkpoint", str(truncated), "--n", "1.5"],
            ["--n", "positive integer", "'1.5'"],
        ),
    }


CASES = [
    "existing run folder",
    "truncated checkpoint (eval)",
    "truncated checkpoint (resume)",
    "missing file",
    "negative batch size",
    "zero steps",
    "eval with --n 1.5",
]


def check_one_line(stderr: str, words: list[str]) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("diffusion-lessons: error: "), lines[0]
    for word in words:
        assert word in lines[0], f"{word!r} is not in {lines[0]!r}"
    assert "Traceback" not in stderr


@pytest.mark.parametrize("case", CASES)
def test_mistake_in_process(case, run_dir, truncated, tmp_path, capsys):
    argv, words = mistakes(run_dir, truncated, tmp_path)[case]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    check_one_line(captured.err, words)
    assert captured.out == ""


@pytest.mark.skipif(not SCRIPT.exists(), reason="the console script is not installed")
@pytest.mark.parametrize("case", CASES)
def test_mistake_from_the_console_script(case, run_dir, truncated, tmp_path):
    argv, words = mistakes(run_dir, truncated, tmp_path)[case]
    done = subprocess.run([str(SCRIPT), *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    check_one_line(done.stderr, words)


def test_existing_run_folder_is_left_untouched(run_dir, capsys):
    before = (run_dir / optimization.CHECKPOINT_NAME).read_bytes()
    with pytest.raises(SystemExit):
        cli.main(["train", *TINY, "--out", str(run_dir)])
    assert (run_dir / optimization.CHECKPOINT_NAME).read_bytes() == before


def test_traceback_flag_shows_the_exception(truncated):
    with pytest.raises(ValueError, match="checkpoint"):
        cli.main(["--traceback", "eval", "--checkpoint", str(truncated)])


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise KeyError("a bug, not a user's mistake")

    monkeypatch.setattr(engine, "train", broken)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["train", *TINY, "--out", str(tmp_path / "run")])


@pytest.mark.skipif(not SCRIPT.exists(), reason="the console script is not installed")
def test_help_names_the_program():
    done = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.startswith("usage: diffusion-lessons ")
    assert "python -m" not in done.stdout.splitlines()[0]
    for command in ("train", "eval", "export"):
        assert command in done.stdout


def test_help_of_a_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: diffusion-lessons eval ")


def test_every_subcommand_dispatches_through_set_defaults():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, subparser in sub.choices.items():
        assert callable(subparser.get_default("func")), name


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        (cli.positive_int, {"1": 1, "64": 64, "+3": 3}, ["0", "-3", "1.5", "abc", ""]),
        (cli.non_negative_int, {"0": 0, "7": 7}, ["-1", "2.0", "x"]),
        (cli.positive_float, {"2e-4": 2e-4, "1": 1.0}, ["0", "-1e-3", "nan", "inf", "x"]),
    ],
)
def test_argument_types(kind, good, bad):
    for text, value in good.items():
        assert kind(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=repr(text)):
            kind(text)
