#!/usr/bin/env bash
# Data-relation step with the official settings: SwAV RN50w2 teacher, K=5, pooled backbone features.
# Edit the paths below (or pass them as environment variables); every GPU of this machine is used.
set -euo pipefail
DATA_DIR=${DATA_DIR:-/path/to/imagenet}                        # holds train/<class>/<image>
TEACHER=${TEACHER:-/path/to/swav_RN50w2_400ep_pretrain.pth.tar}
ARCH=${ARCH:-resnet50w2}
OUTPUT=${OUTPUT:-imgs_corr/imgs_corr_swav_epoch400.npy}
NGPU=${NGPU:-$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')}

cd "$(dirname "$0")"
torchrun --standalone --nproc_per_node="$NGPU" run_knn.py \
  --arch="$ARCH" --ckpt_name="$TEACHER" --data_dir="$DATA_DIR" --corr_name="$OUTPUT" \
  --clus_pos_num=5 --batch_size=256 --num_workers=10 --channels_last "$@"
