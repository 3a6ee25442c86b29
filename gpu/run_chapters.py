"""Issue 11, item 5: run chapters top to bottom as scripts and record each one's time.

The device machine has no Jupyter, so ``gpu/prepare.sh`` turns every chapter into a plain
script here (jupytext's ``py:percent`` format, into ``.gpu/chapters/``). This runs them one at a
time, each in a fresh Python process started in ``notebooks/`` with ``DIFFUSION_LESSONS_SCALE``
set (``full`` by default: the chapters' GPU sizes) and matplotlib's non-interactive backend,
and writes ``--out``/chapters.json: per chapter its wall time, exit status and the last lines of
its printed output (the tables). At ``--deadline`` seconds a chapter still running is stopped (``"timeout"``) and no
other is started, so one device command never runs past its limit; the chapters not started
are listed as such, for the next command (``--only``). Rehearsal on a CPU::

    python gpu/run_chapters.py --scale small --only 03_forward_process --out /tmp/o
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from diffusion_lessons.cli import positive_float

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = REPO / ".gpu" / "chapters"
TAIL_LINES = 200


def run_one(script: Path, scale: str, timeout: float) -> dict:
    """Run one chapter script; its wall time, exit status and output tail."""
    # tqdm's bars off (TQDM_DISABLE): each redraw would be a line of the recorded output
    env = dict(
        os.environ,
        DIFFUSION_LESSONS_SCALE=scale,
        MPLBACKEND="Agg",
        PYTHONUNBUFFERED="1",
        TQDM_DISABLE="1",
    )
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=REPO / "notebooks",
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        rc, out = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        rc, out = "timeout", (err.stdout or b"").decode(errors="replace")
    return {
        "chapter": script.stem,
        "seconds": time.perf_counter() - start,
        "returncode": rc,
        "tail": out.splitlines()[-TAIL_LINES:],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the chapters; 0 if every chapter that ran exited cleanly, else 1."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True, help="folder for chapters.json")
    p.add_argument("--scale", choices=("small", "full"), default="full")
    p.add_argument("--only", nargs="+", default=None, help="chapter names (default: all)")
    p.add_argument("--chapters", default=str(CHAPTERS), help="folder of the chapter scripts")
    p.add_argument(
        "--deadline",
        type=positive_float,
        default=540.0,
        help="seconds after which no chapter is started (default 540)",
    )
    args = p.parse_args(argv)
    scripts = sorted(Path(args.chapters).glob("[0-9]*.py"))
    if not scripts:
        p.error(f"no chapter scripts in {args.chapters}: run gpu/prepare.sh first")
    if args.only:
        unknown = sorted(set(args.only) - {s.stem for s in scripts})
        if unknown:
            p.error(f"--only: unknown chapters {unknown}; choose from {[s.stem for s in scripts]}")
        scripts = [s for s in scripts if s.stem in args.only]
    start, rows = time.perf_counter(), []
    for script in scripts:
        left = args.deadline - (time.perf_counter() - start)
        if left <= 0:
            rows.append({"chapter": script.stem, "returncode": "not started"})
            continue
        rows.append(run_one(script, args.scale, timeout=left))
        r = rows[-1]
        print(f"{r['chapter']}: {r['seconds']:.1f} s, exit {r['returncode']}", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    record = {"scale": args.scale, "python": sys.version.split()[0], "chapters": rows}
    (Path(args.out) / "chapters.json").write_text(json.dumps(record, indent=1) + "\n")
    return 0 if all(r["returncode"] in (0, "not started") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
