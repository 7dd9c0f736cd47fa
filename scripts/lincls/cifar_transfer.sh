#!/usr/bin/env bash
# Linear transfer to CIFAR-10 / CIFAR-100, SEED's and DisCo's protocol (main_lincls.py --protocol=transfer: a linear
# layer on the frozen student, the 32-px images upsampled to 224 px with bicubic interpolation, SGD lr 3, momentum
# 0.9, no weight decay, batch 256, 200 epochs at a constant rate; the cited lines are in main_lincls.py).
# DATA_DIR: CIFAR's python release as downloaded (cifar-10-batches-py/ or cifar-100-python/, read in place; val is its
# test set), or any train/ and val/ class folders; results.json says "transfer".
set -euo pipefail
DATA_DIR=${DATA_DIR:-/path/to/cifar-10-batches-py}
ARCH=${ARCH:-resnet18}
PRETRAINED=${PRETRAINED:-runs/SR18-TR50W2/final.pth}
OUTPUT_DIR=${OUTPUT_DIR:-$(dirname "$PRETRAINED")/transfer_$(basename "$DATA_DIR")}
NGPU=${NGPU:-$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')}

cd "$(dirname "$0")/../.."
torchrun --standalone --nproc_per_node="$NGPU" main_lincls.py --protocol=transfer \
  --arch="$ARCH" --pretrained="$PRETRAINED" --data_dir="$DATA_DIR" --output_dir="$OUTPUT_DIR" \
  --num_workers=10 --resume=auto "$@"
