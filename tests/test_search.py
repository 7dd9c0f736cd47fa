import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.features import exact_knn, faiss_info, search

BACKENDS = ["torch"] + (["faiss"] if faiss_info()[0] else [])


def _reference(features: torch.Tensor, k: int) -> np.ndarray:
    x = features.double()
    sims = x @ x.T
    sims.fill_diagonal_(float("-inf"))
    return sims.argsort(dim=1, descending=True)[:, :k].numpy()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,d,k", [(300, 32, 5), (257, 64, 1), (50, 8, 49)])
def test_neighbours_equal_a_float64_brute_force(backend, n, d, k):
    torch.manual_seed(n + d + k)
    features = F.normalize(torch.randn(n, d), dim=1)
    idx, sims, used = exact_knn(features, k, backend=backend, chunk=37)
    assert idx.dtype == torch.int64 and idx.shape == (n, k)
    np.testing.assert_array_equal(idx.numpy(), _reference(features, k))
    assert torch.all(sims[:, :-1] >= sims[:, 1:])
    assert used.startswith(backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicates_never_list_themselves(backend):
    torch.manual_seed(0)
    features = F.normalize(torch.randn(40, 16), dim=1)
    features[7] = features[3]  # two identical images
    features[20:26] = features[20]  # six copies of one image: more than K + 1
    idx, _, _ = exact_knn(features, 4, backend=backend)
    assert not (idx.numpy() == np.arange(40)[:, None]).any()
    assert idx[3, 0] == 7 and idx[7, 0] == 3
    assert set(idx[20].tolist()) <= set(range(21, 26))


def test_auto_picks_an_installed_backend_and_bad_k_fails():
    features = F.normalize(torch.randn(10, 4), dim=1)
    _, _, used = exact_knn(features, 3)
    assert used == ("faiss-cpu" if faiss_info()[0] else "torch-cpu")
    with pytest.raises(ValueError, match="K=10"):
        exact_knn(features, 10)


def test_cross_search_matches_reference():
    torch.manual_seed(1)
    queries, database = F.normalize(torch.randn(30, 8), dim=1), F.normalize(torch.randn(100, 8), dim=1)
    idx, sims = search(queries, database, 7, chunk=8)
    expected = (queries.double() @ database.double().T).argsort(dim=1, descending=True)[:, :7]
    assert torch.equal(idx, expected)


@pytest.mark.parametrize("kind", ["random", "clustered", "fewer_blocks_than_candidates"])
def test_two_stage_half_precision_search_is_exact(kind):
    """The GPU algorithm (fp16 candidates through a blocked top-k, fp32 re-ranking, certified fallback), run on the
    CPU: it must equal the float32 search."""
    from engine.features import _two_stage_knn
    torch.manual_seed(5)
    n = 700
    if kind == "random":
        features = F.normalize(torch.randn(700, 32), dim=1)
    elif kind == "fewer_blocks_than_candidates":  # 40 rows in 3 blocks of 16, 21 candidates wanted
        n = 40
        features = F.normalize(torch.randn(40, 32), dim=1)
    else:
        centres = F.normalize(torch.randn(10, 32), dim=1)
        features = F.normalize(centres[torch.randint(0, 10, (700,))] + 0.02 * torch.randn(700, 32), dim=1)
        features[50:60] = features[50]
    messages = []
    idx, sims = _two_stage_knn(features, 5, torch.device("cpu"), chunk=128, report=messages.append, block=16)
    ref_idx, ref_sims = search(features, features, 5, exclude_self=True)
    assert torch.allclose(sims, ref_sims, atol=1e-6)
    # rows 50-59 are identical images: they tie with each other, in their own rows and in every row listing them
    duplicates = set(range(50, 60)) if kind == "clustered" else set()
    tie_free = [i for i in range(n) if i not in duplicates and not duplicates & set(ref_idx[i].tolist())]
    assert len(tie_free) > n // 2
    assert torch.equal(idx[tie_free], ref_idx[tie_free])
    assert not (idx == torch.arange(n)[:, None]).any()
    if kind == "clustered":
        assert any("re-searched" in m for m in messages)  # near-ties took the exact fallback


def test_block_topk_equals_topk():
    from engine.features import _block_topk
    torch.manual_seed(0)
    sims = torch.randn(20, 64 * 8)
    values, columns = _block_topk(sims, 7, 64)
    ref_values, ref_columns = sims.topk(7, dim=1)
    assert torch.equal(values, ref_values) and torch.equal(columns, ref_columns)


@pytest.mark.skipif(not faiss_info()[0], reason="faiss is not installed")
def test_faiss_is_imported_without_its_loaders_lines_in_the_log():
    """absl shows INFO, where faiss's loader names each instruction set it tries and the ModuleNotFoundError of each
    one its wheel lacks: a user reads that as a failure. A plain import shows them (the control); ours does not."""
    import subprocess
    import sys

    def stderr(statement: str) -> str:
        code = f"import logging; logging.basicConfig(level=logging.INFO); {statement}"
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr

    assert "INFO:faiss.loader:Loading faiss" in stderr("import faiss")
    assert "faiss" not in stderr("from engine.features import import_faiss; assert import_faiss() is not None")
