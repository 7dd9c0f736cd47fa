#!/usr/bin/env bash
# Everything measured on a lent GPU in one call: correctness checks, then the benchmarks; logs go to $OUT.
# Usage (from the repository root): bash bench/gpu_suite.sh [checks|knn|embed|pipeline|distill ...]
# Packages the machine lacks (kornia, efficientnet_pytorch) come as wheels in .whl/ (`make gpu-wheels`; carry .whl).
set -uo pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/nvidia-smi.txt"
python3 -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)'
for part in "${@:-checks knn embed pipeline distill}"; do
  for p in $part; do
    case $p in
      checks) python3 bench/gpu_checks.py 2>&1 | tee "$OUT/gpu_checks.log" ;;
      embed) python3 bench/embed.py --json "$OUT/embed.json" 2>&1 | tee "$OUT/embed.log" ;;
      knn) python3 bench/knn.py --json "$OUT/knn.json" 2>&1 | tee "$OUT/knn.log" ;;
      pipeline) python3 bench/data_pipeline.py --workers 1,4,16 --batches 10 --json "$OUT/pipeline.json" 2>&1 \
                  | tee "$OUT/pipeline.log" ;;
      distill) python3 bench/distill_step.py --rounds 2 --steps 8 --warmup 2 --json "$OUT/distill.json" 2>&1 | tee "$OUT/distill.log" ;;
    esac
  done
done
