import re

import pytest

from helpers import run_script

OFFICIAL = {
    "run_knn.py": {"arch": "resnet50", "batch_size": "32", "clus_pos_num": "5", "ckpt_name": "''",
                   "corr_name": "'imgs_corr_moco_epoch800.npy'"},
    "main_distill.py": {"moco_dim": "128", "moco_k": "65536", "moco_m": "0.999", "moco_t": "0.2", "mlp": "true",
                        "aug_plus": "true", "decay_method": "cos", "init_lr": "0.03", "momentum": "0.9",
                        "wd": "0.0001", "batch_size": "256", "end_epoch": "200", "schedule": "'120,160'",
                        "lr_decay": "0.1", "report_freq": "100", "save_freq": "10", "subgroup": "8",
                        "lam": "'0.5,0.5'", "clus_pos_num": "5", "s_arch": "resnet18", "t_arch": "resnet50",
                        "corr_npy": "'imgs_corr_epoch800_MoCo.npy'",
                        "pretrain_path": "'moco_v2_800ep_pretrain.pth.tar'", "pretrain_alg": "moco",
                        "train_url": "None", "resume": "''", "seed": "None"},
    "main_lincls.py": {"evaluate": "false", "init_lr": "30.0", "momentum": "0.9", "wd": "0.0", "batch_size": "256",
                       "schedule": "'60,80'", "lr_decay": "0.1", "min_lr": "0.01", "arch": "resnet18",
                       "pool_type": "avg", "report_freq": "100", "save_freq": "10", "train_url": "None"},
}


@pytest.mark.parametrize("script", sorted(OFFICIAL))
def test_helpfull_lists_official_flags_with_official_defaults(tmp_path, script):
    text = run_script(script, ["--helpfull"], tmp_path, check=False).stdout  # absl exits 1 after help
    for name, default in OFFICIAL[script].items():
        match = re.search(rf"\n\s+--(?:\[no\])?{name}: ((?:(?!\n\s+--).)*)", text, re.S)
        assert match, f"{script} does not define --{name}"
        block = re.search(r"\(default: (.*?)\)", match.group(1), re.S)
        if default == "None":
            assert block is None, f"{script} --{name} has a default: {block.group(1)}"
            continue
        match = block
        found = match.group(1).strip("'")
        assert found == default.strip("'"), f"{script} --{name}: default {found}, expected {default}"
