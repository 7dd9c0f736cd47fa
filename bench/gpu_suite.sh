#!/usr/bin/env bash
# Everything measured on a lent GPU in one call: correctness checks, then the benchmarks; logs go to $OUT.
# Usage (from the repository root): bash bench/gpu_suite.sh [checks|knn|pipeline|distill ...]
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$PWD/.whl/site${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/nvidia-smi.txt"
python3 -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)'
for part in "${@:-checks knn pipeline distill}"; do
  for p in $part; do
    case $p in
      checks) python3 bench/gpu_checks.py 2>&1 | tee "$OUT/gpu_checks.log" ;;
      knn) python3 bench/knn.py --json "$OUT/knn.json" 2>&1 | tee "$OUT/knn.log" ;;
      pipeline) python3 bench/data_pipeline.py --json "$OUT/pipeline.json" 2>&1 | tee "$OUT/pipeline.log" ;;
      distill) python3 bench/distill_step.py --rounds 2 --steps 8 --warmup 2 --json "$OUT/distill.json" 2>&1 | tee "$OUT/distill.log" ;;
    esac
  done
done
