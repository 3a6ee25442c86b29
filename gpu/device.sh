#!/usr/bin/env bash
# Issue 11: the one entry point of every device command (gpu/README.md gives the calls).
#   bash gpu/device.sh bench                      # item 1: benchmarks/bench_train.py
#   bash gpu/device.sh likelihood ARGS...         # item 2: gpu/mnist_likelihood.py ARGS
#   bash gpu/device.sh guidance ARGS...           # item 3: gpu/mnist_guidance.py ARGS
#   bash gpu/device.sh chapters ARGS...           # item 5: gpu/run_chapters.py ARGS
# It installs .gpu/wheels (gpu/prepare.sh, carried) into /tmp/site, puts src/ and that on the
# path, points the data at .gpu/data, records the GPU in $OUT/gpu.txt, and runs the item with
# its output teed into $OUT/log.txt (which comes back even when the command is cut off).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?OUT must name the folder whose files come back}
[ -d .gpu/wheels ] || { echo "no .gpu/wheels: run gpu/prepare.sh here and carry .gpu"; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .gpu/wheels/*.whl
export PYTHONPATH="$PWD/src:/tmp/site" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export DIFFUSION_LESSONS_DATA="$PWD/.gpu/data"
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
  python3 -c "import torch; c = torch.cuda.is_available()
print('torch', torch.__version__, torch.cuda.get_device_name() if c else 'sees no CUDA device')"
} > "$OUT/gpu.txt" 2>&1
item=${1:?which item: bench, likelihood, guidance or chapters}
shift
case "$item" in
  bench) python3 benchmarks/bench_train.py --json "$OUT/bench_train.json" "$@" ;;
  likelihood) python3 gpu/mnist_likelihood.py "$@" ;;
  guidance) python3 gpu/mnist_guidance.py "$@" ;;
  chapters) python3 gpu/run_chapters.py --out "$OUT" "$@" ;;
  *) echo "unknown item $item: bench, likelihood, guidance or chapters"; exit 2 ;;
esac 2>&1 | tee "$OUT/log.txt"
