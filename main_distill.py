"""Distillation: train a student against a frozen self-supervised teacher with BINGO (or the SEED, DisCo, CompRess
and MoCo-v2 baselines in the same loop).

    torchrun --nproc_per_node=8 main_distill.py --s_arch=resnet18 --t_arch=resnet50 \
        --pretrain_path=moco_v2_200ep_pretrain.pth.tar --corr_npy=imgs_corr_moco_epoch200.npy \
        --data_dir=/data/imagenet --output_dir=runs/SR18-TR50

One process per GPU under torchrun (any number of GPUs and nodes), a single process on one GPU, or the CPU (gloo).
This file holds the flags; the run itself is ``engine.distillation.Distillation``.
"""
from __future__ import annotations

from absl import flags

from engine import cli
from engine.distillation import Distillation
from engine.options import DistillOptions, from_flags
from models.backbones import BACKBONES, STEMS, STUDENTS
from models.distiller import COMPILE_MODES

FLAGS = flags.FLAGS
# Official flags (names and defaults of haohang96/bingo main_moco.py).
flags.DEFINE_string("output_dir", None, "Run folder for checkpoints, metrics and flags (required).")
flags.DEFINE_string("train_url", None, "Official name of --output_dir (accepted as an alias).")
flags.DEFINE_string("data_dir", None, "Dataset root; <data_dir>/train is used. Or a release folder read in place: "
                    "cifar-10-batches-py, cifar-100-python, stl10_binary (its .../unlabeled or "
                    ".../train+unlabeled for the unlabelled images), a folder of the MNIST format's idx files "
                    "(Fashion-MNIST).")
flags.DEFINE_integer("moco_dim", 128, "Embedding (and queue) dimension.")
flags.DEFINE_integer("moco_k", 65536, "Queue length; a multiple of the global batch.")
flags.DEFINE_float("moco_m", 0.999, "Momentum of the student's momentum copy (--method=moco, disco, compress); the "
                   "distillation teacher is frozen.")
flags.DEFINE_float("moco_t", 0.2, "Softmax temperature (EfficientNet-B0 script: 0.12).")
flags.DEFINE_bool("mlp", True, "Student head: 2-layer MLP (feature -> 2048 -> dim); false: one linear layer.")
flags.DEFINE_bool("aug_plus", True, "MoCo-v2 augmentation (false: MoCo-v1); given explicitly, it sets --augmentation.")
flags.DEFINE_enum("decay_method", "cos", ["cos", "step"], "Learning-rate schedule, stepped per epoch.")
flags.DEFINE_string("resume", "", "Checkpoint to continue from, or 'auto' for <output_dir>/checkpoint.pth. The "
                    "checkpoint's data, networks, method and every setting of its objective must be this run's.")
flags.DEFINE_list("resume_change", [],
                  "With --resume: settings this run may change from the checkpoint's on purpose (e.g. init_lr, lam, "
                  "neighbours for another --corr_npy); each change is said and recorded in the checkpoints and "
                  "flags.json. --end_epoch may always change.")
