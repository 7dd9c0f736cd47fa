#!/usr/bin/env bash
# CompRess baseline: resnet18 student without a head and its momentum copy, the pooled features of a resnet50 MoCo-v2
# teacher (eval mode), CompRess's release values (train_student.py: banks of 128,000, T 0.04, lr 0.01, batch 256, 130
# epochs, x0.2 at 90 and 120, RandomResizedCrop + flip; key momentum 0.999, the default). Add --compress_one_bank for
# CompRess-1q (no momentum copy). Paths are variables.
set -euo pipefail
DATA_DIR=${DATA_DIR:-/path/to/imagenet}
TEACHER=${TEACHER:-/path/to/moco_v2_200ep_pretrain.pth.tar}
OUTPUT_DIR=${OUTPUT_DIR:-runs/SR18-TR50-compress}
NGPU=${NGPU:-$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')}

cd "$(dirname "$0")/../.."
torchrun --standalone --nproc_per_node="$NGPU" main_distill.py --method=compress \
  --s_arch=resnet18 --t_arch=resnet50 --pretrain_alg=moco --pretrain_path="$TEACHER" \
  --data_dir="$DATA_DIR" --output_dir="$OUTPUT_DIR" \
  --moco_k=128000 --moco_t=0.04 --teacher_mode=eval --augmentation=crop_flip --wd=1e-4 \
  --init_lr=0.01 --batch_size=256 --end_epoch=130 --decay_method=step --schedule=90,120 --lr_decay=0.2 \
  --num_workers=10 --report_freq=100 --save_freq=10 --amp --channels_last --resume=auto "$@"
