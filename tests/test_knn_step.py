import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision import models as tvm

from datasets.folders import IndexedImageFolder
from datasets.transforms import eval_transform

from helpers import make_image_folder, moco_release, run_cases, run_script

ARGS = ["--arch=resnet18", "--image_size=32", "--clus_pos_num=3", "--num_workers=0", "--batch_size=4"]


@pytest.fixture(scope="module")
def knn_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("knn")
    data = make_image_folder(tmp / "data", classes=3, per_class=5, size=40)
    moco_release("resnet18", tmp / "teacher.pth.tar")
    # two identical images: neither may list itself
    (data / "train" / "class_2" / "img_004.png").write_bytes((data / "train" / "class_2" / "img_003.png").read_bytes())
    one = run_script("run_knn.py", ARGS + [f"--data_dir={data}", f"--ckpt_name={tmp / 'teacher.pth.tar'}",
                                           "--corr_name=one.npy", "--save_distances"], tmp)
    two = run_script("run_knn.py", ARGS + [f"--data_dir={data}", f"--ckpt_name={tmp / 'teacher.pth.tar'}",
                                           f"--corr_name={tmp / 'two.npy'}", "--save_distances"], tmp, nproc=2)
    return tmp, data, one, two


def test_writes_int64_neighbours_without_self(knn_setup):
    tmp, data, one, _ = knn_setup
    neighbours = np.load(tmp / "imgs_corr" / "one.npy")  # a bare name goes under ./imgs_corr/
    assert neighbours.dtype == np.int64 and neighbours.shape == (15, 3)
    assert not (neighbours == np.arange(15)[:, None]).any()
    assert neighbours[13, 0] == 14 and neighbours[14, 0] == 13
    sims = np.load(tmp / "imgs_corr" / "one_sims.npy")
    assert sims.shape == (15, 3) and (np.diff(sims, axis=1) <= 1e-6).all()
    assert "img/s" in one.stdout  # progress shown


def test_two_processes_find_the_one_process_neighbours(knn_setup):
    """Two processes embed the images in other batches than one does, so features may round differently: the
    similarities agree to float32 precision, and the neighbours are equal but for the order of the two identical
    images 13 and 14, which tie wherever both appear (written as one image here)."""
    tmp = knn_setup[0]
    one, two = np.load(tmp / "imgs_corr" / "one.npy"), np.load(tmp / "two.npy")
    assert two.dtype == one.dtype and two.shape == one.shape
    np.testing.assert_allclose(np.load(tmp / "two_sims.npy"), np.load(tmp / "imgs_corr" / "one_sims.npy"), atol=1e-5)
    np.testing.assert_array_equal(np.where(two == 14, 13, two), np.where(one == 14, 13, one))
    assert two[13, 0] == 14 and two[14, 0] == 13


def test_json_matches_the_run(knn_setup):
    tmp, data, _, _ = knn_setup
    meta = json.loads((tmp / "imgs_corr" / "one.json").read_text())
    from datasets.folders import file_list_sha256
    from models.checkpoints import file_sha256
    assert meta["num_images"] == 15 and meta["k"] == 3 and meta["feature_dim"] == 512
    assert meta["teacher_arch"] == "resnet18" and meta["checkpoint"] == "teacher.pth.tar"
    assert meta["checkpoint_sha256"] == file_sha256(tmp / "teacher.pth.tar")
    assert meta["file_list_sha256"] == file_list_sha256(IndexedImageFolder(data / "train"))
    assert meta["world_size"] == 1
    assert json.loads((tmp / "two.json").read_text())["world_size"] == 2


def test_equals_an_independent_torchvision_computation(knn_setup):
    tmp, data, _, _ = knn_setup
    state = torch.load(tmp / "teacher.pth.tar", weights_only=True)["state_dict"]
    net = tvm.resnet18()
    net.fc = torch.nn.Identity()
    prefix = "module.encoder_q."
    net.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                         if k.startswith(prefix) and not k.startswith(prefix + "fc.")})
    net.eval()
    folder = IndexedImageFolder(data / "train", eval_transform(32))
    with torch.no_grad():
        feats = F.normalize(torch.stack([net(folder[i][0][None])[0] for i in range(len(folder))]).double(), dim=1)
    sims = feats @ feats.T
    sims.fill_diagonal_(-2)
    expected = sims.argsort(dim=1, descending=True)[:, :3].numpy()
    got = np.load(tmp / "imgs_corr" / "one.npy")
    # images 13 and 14 are identical, so they tie wherever both appear; everywhere else the order must be equal
    tie_free = [i for i in range(15) if not {13, 14} & set(expected[i].tolist())]
    assert len(tie_free) >= 5
    np.testing.assert_array_equal(got[tie_free], expected[tie_free])
    rows = np.arange(15)[:, None]
    np.testing.assert_allclose(sims.numpy()[rows, got], sims.numpy()[rows, expected], atol=1e-5)


def test_bad_input_fails_with_a_clear_message(knn_setup, tmp_path):
    tmp, data, _, _ = knn_setup
    args = ARGS + [f"--data_dir={data}", f"--ckpt_name={tmp / 'teacher.pth.tar'}", f"--corr_name={tmp_path / 'x.npy'}"]
    (tmp_path / "empty" / "train").mkdir(parents=True)
    blocker = tmp_path / "file"
    blocker.write_text("")
    cases = {  # expected text: command line (a repeated flag's last value wins, as on a shell)
        "clus_pos_num": args + ["--clus_pos_num=15"],
        "no images": args + [f"--data_dir={tmp_path / 'empty'}"],
        "missing": args + ["--arch=resnet34"],
        "cannot write": args + [f"--corr_name={blocker / 'sub' / 'x.npy'}"],
    }
    for expect, result in zip(cases, run_cases("run_knn", list(cases.values()), tmp_path)):
        assert result["status"] == 2 and expect in result["stderr"], (expect, result["stderr"])


def test_head_feature_option(knn_setup, tmp_path):
    tmp, data, _, _ = knn_setup
    run_script("run_knn.py", ARGS + [f"--data_dir={data}", f"--ckpt_name={tmp / 'teacher.pth.tar'}",
                                     f"--corr_name={tmp_path / 'head.npy'}", "--feature=head"], tmp_path)
    meta = json.loads((tmp_path / "head.json").read_text())
    assert meta["feature"] == "head" and meta["feature_dim"] == 128
    assert np.load(tmp_path / "head.npy").shape == (15, 3)
