#!/usr/bin/env bash
# Issue 11: build .gpu/ (git-ignored), everything a bare device machine lacks, for `carry`:
#   .gpu/wheels/    the packages of gpu/wheels.txt, which the chapters import and the device image
#                   lacks (IPython, ipywidgets and what they need; constriction for chapter 11),
#                   at the lock's versions, for CPython 3.12 on x86-64 Linux;
#   .gpu/data/      mnist.npz (../shared does not travel);
#   .gpu/chapters/  every chapter as a plain script (jupytext py:percent), for gpu/run_chapters.py.
# Run here, from the repository root, after `make venv`:  bash gpu/prepare.sh
# Then each device command is one line of gpu/README.md, with carry [".gpu"].
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
DATA=${DIFFUSION_LESSONS_DATA:-../shared/data}
rm -rf .gpu
mkdir -p .gpu/wheels .gpu/data .gpu/chapters

# The library itself travels as src/ in the working tree (gpu/device.sh puts it on PYTHONPATH),
# so pretrained.checkout_dir() finds checkpoints/ beside it.
# Versions are those of requirements.txt (the lock), so the device runs what CI tests.
"$BIN/python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .gpu/wheels \
  -r <(grep -E "^($(paste -sd'|' gpu/wheels.txt))==" requirements.txt | cut -d' ' -f1)

cp "$DATA/mnist.npz" .gpu/data/
for md in notebooks/[0-9]*.md; do
  "$BIN/jupytext" -q --to py:percent -o ".gpu/chapters/$(basename "${md%.md}").py" "$md"
done
du -sh .gpu
ls .gpu/wheels
