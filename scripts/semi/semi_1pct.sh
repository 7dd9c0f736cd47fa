#!/usr/bin/env bash
# Semi-supervised fine-tuning of the whole student on 1 % of the ImageNet labels (README: recipe).
# LABEL_FILE: SimCLR's 1percent.txt (one image file name a line); without it a class-balanced 1 % is drawn.
set -euo pipefail
DATA_DIR=${DATA_DIR:-/path/to/imagenet}
ARCH=${ARCH:-resnet18}
PRETRAINED=${PRETRAINED:-runs/SR18-TR50W2/final.pth}
LABEL_FILE=${LABEL_FILE:-}
OUTPUT_DIR=${OUTPUT_DIR:-$(dirname "$PRETRAINED")/semi_1pct}
NGPU=${NGPU:-$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')}
SUBSET=(--label_fraction=0.01)
[ -n "$LABEL_FILE" ] && SUBSET=(--label_file="$LABEL_FILE")

cd "$(dirname "$0")/../.."
torchrun --standalone --nproc_per_node="$NGPU" main_lincls.py --protocol=semi "${SUBSET[@]}" \
  --arch="$ARCH" --pretrained="$PRETRAINED" --data_dir="$DATA_DIR" --output_dir="$OUTPUT_DIR" \
  --init_lr=0.05 --min_lr=0 --decay_method=cos --end_epoch=60 --wd=0 --batch_size=256 --num_workers=10 \
  --resume=auto "$@"
