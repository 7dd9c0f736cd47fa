#!/usr/bin/env bash
# k-NN classifier on ImageNet val: plain 10-NN vote and the weighted 200-NN vote (T = 0.07).
set -euo pipefail
DATA_DIR=${DATA_DIR:-/path/to/imagenet}
ARCH=${ARCH:-resnet18}
PRETRAINED=${PRETRAINED:-runs/SR18-TR50W2/final.pth}
OUTPUT_DIR=${OUTPUT_DIR:-$(dirname "$PRETRAINED")/knn}
NGPU=${NGPU:-$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')}

cd "$(dirname "$0")/../.."
torchrun --standalone --nproc_per_node="$NGPU" main_lincls.py --protocol=knn \
  --arch="$ARCH" --pretrained="$PRETRAINED" --data_dir="$DATA_DIR" --output_dir="$OUTPUT_DIR" \
  --knn_k=10,200 --knn_t=0.07 --batch_size=1024 --num_workers=10 "$@"
