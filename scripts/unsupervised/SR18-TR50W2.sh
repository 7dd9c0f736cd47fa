#!/usr/bin/env bash
# BINGO: resnet18 student, resnet50w2 teacher (swav checkpoint), official values. Paths are variables; GPUs come from the machine.
set -euo pipefail
DATA_DIR=${DATA_DIR:-/path/to/imagenet}
TEACHER=${TEACHER:-/path/to/swav_RN50w2_400ep_pretrain.pth.tar}
CORR=${CORR:-imgs_corr/imgs_corr_swav_epoch400.npy}                 # from run_knn.sh with the same teacher
OUTPUT_DIR=${OUTPUT_DIR:-runs/SR18-TR50W2}
NGPU=${NGPU:-$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')}

cd "$(dirname "$0")/../.."
torchrun --standalone --nproc_per_node="$NGPU" main_distill.py \
  --s_arch=resnet18 --t_arch=resnet50w2 --pretrain_alg=swav --pretrain_path="$TEACHER" --corr_npy="$CORR" \
  --data_dir="$DATA_DIR" --output_dir="$OUTPUT_DIR" \
  --moco_dim=128 --moco_k=65536 --moco_t=0.2 --wd=1e-4 --init_lr=0.03 --batch_size=256 --end_epoch=200 \
  --decay_method=cos --lam=0.5,0.5 --clus_pos_num=5 --num_workers=10 --report_freq=100 --save_freq=10 \
  --amp --channels_last --resume=auto "$@"
