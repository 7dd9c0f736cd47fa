"""The bagging ablation (run_knn.py --bagging), the loss-term switches, the logistic-regression probe and the
intervals every accuracy carries."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.bags import BagError, bag_purity, group_bags, kmeans_assignments, label_bags, random_bags, redraw_members
from engine.evaluation import LOGREG_C
from models import losses
from utils.metrics import binomial_interval

from helpers import calibrated_teacher, make_image_folder, run_cases


def test_group_bags_draw_k_other_members_of_the_group():
    groups = np.array([0, 1, 0, 2, 1, 0, 2, 1, 2, 0])
    bags = group_bags(groups, 2, seed=0)
    assert bags.shape == (10, 2) and bags.dtype == np.int64
    for i, row in enumerate(bags):
        assert i not in row and len(set(row)) == 2 and (groups[row] == groups[i]).all()
    assert np.array_equal(bags, group_bags(groups, 2, seed=0)) and not np.array_equal(bags, group_bags(groups, 2, 1))
    assert bag_purity(bags, groups) == 100.0
    with pytest.raises(BagError, match="class 1 has 3 member"):
        group_bags(groups, 3, seed=0, what="class")


def test_label_bags_of_a_chosen_purity_mix_in_members_of_other_classes():
    classes = np.arange(2000) % 4
    assert np.array_equal(label_bags(classes, 5, seed=2), group_bags(classes, 5, seed=2, what="class"))
    for purity in (0.0, 0.3, 0.75):
        bags = label_bags(classes, 5, seed=0, purity=purity)
        assert bags.shape == (2000, 5) and bags.dtype == np.int64 and not (bags == np.arange(2000)[:, None]).any()
        assert all(len(set(row)) == 5 for row in bags[:200])
        # 10,000 members, each in class with probability `purity`: the binomial's sd is at most 0.5 points
        assert abs(bag_purity(bags, classes) - 100 * purity) < 2
        in_class = (classes[bags] == classes[:, None]).sum(1)
        assert abs(in_class.var() - 5 * purity * (1 - purity)) < 0.15  # binomial per bag, not a fixed count
        wrong = bags[classes[bags] != classes[:, None]]
        assert purity == 0.0 or len(np.unique(classes[wrong])) == 4  # the wrong members spread over the classes
    first = label_bags(classes, 5, seed=0, purity=0.75)
    assert np.array_equal(first, label_bags(classes, 5, seed=0, purity=0.75))
    assert not np.array_equal(first, label_bags(classes, 5, seed=1, purity=0.75))
    assert (classes[first[:, 0]] == classes).mean() == pytest.approx(0.75, abs=0.04)  # no column holds the in-class
    small = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    with pytest.raises(BagError, match="class 0 has 3 member"):
        label_bags(small, 3, seed=0, purity=0.5)
    with pytest.raises(BagError, match="other than 1 hold 3 image"):
        label_bags(small, 4, seed=0, purity=0.0)
    with pytest.raises(BagError, match="not a probability"):
        label_bags(small, 2, seed=0, purity=1.5)


def test_redrawn_members_keep_the_bags_purity_place_by_place_and_the_other_kind_of_member():
    classes = np.arange(400) % 4
    rng = np.random.default_rng(5)
    bags = np.stack([rng.choice(np.delete(np.arange(400), i), size=6, replace=False) for i in range(400)])
    same = classes[bags] == classes[:, None]
    assert 0 < same.mean() < 0.5
    for which, redrawn_kind in (("same_class", same), ("other_class", ~same)):
        redrawn = redraw_members(bags, classes, which, seed=0)
        assert redrawn.shape == bags.shape and redrawn.dtype == np.int64
        assert np.array_equal(classes[redrawn] == classes[:, None], same)  # which members are right: unchanged
        assert np.array_equal(redrawn[~redrawn_kind], bags[~redrawn_kind])  # the other kind kept in place
        assert not (redrawn == np.arange(400)[:, None]).any() and all(len(set(row)) == 6 for row in redrawn)
        # each redrawn member a fresh uniform draw from 99 (same class) or 300 (other classes) images
        assert (redrawn[redrawn_kind] != bags[redrawn_kind]).mean() > 0.95
        assert np.array_equal(redrawn, redraw_members(bags, classes, which, seed=0))
        assert not np.array_equal(redrawn, redraw_members(bags, classes, which, seed=1))
    wrong = redraw_members(bags, classes, "other_class", seed=0)[~same]
    counts = np.bincount(wrong, minlength=400)
    assert (counts > 0).mean() > 0.95  # spread over the other classes' images, not a few of them
    assert np.array_equal(redraw_members(bags, classes, "none", seed=0), bags)
    small = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    three = np.array([[1, 2, 3]] + [[0, 1, 2]] * 7)
    with pytest.raises(BagError, match="class 0 has 3 member.*may redraw all K members from its class"):
        redraw_members(three, small, "same_class", seed=0)
    with pytest.raises(BagError, match="other than 1 hold 3 image.*may redraw all K members from the other"):
        redraw_members(np.array([[1, 2, 3, 4]] * 8), small, "other_class", seed=0)
    with pytest.raises(BagError, match="give one of none, same_class, other_class"):
        redraw_members(three, small, "right", seed=0)


def test_random_bags_never_hold_the_image_and_spread_over_all_others():
    bags = random_bags(50, 4, seed=0)
    assert not (bags == np.arange(50)[:, None]).any()
    assert all(len(set(row)) == 4 for row in bags)
    counts = np.bincount(random_bags(200, 5, seed=1).ravel(), minlength=200)
    assert counts.sum() == 1000 and counts.max() < 16 and 3 < counts.var() < 8  # uniform draws: about Poisson(5)
    labels = np.arange(200) % 4
    assert abs(bag_purity(random_bags(200, 5, seed=1), labels) - 100 * 49 / 199) < 5  # chance: 49 of 199 others
    assert bag_purity(np.array([[1], [0], [0]]), np.array([0, 0, 1])) == pytest.approx(100 * 2 / 3)
    with pytest.raises(BagError, match="K=5"):
        random_bags(5, 5, seed=0)


def test_kmeans_finds_well_separated_clusters():
    torch.manual_seed(0)
    centres = F.normalize(torch.randn(4, 16), dim=1) * 10
    truth = torch.arange(80) % 4
    features = F.normalize(centres[truth] + 0.1 * torch.randn(80, 16), dim=1)
    clusters, backend = kmeans_assignments(features, 4, seed=0)
    assert backend in ("faiss", "scikit-learn") and clusters.shape == (80,)
    # each cluster is one true group: the bags of a clean clustering are pure
    bags = group_bags(clusters, 3, seed=0)
    assert (clusters[bags] == clusters[:, None]).all() and not (bags == np.arange(80)[:, None]).any()
    assert bag_purity(bags, truth.numpy()) == 100.0
    with pytest.raises(BagError, match="between 2"):
        kmeans_assignments(features, 1, seed=0)


def test_binomial_intervals_by_hand():
    low, high = binomial_interval(50.0, 100)
    assert low == pytest.approx(40.38, abs=0.01) and high == pytest.approx(59.62, abs=0.01)  # Wilson, z = 1.96
    assert binomial_interval(100.0, 24)[1] == 100.0 and binomial_interval(100.0, 24)[0] == pytest.approx(86.2, 0.01)
    half = (lambda lo_hi: (lo_hi[1] - lo_hi[0]) / 2)(binomial_interval(75.0, 10000))
    assert half == pytest.approx(0.85, abs=0.01)  # the demo's 10,000 queries: about ±0.9 near 75 %


def test_logistic_regression_probe_fits_separable_features_and_picks_c_on_the_holdout():
    from engine.evaluation import logistic_regression

    torch.manual_seed(0)
    labels = torch.arange(300) % 3
    features = torch.randn(300, 8) + 3 * F.one_hot(labels, 8).float()
    val_labels = torch.arange(90) % 3
    val = torch.randn(90, 8) + 3 * F.one_hot(val_labels, 8).float()
    result, predicted = logistic_regression(features, labels, val, val_labels, seed=0)
    assert result["top1"] > 90 and result["top5"] == 100.0 and result["count"] == 90
    tried = list(result["holdout_top1"])
    assert result["converged"] and result["C"] in LOGREG_C and tried == [f"{c:g}" for c in LOGREG_C[:len(tried)]]
    assert max(result["holdout_top1"].values()) == result["holdout_top1"][f"{result['C']:g}"]
    assert result["top1_ci95"][0] < result["top1"] <= result["top1_ci95"][1]
    assert 100.0 * (predicted == val_labels).double().mean().item() == pytest.approx(result["top1"])
    again, predicted_again = logistic_regression(features, labels, val, val_labels, seed=0)
    assert again == result and torch.equal(predicted_again, predicted)  # deterministic


def test_the_probe_says_when_its_choice_of_c_is_an_end_of_the_grid():
    """Classes told apart only once a large shared nuisance is cancelled need a weak penalty: a grid of strong ones
    chooses its weakest and says it is an end; a grid going beyond finds a better C inside it and says nothing."""
    from engine.evaluation import logistic_regression

    torch.manual_seed(2)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % 4
        shared = 5 * torch.randn(n, 1)  # the same nuisance in every feature
        return 0.3 * torch.randn(n, 16) + 0.6 * F.one_hot(labels, 16).float() + shared, labels

    (features, labels), (val, val_labels) = split(400), split(200)
    strong, _ = logistic_regression(features, labels, val, val_labels, seed=0, grid=(1e-4, 1e-3, 1e-2))
    assert strong["C"] == 1e-2 and strong["C_at_edge"]
    wide, _ = logistic_regression(features, labels, val, val_labels, seed=0, grid=(1e-2, 1.0, 1e2, 1e4, 1e6))
    assert not wide["C_at_edge"] and 1e-2 < wide["C"] < 1e6
    assert wide["holdout_top1"][f"{wide['C']:g}"] > strong["holdout_top1"]["0.01"] + 10
    assert wide["top1"] > strong["top1"] + 10


def test_the_probes_path_stops_after_two_worse_c_and_chooses_as_the_whole_grid_does():
    """Separable features score best under a strong penalty: the path from strong to weak stops two C after its
    best, and the whole grid (no patience) tries every C and chooses the same one."""
    from engine.evaluation import logistic_regression

    torch.manual_seed(3)
    labels = torch.arange(300) % 3
    features = 0.8 * torch.randn(300, 64) + 1.2 * F.one_hot(labels, 64).float()
    val_labels = torch.arange(150) % 3
    val = 0.8 * torch.randn(150, 64) + 1.2 * F.one_hot(val_labels, 64).float()
    stopped, predicted = logistic_regression(features, labels, val, val_labels, seed=0)
    whole, predicted_whole = logistic_regression(features, labels, val, val_labels, seed=0, patience=None)
    assert list(whole["holdout_top1"]) == [f"{c:g}" for c in LOGREG_C]
    held = list(stopped["holdout_top1"].values())
    assert len(held) < len(LOGREG_C) and max(held[-2:]) < max(held[:-2])  # stopped two C after its best
    assert stopped["C"] == whole["C"] and stopped["top1"] == whole["top1"] and torch.equal(predicted, predicted_whole)


def test_the_lbfgs_probe_finds_scikit_learns_logistic_regression():
    """Same objective as scikit-learn's LogisticRegression (sum CE + ||W||^2 / 2C, bias unpenalised): the same
    probabilities, to float32 rounding of the mean loss."""
    from sklearn.linear_model import LogisticRegression

    from engine.evaluation import fit_logistic_regression

    torch.manual_seed(1)
    labels = torch.arange(120) % 4
    features = torch.randn(120, 6) + 1.5 * F.one_hot(labels, 6).float()
    for c in (0.01, 1.0):
        weight, bias, _, _ = fit_logistic_regression(features, labels, 4, c, tolerance=1e-6)
        reference = LogisticRegression(C=c, tol=1e-10, max_iter=10000).fit(features.double().numpy(), labels.numpy())
        ours = torch.softmax(features @ weight + bias, 1).numpy()
        np.testing.assert_allclose(ours, reference.predict_proba(features.double().numpy()), atol=1e-3)


def test_official_loss_terms_can_be_dropped_one_at_a_time():
    torch.manual_seed(0)
    qa, qn, qm, ka, kn = (F.normalize(torch.randn(4, 8), dim=1) for _ in range(5))
    queue = F.normalize(torch.randn(8, 16), dim=0)

    def ce(q, k):  # InfoNCE by hand: -log softmax of the positive among [q.k, q.queue] / T
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue], 1) / 0.2
        return (torch.logsumexp(logits, 1) - logits[:, 0]).mean()

    by_hand = {"anchor": 0.5 * ce(qa, ka) + 0.5 * ce(qa, kn), "neighbour": 0.5 * ce(qn, kn) + 0.5 * ce(qn, ka),
               "mix": 0.7 * ce(qm, ka) + 0.3 * ce(qm, kn)}
    full, _ = losses.bingo_official_loss(qa, qn, qm, ka, kn, queue, 0.2, (0.5, 0.5), 0.7)
    assert torch.allclose(full, sum(by_hand.values()) / 3, atol=1e-6)
    for dropped in losses.OFFICIAL_TERMS:
        kept = tuple(t for t in losses.OFFICIAL_TERMS if t != dropped)
        value, terms = losses.bingo_official_loss(qa, None if dropped == "neighbour" else qn,
                                                  None if dropped == "mix" else qm, ka, kn, queue, 0.2, (0.5, 0.5),
                                                  0.7, kept)
        assert f"loss_{dropped}" not in terms
        assert torch.allclose(value, sum(by_hand[t] for t in kept) / 2, atol=1e-6)
    # --nocross_keys: own keys only, weight 1, after the warm-up too
    weights = losses.bag_weights(50, (0.5, 0.5), 10, cross_keys=False)
    assert weights == (1.0, 0.0)
    own_only, _ = losses.bingo_official_loss(qa, qn, qm, ka, kn, queue, 0.2, weights, 0.7)
    assert torch.allclose(own_only, (ce(qa, ka) + ce(qn, kn) + by_hand["mix"]) / 3, atol=1e-6)
    with pytest.raises(ValueError, match="no loss term"):
        losses.bingo_official_loss(qa, qn, qm, ka, kn, queue, 0.2, (0.5, 0.5), 0.7, ())


@pytest.fixture(scope="module")
def bag_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bags")
    data = make_image_folder(tmp / "data", classes=3, per_class=6, size=40)
    calibrated_teacher("resnet18", data, tmp / "teacher.pth.tar")
    return tmp, data


def _knn(tmp, data, name, *extra, teacher=True):
    """run_knn.py's flags; ``teacher=False`` for label and random bags, which refuse the teacher's flags."""
    embedding = ["--arch=resnet18", f"--ckpt_name={tmp / 'teacher.pth.tar'}", "--image_size=32", "--num_workers=0"]
    return [*(embedding if teacher else []), f"--data_dir={data}", "--clus_pos_num=3", f"--corr_name={tmp / name}",
            *extra]


def test_run_knn_writes_each_kind_of_bag_with_its_purity_and_main_distill_trains_on_it(bag_data):
    tmp, data = bag_data
    kinds = {"knn": [], "kmeans": ["--kmeans_clusters=2"], "label": [], "random": ["--bag_seed=3"]}
    results = run_cases("run_knn", [_knn(tmp, data, f"{kind}.npy", f"--bagging={kind}", *extra,
                                         teacher=kind in ("knn", "kmeans")) for kind, extra in kinds.items()]
                        + [_knn(tmp, data, "label-0.npy", "--bagging=label", "--label_bag_purity=0", teacher=False),
                           _knn(tmp, data, "knn-other.npy", "--redraw_members=other_class", "--bag_seed=1")],
                        tmp)
    redrawn = results.pop()
    assert redrawn["status"] == 0, redrawn
    knn, other = np.load(tmp / "knn.npy"), np.load(tmp / "knn-other.npy")
    labels = np.repeat(np.arange(3), 6)
    right = labels[knn] == labels[:, None]
    assert np.array_equal(labels[other] == labels[:, None], right) and np.array_equal(other[right], knn[right])
    redrawn_meta = json.loads((tmp / "knn-other.json").read_text())
    assert redrawn_meta["redraw_members"] == "other_class" and redrawn_meta["uses_labels"] is True
    assert redrawn_meta["bag_purity"] == json.loads((tmp / "knn.json").read_text())["bag_purity"]
    mixed = results.pop()
    assert mixed["status"] == 0, mixed
    mixed_meta = json.loads((tmp / "label-0.json").read_text())
    assert mixed_meta["label_bag_purity"] == 0.0 and mixed_meta["bag_purity"] == 0.0  # every member of another class
    for kind, result in zip(kinds, results):
        assert result["status"] == 0, (kind, result)
        bags, meta = np.load(tmp / f"{kind}.npy"), json.loads((tmp / f"{kind}.json").read_text())
        assert bags.shape == (18, 3) and not (bags == np.arange(18)[:, None]).any()
        assert meta["bagging"] == kind and meta["uses_labels"] == (kind == "label")
        assert meta["bag_purity"] == pytest.approx(bag_purity(bags, labels))
        assert "share the class" in result["stdout"]
    purity = {kind: json.loads((tmp / f"{kind}.json").read_text())["bag_purity"] for kind in kinds}
    assert purity["label"] == 100.0 and purity["random"] < 60  # chance: 5 of the 17 others share a class (29 %)
    label_meta = json.loads((tmp / "label.json").read_text())
    assert label_meta["bag_purity"] == 100.0 and "checkpoint" not in label_meta  # no teacher for label bags
    assert "teacher" not in results[2]["stdout"]
    assert json.loads((tmp / "kmeans.json").read_text())["kmeans_clusters"] == 2
    assert sum(json.loads((tmp / "kmeans.json").read_text())["kmeans_cluster_sizes"]) == 18
    (trained,) = run_cases("main_distill", [[
        "--t_arch=resnet18", f"--pretrain_path={tmp / 'teacher.pth.tar'}", f"--data_dir={data}",
        f"--corr_npy={tmp / 'label.npy'}", "--clus_pos_num=3", "--image_size=32", "--batch_size=6", "--moco_k=12",
        "--num_workers=0", "--end_epoch=1", "--nomix_term", "--nocross_keys",
        f"--output_dir={tmp / 'run'}"]], tmp)
    assert trained["status"] == 0, trained
    step = [r for r in map(json.loads, (tmp / "run" / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "step"][0]
    assert "loss_mix" not in step and "loss_neighbour" in step and "anchor_fraction" not in step


def test_bags_that_cannot_be_made_are_refused_before_any_work(bag_data, tmp_path):
    tmp, data = bag_data
    cases = {
        "--bagging=kmeans needs --kmeans_clusters": ["--bagging=kmeans"],
        "--kmeans_clusters is a --bagging=kmeans flag": ["--kmeans_clusters=3"],
        "class class_0 has 6 member(s), fewer than K + 1 = 7": ["--bagging=label", "--clus_pos_num=6"],
        "computes no similarities": ["--bagging=random", "--save_distances"],
        "--kmeans_clusters=0: must be at least 1": ["--bagging=kmeans", "--kmeans_clusters=0"],
        "--bag_seed=-1: must be at least 0": ["--bagging=random", "--bag_seed=-1"],
        # 18 images in bags of K + 1 = 4 make at most 4 clusters: refused before the teacher embeds anything
        "--kmeans_clusters=5: 18 images make at most 4 clusters": ["--bagging=kmeans", "--kmeans_clusters=5"],
        "--arch acts only in --bagging=knn or kmeans (label and random bags load no teacher)": ["--bagging=random"],
        "--label_bag_purity acts only in --bagging=label": ["--bagging=random", "--label_bag_purity=0.5"],
        "--label_bag_purity=1.5: a probability, from 0 to 1": ["--bagging=label", "--label_bag_purity=1.5"],
        "--redraw_members acts only in --bagging=knn": ["--bagging=label", "--redraw_members=same_class"],
        "replaces members whose similarities were computed": ["--redraw_members=other_class", "--save_distances"],
    }
    # the cases given no teacher flags
    teacherless = ("class class_0", "computes no", "--bag_seed", "--label_bag_purity", "--redraw_members")
    results = run_cases("run_knn", [_knn(tmp, data, "x.npy", *extra, teacher=not text.startswith(teacherless))
                                    for text, extra in cases.items()], tmp_path)
    for text, result in zip(cases, results):
        assert result["status"] == 2 and text in result["stderr"], (text, result)
    distill = ["--t_arch=resnet18", f"--pretrain_path={tmp / 'teacher.pth.tar'}", f"--data_dir={data}",
               "--image_size=32", "--batch_size=6", "--moco_k=12", "--num_workers=0", "--end_epoch=1"]
    refused = run_cases("main_distill", [distill + ["--method=seed", "--nomix_term", f"--output_dir={tmp_path / 'a'}"],
                                         distill + ["--noanchor_term", "--noneighbour_term", "--nomix_term",
                                                    f"--output_dir={tmp_path / 'b'}"]], tmp_path)
    assert refused[0]["status"] == 2 and "--nomix_term acts only in --method=bingo --loss=official" in \
        refused[0]["stderr"]
    assert refused[1]["status"] == 2 and "leave no loss term" in refused[1]["stderr"]
