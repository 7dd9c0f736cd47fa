"""Ways to bag the training images (the paper's §3.1): each returns the ``[N, K]`` int64 array ``run_knn.py``
writes, row ``i`` the indices of image ``i``'s K bag members (never ``i`` itself).

- ``knn``: the K nearest neighbours in the teacher's space (the paper's choice; ``engine.features.exact_knn``).
- ``kmeans``: K members of the anchor's k-means cluster of the teacher's features, drawn uniformly.
- ``label``: K members of the anchor's class folder, drawn uniformly: an oracle that uses the labels. With a
  ``purity`` below 1 (``--label_bag_purity``) each member is of the anchor's class with that probability and else
  drawn from the other classes: bags of a chosen purity whose wrong members are unrelated to the anchor.
- ``random``: K images drawn uniformly from all the others: the control with no relation at all.

``redraw_members`` (``--redraw_members``) takes the teacher's k-NN bags apart at unchanged purity, member by member:
the members of the image's class redrawn from its class (the teacher's mistakes kept) or the members of other classes
redrawn from the other classes (the teacher's right members kept).
"""
from __future__ import annotations

import numpy as np
import torch

from engine.features import import_faiss

__all__ = ["BAGGINGS", "REDRAWS", "group_bags", "label_bags", "random_bags", "redraw_members", "kmeans_assignments",
           "bag_purity", "BagError"]

BAGGINGS = ("knn", "kmeans", "label", "random")
REDRAWS = ("none", "same_class", "other_class")


class BagError(ValueError):
    """A grouping that cannot give every image K other members."""


def group_bags(groups: np.ndarray, k: int, seed: int, what: str = "group") -> np.ndarray:
    """For each image, ``k`` distinct other images of its own group (``groups[i]``: image ``i``'s cluster or
    class), drawn uniformly with ``seed``. Raises ``BagError`` naming the smallest group when one has fewer than
    ``k + 1`` members."""
    groups = np.asarray(groups)
    names, counts = np.unique(groups, return_counts=True)
    if counts.min() < k + 1:
        small = names[counts.argmin()]
        raise BagError(f"{what} {small} has {counts.min()} member(s), fewer than K + 1 = {k + 1}: every image needs K "
                       f"others in its {what}")
    rng = np.random.default_rng(seed)
    bags = np.empty((len(groups), k), dtype=np.int64)
    for name in names:
        members = np.flatnonzero(groups == name)
        for i in members:
            others = members[members != i]
            bags[i] = rng.choice(others, size=k, replace=False)
    return bags


def _check_class_room(classes: np.ndarray, k: int, own: bool, others: bool, verb: str) -> None:
    """Raises ``BagError`` naming the class when an image could need all ``k`` members from its own class (``own``:
    every class needs ``k + 1`` images) or from the other classes (``others``: the classes but the largest need
    ``k``); ``verb`` says what the members undergo (drawn, redrawn)."""
    names, counts = np.unique(classes, return_counts=True)
    if own and counts.min() < k + 1:
        raise BagError(f"class {names[counts.argmin()]} has {counts.min()} member(s), fewer than K + 1 = {k + 1}: an "
                       f"image may {verb} all K members from its class")
    if others and len(classes) - counts.max() < k:
        raise BagError(f"the classes other than {names[counts.argmax()]} hold {len(classes) - counts.max()} image(s), "
                       f"fewer than K = {k}: an image may {verb} all K members from the other classes")


def label_bags(classes: np.ndarray, k: int, seed: int, purity: float = 1.0) -> np.ndarray:
    """For each image, ``k`` distinct other images, each of its own class (``classes[i]``) with probability
    ``purity`` (the number per bag binomial) and else of another class, drawn uniformly with ``seed`` and in a
    random order. ``purity=1`` is ``group_bags`` by class, draw for draw. Raises ``BagError`` when a class is too
    small for its in-class members or the other classes too small for the rest."""
    if not 0.0 <= purity <= 1.0:
        raise BagError(f"a purity of {purity} is not a probability: give a value from 0 to 1")
    if purity == 1.0:
        return group_bags(classes, k, seed, "class")
    classes = np.asarray(classes)
    _check_class_room(classes, k, own=purity > 0, others=True, verb="draw")
    rng = np.random.default_rng(seed)
    in_class = rng.binomial(k, purity, size=len(classes))
    bags = np.empty((len(classes), k), dtype=np.int64)
    for name in np.unique(classes):
        members, others = np.flatnonzero(classes == name), np.flatnonzero(classes != name)
        for i in members:
            inside = rng.choice(members[members != i], size=in_class[i], replace=False)
            outside = rng.choice(others, size=k - in_class[i], replace=False)
            bags[i] = rng.permutation(np.concatenate([inside, outside]))
    return bags


