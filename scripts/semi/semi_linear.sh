#!/usr/bin/env bash
# DisCo's semi-supervised protocol, for its numbers' row of the paper's semi-supervised table: a linear layer on the
# frozen student, trained on a FRACTION of the ImageNet labels (0.01 or 0.1). DisCo-pytorch @1d732c8,
# DisCo/main_lincls_semi.py: only fc trains (L168-171, L247-248), BatchNorm in eval mode (L371), SGD momentum 0.9
# (L60), weight decay 0 (L62), batch 256 (L50), 100 epochs (L46), lr x0.5 at epochs 60 and 80 (L58, L524-528);
# lr 3.0 (Reproduction.md L126, L131).
# LABEL_FILE: SimCLR's 1percent.txt / 10percent.txt (DisCo copies that split); without it a class-balanced FRACTION
# is drawn. The fine-tuning protocol of BINGO's numbers: semi_1pct.sh, semi_10pct.sh.
set -euo pipefail
DATA_DIR=${DATA_DIR:-/path/to/imagenet}
ARCH=${ARCH:-resnet18}
PRETRAINED=${PRETRAINED:-runs/SR18-TR50W2/final.pth}
FRACTION=${FRACTION:-0.01}
LABEL_FILE=${LABEL_FILE:-}
OUTPUT_DIR=${OUTPUT_DIR:-$(dirname "$PRETRAINED")/semi_linear_${FRACTION}}
NGPU=${NGPU:-$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')}
SUBSET=(--label_fraction="$FRACTION")
[ -n "$LABEL_FILE" ] && SUBSET=(--label_file="$LABEL_FILE")

cd "$(dirname "$0")/../.."
torchrun --standalone --nproc_per_node="$NGPU" main_lincls.py --protocol=semi_linear "${SUBSET[@]}" \
  --arch="$ARCH" --pretrained="$PRETRAINED" --data_dir="$DATA_DIR" --output_dir="$OUTPUT_DIR" \
  --init_lr=3.0 --decay_method=step --schedule=60,80 --lr_decay=0.5 --end_epoch=100 --wd=0 --momentum=0.9 \
  --batch_size=256 --num_workers=10 --resume=auto "$@"
