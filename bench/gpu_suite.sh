#!/usr/bin/env bash
# Everything measured on a GPU: correctness checks, then the benchmarks; logs go to $OUT.
# Usage (from the repository root):
#   bash bench/gpu_suite.sh [checks|knn|embed|pipeline|distill|loop|rates|teacher|demo|bags ...]
# `teacher` trains the gpu configuration's teacher alone for TEACHER_EPOCHS (50), its k-NN monitor every 5 epochs, and
# scores it, within DEMO_SECONDS. No floors: the monitor's first point is the untrained network on the same memory and
# queries; raw pixels and the untrained networks on the same scoring, computed on the CPU, are in docs/demo.md
# (pixels 84.7 10-NN / 83.7 linear, the untrained ResNet-50 82.0 / 85.2).
# Packages the machine lacks (kornia, efficientnet_pytorch) come as wheels in .whl/ (`make gpu-wheels`; carry .whl).
# `demo` runs the demo's GPU configuration (resumable on the same machine: run it again until it prints its table; a
# fresh machine starts without runs/), `bags` the GPU bagging ablation (it shares demo's floors and teacher);
# FMNIST_DIR names a folder with the four Fashion-MNIST .gz files where Debian's package is not installed;
# DEMO_SECONDS (540) stops either after 9 minutes (the running stage stops too, keeping its checkpoint); then the
# report of what finished is written, and each finished stage's logged rate is set against its compute-only step
# (demo_rates --from_run). demo.log keeps every stage's output.
# `rates` measures the GPU configuration's stages (2 epochs each) against their compute-only steps, with the views
# step as written and compiled (--compile_views).
# Every command below is parsed by its program on the CPU by tests/test_bench.py (a misspelt flag stops the test, not a
# lent GPU session); what the commands do on a GPU is not tested there.
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
      checks) python3 -m bench.gpu_checks 2>&1 | tee "$OUT/gpu_checks.log" ;;
      embed) python3 -m bench.embed --json "$OUT/embed.json" 2>&1 | tee "$OUT/embed.log" ;;
      knn) python3 -m bench.knn --json "$OUT/knn.json" 2>&1 | tee "$OUT/knn.log" ;;
      pipeline) python3 -m bench.data_pipeline --workers 1,4,16 --batches 10 --json "$OUT/pipeline.json" 2>&1 \
                  | tee "$OUT/pipeline.log" ;;
      demo|bags) config=$([ "$p" = demo ] && echo gpu || echo gpu-bags)
            # stopped or failed: the report of what finished
            timeout -k 150 "${DEMO_SECONDS:-540}" python3 -m scripts.demo --config "$config" --device cuda \
              ${FMNIST_DIR:+--fmnist_dir "$FMNIST_DIR"} 2>&1 | tee -a "$OUT/$p.log" \
              || python3 -m scripts.demo --config "$config" --report_only 2>&1 | tee -a "$OUT/$p.log"
            # the report first: if the call's time runs out in the rates, what finished has come back already
            mkdir -p "$OUT/$config"
            cp runs/demo-$config/results.* runs/demo-$config/*.png runs/demo-$config/stage_times.json "$OUT/$config/" \
              2>/dev/null
            python3 -m bench.demo_rates --config "$config" --device cuda --from_run "runs/demo-$config" \
              ${FMNIST_DIR:+--fmnist_dir "$FMNIST_DIR"} --json "$OUT/$config-rates.json" 2>&1 | tee -a "$OUT/$p.log" ;;
      teacher) epochs=${TEACHER_EPOCHS:-50}
            timeout -k 150 "${DEMO_SECONDS:-540}" python3 -m scripts.demo --config gpu --device cuda \
              --teacher_epochs "$epochs" --skip_floors --stop_after teacher \
              ${FMNIST_DIR:+--fmnist_dir "$FMNIST_DIR"} 2>&1 | tee -a "$OUT/teacher.log" \
              || python3 -m scripts.demo --config gpu --teacher_epochs "$epochs" --report_only 2>&1 \
                   | tee -a "$OUT/teacher.log"
            cp "runs/demo-gpu-teacher$epochs/teacher/metrics.jsonl" "$OUT/teacher-metrics.jsonl" 2>/dev/null
            cp "runs/demo-gpu-teacher$epochs/results.json" "$OUT/teacher-results.json" 2>/dev/null ;;
      rates) python3 -m bench.demo_rates --config gpu --device cuda --inputs memory,compiled --epochs 2 --steps 10 \
               ${FMNIST_DIR:+--fmnist_dir "$FMNIST_DIR"} --json "$OUT/demo_rates.json" 2>&1 | tee "$OUT/rates.log" ;;
      loop) python3 -m bench.loop_rates --json "$OUT/loop.json" 2>&1 | tee "$OUT/loop.log" ;;
      # the goal's pair and batch (R18 <- R50, 128 per GPU); the compiled rows compile for a minute or two each
      distill) python3 -m bench.distill_step --pairs resnet18:resnet50 --batches 128 --rounds 2 --steps 8 --warmup 3 \
                 --json "$OUT/distill.json" 2>&1 | tee "$OUT/distill.log" ;;
    esac
  done
done
