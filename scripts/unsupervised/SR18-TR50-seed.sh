#!/usr/bin/env bash
# SEED baseline: resnet18 student, resnet50 MoCo-v2 teacher, SEED's release values (its teacher in eval mode, the
# student head as wide as the backbone, teacher temperature 1e-4; one view, MoCo-v2 augmentation). Paths are variables.
set -euo pipefail
DATA_DIR=${DATA_DIR:-/path/to/imagenet}
TEACHER=${TEACHER:-/path/to/moco_v2_200ep_pretrain.pth.tar}
OUTPUT_DIR=${OUTPUT_DIR:-runs/SR18-TR50-seed}
NGPU=${NGPU:-$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')}

cd "$(dirname "$0")/../.."
torchrun --standalone --nproc_per_node="$NGPU" main_distill.py --method=seed \
  --s_arch=resnet18 --t_arch=resnet50 --pretrain_alg=moco --pretrain_path="$TEACHER" \
  --data_dir="$DATA_DIR" --output_dir="$OUTPUT_DIR" \
  --moco_dim=128 --moco_k=65536 --moco_t=0.2 --seed_teacher_t=1e-4 --head_hidden=512 --wd=1e-4 --init_lr=0.03 \
  --batch_size=256 --end_epoch=200 --decay_method=cos --num_workers=10 --report_freq=100 --save_freq=10 \
  --amp --channels_last --resume=auto "$@"
