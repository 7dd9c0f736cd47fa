#!/usr/bin/env bash
# DisCo baseline: resnet18 student with its momentum encoder and queue, resnet50 MoCo-v2 teacher on both views, DisCo's
# release values (Reproduction.md: lr 0.03, batch 256, T 0.2, 200 epochs, cosine; 2048-wide head; the teacher's BN on
# each GPU's batch, as released; each MSE term weighted 32, the release's per-GPU sum at 8 x 32). Paths are variables.
set -euo pipefail
DATA_DIR=${DATA_DIR:-/path/to/imagenet}
TEACHER=${TEACHER:-/path/to/moco_v2_200ep_pretrain.pth.tar}
OUTPUT_DIR=${OUTPUT_DIR:-runs/SR18-TR50-disco}
NGPU=${NGPU:-$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')}

cd "$(dirname "$0")/../.."
torchrun --standalone --nproc_per_node="$NGPU" main_distill.py --method=disco \
  --s_arch=resnet18 --t_arch=resnet50 --pretrain_alg=moco --pretrain_path="$TEACHER" \
  --data_dir="$DATA_DIR" --output_dir="$OUTPUT_DIR" \
  --moco_dim=128 --moco_k=65536 --moco_m=0.999 --moco_t=0.2 --head_hidden=2048 --disco_mse_weight=32 \
  --teacher_mode=train --wd=1e-4 --init_lr=0.03 --batch_size=256 --end_epoch=200 --decay_method=cos \
  --num_workers=10 --report_freq=100 --save_freq=10 --amp --channels_last --resume=auto "$@"