def random_bags(n: int, k: int, seed: int) -> np.ndarray:
    """For each of ``n`` images, ``k`` distinct other images drawn uniformly with ``seed``."""
    if not 0 < k < n:
        raise BagError(f"K={k} random members need 0 < K < N, the number of images ({n})")
    rng = np.random.default_rng(seed)
    bags = np.empty((n, k), dtype=np.int64)
    for i in range(n):
        draw = rng.choice(n - 1, size=k, replace=False)
        bags[i] = draw + (draw >= i)  # skip i itself
    return bags


def redraw_members(bags: np.ndarray, classes: np.ndarray, which: str, seed: int) -> np.ndarray:
    """``bags`` with one kind of member redrawn in place and the other kept: ``which="same_class"`` replaces each
    member of the image's class (``classes[i]``) with one drawn uniformly from that class, ``"other_class"`` each
    member of another class with one drawn uniformly from the other classes; which members share the image's class is
    unchanged, position by position. The redrawn members of a bag are distinct, never the image and never a kept
    member. Raises ``BagError`` when a class is too small for its redrawn members."""
    if which not in REDRAWS:
        raise BagError(f"redraw {which!r}: give one of {', '.join(REDRAWS)}")
    classes = np.asarray(classes)
    bags = np.asarray(bags)
    if which == "none":
        return bags.copy()
    _check_class_room(classes, bags.shape[1], own=which == "same_class", others=which == "other_class", verb="redraw")
    rng = np.random.default_rng(seed)
    redrawn = bags.copy()
    same = classes[bags] == classes[:, None]  # [N, K]
    replace = same if which == "same_class" else ~same
    for name in np.unique(classes):
        members = np.flatnonzero(classes == name)
        pool = members if which == "same_class" else np.flatnonzero(classes != name)
        for i in members[replace[members].any(axis=1)]:
            slots = np.flatnonzero(replace[i])
            choices = pool[pool != i] if which == "same_class" else pool  # kept members are of the other kind
            redrawn[i, slots] = rng.choice(choices, size=len(slots), replace=False)
    return redrawn


def kmeans_assignments(features: torch.Tensor, clusters: int, seed: int, iterations: int = 25, restarts: int = 3
                       ) -> tuple[np.ndarray, str]:
    """Cluster index of each row of ``features`` (L2-normalised, so spherical k-means) and the backend used: faiss
    when installed (the only practical one at ImageNet scale), else scikit-learn; the best of ``restarts``
    initialisations (one can merge two clusters)."""
    data = np.ascontiguousarray(features.float().cpu().numpy())
    if not 1 < clusters <= len(data):
        raise BagError(f"--kmeans_clusters={clusters} must be between 2 and the number of images ({len(data)})")
    faiss = import_faiss()
    if faiss is None:
        from sklearn.cluster import KMeans

        model = KMeans(n_clusters=clusters, n_init=restarts, max_iter=iterations, random_state=seed).fit(data)
        return model.labels_.astype(np.int64), "scikit-learn"
    kmeans = faiss.Kmeans(data.shape[1], clusters, niter=iterations, nredo=restarts, seed=seed, spherical=True,
                          verbose=False, min_points_per_centroid=1)
    kmeans.train(data)
    _, assignment = kmeans.index.search(data, 1)
    return assignment[:, 0].astype(np.int64), "faiss"


def bag_purity(bags: np.ndarray, labels: np.ndarray) -> float:
    """Percentage of (image, bag member) pairs whose two images share a class: for the report only."""
    labels = np.asarray(labels)
    return float(100.0 * (labels[bags] == labels[:, None]).mean())
