"""Benchmark of the exact neighbour search: seconds and peak memory per backend, N and d; prints a table.

    python bench/knn.py                      # GPU if present: N in {10k, 100k, 1.28M} x d in {2048, 4096}
    python bench/knn.py --sizes 2000,10000 --dims 256 --device cpu

Features are random unit vectors (a hard case: similarities are close together). Each row also checks a sample
of rows against a float64 search, and the GPU rows give the matmul floor, 2*N*N*d / (measured fp16 matmul rate).
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.flags import counts, names
from engine.features import exact_knn, faiss_info


def matmul_tflops(device: torch.device, n: int = 8192, dtype=torch.float16) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return 2 * n**3 / times[len(times) // 2] / 1e12


def check_sample(features: torch.Tensor, idx: torch.Tensor, k: int, rows: int = 200) -> float:
    """Fraction of sampled rows whose neighbours' similarities equal a float64 search's, up to the float32
    rounding of the features (ties allowed)."""
    sample = torch.randperm(features.shape[0])[:rows].to(features.device)
    queries = features[sample].double()
    sims = torch.cat([features[i:i + 65536].double() @ queries.T for i in range(0, features.shape[0], 65536)]).T
    sims[torch.arange(rows, device=sims.device), sample] = float("-inf")
    best = sims.topk(k, dim=1).values
    got = (features[idx.to(features.device)[sample]].double() * queries[:, None, :]).sum(-1)
    return torch.isclose(got, best, atol=1e-6, rtol=0).all(dim=1).double().mean().item()  # up to fp32 rounding


def run(n: int, d: int, k: int, backend: str, device: torch.device) -> dict:
    torch.manual_seed(0)
    features = F.normalize(torch.randn(n, d, device=device if device.type == "cuda" else "cpu"), dim=1)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    idx, _, used = exact_knn(features, k, backend=backend, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    else:  # growth of the maximum resident size: meaningful for the first row of a run only
        peak = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 2**20
    agree = check_sample(features, idx, k)
    return {"backend": used, "n": n, "d": d, "k": k, "seconds": seconds, "peak_gib": peak, "exact_rows": agree}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--sizes", default="10000,100000,1281167", type=counts(2))
    parser.add_argument("--dims", default="2048,4096", type=counts(1))
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backends", default="torch,faiss", type=names(("torch", "faiss")))
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    device = torch.device(args.device)
    backends = [b for b in args.backends if b != "faiss" or faiss_info()[0]]
    floor_rate = matmul_tflops(device) if device.type == "cuda" else None
    rows = []
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; "
          f"fp16 matmul: {floor_rate and round(floor_rate)} TFLOP/s", flush=True)
    for d in args.dims:
        for n in args.sizes:
            for backend in backends:
                row = run(n, d, args.k, backend, device)
                if floor_rate:
                    row["floor_s"] = 2 * n * n * d / (floor_rate * 1e12)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("\n| backend | N | d | K | search s | peak GiB | matmul floor s | x floor | rows exact |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        floor = r.get("floor_s")
        print(f"| {r['backend']} | {r['n']} | {r['d']} | {r['k']} | {r['seconds']:.2f} | {r['peak_gib']:.2f} | "
              f"{floor and round(floor, 2)} | {floor and round(r['seconds'] / floor, 2)} | {r['exact_rows']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