flags.DEFINE_integer("seed", None, "Run seed; when unset one is drawn at random and recorded, so --resume stays exact.")
flags.DEFINE_float("init_lr", 0.03, "Learning rate for the global batch.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_float("wd", 1e-4, "Weight decay (EfficientNet-B0 script: 4e-5).")
flags.DEFINE_integer("batch_size", 256, "Global batch, split evenly over the processes.")
flags.DEFINE_integer("num_workers", 8, "Data-loading workers per process (the official flag was global).")
flags.DEFINE_integer("end_epoch", 200, "Number of epochs.")
flags.DEFINE_list("schedule", ["120", "160"], "Milestone epochs for --decay_method=step.")
flags.DEFINE_float("lr_decay", 0.1, "Factor at each milestone for --decay_method=step.")
flags.DEFINE_integer("report_freq", 100, "Steps between progress lines.")
flags.DEFINE_integer("save_freq", 10, "Epochs between numbered checkpoints.")
flags.DEFINE_integer("subgroup", 8, "Shuffle-BN group size (capped at the number of processes).")
flags.DEFINE_list("lam", ["0.5", "0.5"], "Weights of own key and other bag member's key after the warm-up.")
flags.DEFINE_integer("clus_pos_num", 5, "Neighbours to sample from (leading columns of the .npy).")
flags.DEFINE_enum("s_arch", "resnet18", sorted(BACKBONES),
                  f"Student network (the paper's: {', '.join(sorted(STUDENTS))}; any registered network trains, "
                  "e.g. a resnet50 MoCo-v2 teacher with --method=moco).")
flags.DEFINE_enum("t_arch", "resnet50", sorted(BACKBONES), "Teacher network.")
flags.DEFINE_string("corr_npy", "imgs_corr_epoch800_MoCo.npy",
                    "Neighbour .npy from run_knn.py: a bare name is read from ./imgs_corr/, a path as given "
                    "(.npy appended when missing, as run_knn.py does).")
flags.DEFINE_string("pretrain_path", "moco_v2_800ep_pretrain.pth.tar", "Teacher checkpoint.")
flags.DEFINE_enum("pretrain_alg", "moco", ["moco", "swav"],
                  "Teacher checkpoint family; checked against the detected format.")
# Additions.
flags.DEFINE_enum("method", "bingo", ["bingo", "seed", "disco", "compress", "moco"],
                  "bingo, the SEED, DisCo or CompRess baseline, or MoCo-v2 (no teacher). Each baseline takes its "
                  "release's defaults for the flags not given (see METHOD_DEFAULTS; flags.json records them).")
flags.DEFINE_enum("loss", "official", ["official", "paper"],
                  "official: the released code's loss (neighbour key, 11-epoch warm-up, CutMix term, /3); "
                  "paper: CE(anchor) + CE(neighbour) against the anchor's teacher key.")
flags.DEFINE_enum("teacher_mode", None, ["train", "eval"],
                  "train: teacher BN uses batch statistics (official BINGO: shuffled; DisCo's release: each "
                  "process's own); eval: its running statistics (SEED's and CompRess's releases). Default: each "
                  "method's release.")
flags.DEFINE_enum("augmentation", None, ["mocov2", "mocov1", "crop_flip"],
                  "The views: MoCo-v2, MoCo-v1, or RandomResizedCrop + flip (CompRess's). Default: --aug_plus's "
                  "choice, crop_flip for --method=compress.")
flags.DEFINE_float("disco_mse_weight", 32.0,
                   "--method=disco: weight of each MSE term on its batch mean of ||teacher - student||^2. DisCo's "
                   "release sums over one process's batch, i.e. weight = the per-process batch: 32 at its 8 x 32 "
                   "setting (the default, whatever the process count here).")
flags.DEFINE_bool("compress_one_bank", False,
                  "--method=compress: CompRess-1q (a linear map to the teacher's width, the teacher's bank only, no "
                  "momentum copy) instead of CompRess's two banks.")
flags.DEFINE_integer("head_hidden", 2048,
                     "Hidden width of the student's MLP head (official BINGO: 2048 for every student and method; "
                     "MoCo's and SEED's releases use the backbone's width, 512 for a ResNet-18).")
flags.DEFINE_float("seed_teacher_t", 1e-4, "SEED's teacher temperature (its release's default).")
flags.DEFINE_bool("anchor_term", True, "--loss=official: keep L_anchor (the loss ablation: --noanchor_term drops it).")
flags.DEFINE_bool("neighbour_term", True, "--loss=official: keep L_neighbour (--noneighbour_term drops it).")
flags.DEFINE_bool("mix_term", True, "--loss=official: keep the CutMix term L_mix (--nomix_term drops it).")
flags.DEFINE_bool("cross_keys", True, "--loss=official: after the warm-up, pull each query to the other bag member's "
                  "key too (--lam); --nocross_keys keeps the own key only, weight 1, throughout. The loss is the mean "
                  "of the terms kept (the official /3 with all three).")
flags.DEFINE_integer("bag_warmup_epochs", 10,
                     "--loss=official: epochs 0..N use only the own-key terms (official: 10, i.e. 11 epochs).")
flags.DEFINE_integer("image_size", 224, "Crop size of the views.")
flags.DEFINE_enum("stem", "imagenet", list(STEMS),
                  "Student's and teacher's ResNet stem: imagenet (7x7 stride-2 convolution and max-pool, the paper's) "
                  "or small (3x3 stride-1 convolution, no max-pool, for 32-96 px images). Recorded in the "
                  "checkpoints; a teacher or --resume of the other stem is refused.")
flags.DEFINE_bool("amp", False, "bf16 autocast on CUDA.")
flags.DEFINE_bool("channels_last", False, "channels_last memory format on CUDA.")
flags.DEFINE_bool("fused_optimizer", False,
                  "SGD's fused implementation (one kernel for every parameter's update; speed switch, equal up to "
                  "rounding). A resume uses this run's choice, whatever the checkpoint's was.")
flags.DEFINE_bool("compile", False, "torch.compile the student and the teacher (CUDA speed switch; compiles first).")
flags.DEFINE_enum("compile_mode", "default", list(COMPILE_MODES),
                  "--compile: torch.compile's mode; reduce-overhead and max-autotune replay each compiled network "
                  "as CUDA graphs (one launch instead of one per kernel), the steps marked for them.")
flags.DEFINE_bool("compile_views", False,
                  "With --device_views: torch.compile the views step (its crop, colour, blur and flip operators fused "
                  "into a few kernels; equal up to float32 rounding; compiles for about 20 s first).")
flags.DEFINE_bool("device_views", False,
                  "Decode JPEGs (nvJPEG on CUDA) and make each batch's views on the training device in a fixed number "
                  "of operations; loader workers only read files. The views' parameters are drawn from seed, epoch "
                  "and image (the CPU path's distributions, not its draws).")
flags.DEFINE_bool("in_memory", False,
                  "With --device_views: decode every training image once at start-up (in --num_workers processes) "
                  "and hold them as one tensor on the training device, indexed there (images of one size, e.g. "
                  "Fashion-MNIST, CIFAR, STL-10; 3 KB an image at 32 px); no loader workers while training. The "
                  "k-NN monitor's images are held too (a memory that is the training split: the same tensor), their "
                  "evaluation crop made there (float resize: within 1/255 of PIL's crop).")
flags.DEFINE_bool("fuse_teacher", False,
                  "One teacher forward for the anchor and neighbour keys (--method=bingo --loss=official); with a "
                  "train-mode teacher each view keeps its own BatchNorm statistics and shuffle, so the keys are the "
                  "two forwards' (speed switch).")
flags.DEFINE_bool("check_corr_json", True,
                  "Require the .npy's JSON from run_knn.py and check it against this dataset (turn off only for "
                  ".npy files made by the official code).")
flags.DEFINE_enum("device", "auto", ["auto", "cuda", "cpu"], "Where to run (auto: CUDA when available).")
flags.DEFINE_integer("knn_monitor_freq", 0,
                     "Every N epochs, before the first and after the last, score the backbone being trained (the "
                     "student; the query encoder for --method=moco) with main_lincls.py --protocol=knn's classifier "
                     "(k = 10) and log it to metrics.jsonl as kind 'knn'. 0: off.")
flags.DEFINE_string("knn_monitor_data", None,
                    "Labelled dataset root for the k-NN monitor: train/ is the memory, val/ the queries (default: "
                    "--data_dir).")
flags.DEFINE_bool("final_evaluation", False,
                  "Once final.pth is written, score its backbone as main_lincls.py --protocol=logreg --with_knn does "
                  "with its defaults (the logistic-regression probe and the k-NN classifier) on the k-NN monitor's "
                  "images, from the monitor's last embedding, into <output_dir>/evaluation/results.json: one "
                  "process and one embedding fewer than running main_lincls.py after.")


def main(argv: list[str]) -> None:
    del argv
    Distillation(from_flags(DistillOptions, FLAGS)).run()


if __name__ == "__main__":
    cli.run(main)
