import re
import subprocess
import sys
import textwrap

import pytest

from helpers import run_script, subprocess_env

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


@pytest.mark.parametrize("fails", [False, True])
def test_entry_points_leave_their_objects_to_the_system_at_exit(tmp_path, fails):
    """``cli.run`` freezes the cyclic collector at exit only (its walk over torch's and torchvision's objects was most
    of a process's exit), after main's files are written, and keeps main's exit status."""
    script = tmp_path / "entry.py"
    script.write_text(textwrap.dedent(f"""
        import atexit, gc
        from pathlib import Path
        before = gc.get_freeze_count()  # not 0 on every Python: 3.12.1 starts with a few hundred frozen objects
        atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > before, flush=True))  # runs last
        from datasets.folders import DatasetError
        from engine.cli import run

        def main(argv):
            print("frozen in main:", gc.get_freeze_count() > before, flush=True)
            Path("written.txt").write_text("done")
            if {fails}:
                raise DatasetError("no images in train/: give --data_dir a folder with train/")

        run(main)
    """))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=subprocess_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == (2 if fails else 0), done.stderr
    assert done.stdout.splitlines() == ["frozen in main: False", "frozen at exit: True"]
    assert (tmp_path / "written.txt").read_text() == "done"
    assert ("error: no images in train/" in done.stderr) == fails
