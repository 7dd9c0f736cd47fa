#!/usr/bin/env bash
# Linear evaluation as the official Eff.sh: cosine from 3 to 0.001 over 120 epochs, global batch 256, wd 0.
set -euo pipefail
DATA_DIR=${DATA_DIR:-/path/to/imagenet}
PRETRAINED=${PRETRAINED:-runs/SR18-TR50W2/final.pth}   # any supported checkpoint of the student
OUTPUT_DIR=${OUTPUT_DIR:-$(dirname "$PRETRAINED")/lincls}
NGPU=${NGPU:-$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')}

cd "$(dirname "$0")/../.."
torchrun --standalone --nproc_per_node="$NGPU" main_lincls.py \
  --arch=efficientnet-b0 --pretrained="$PRETRAINED" --data_dir="$DATA_DIR" --output_dir="$OUTPUT_DIR" \
  --init_lr=3 --min_lr=0.001 --decay_method=cos --end_epoch=120 --batch_size=256 --wd=0 --num_workers=10 \
  --resume=auto "$@"
