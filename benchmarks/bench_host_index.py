"""What building the rows' keep-indices costs on the host at every decode step (issue 8 analysis).

    python benchmarks/bench_host_index.py [--layers 32 --rows 32 --heads 8 --budget 2048]

Before, each row's shared ``(T,)`` keep-index (StreamingLLM, LaCache's per-layer ``(L, T)`` likewise) was
expanded to ``(L, H, T)`` and the rows stacked into one ``(L, B, H, T)`` int64 host tensor, then copied
into pinned memory and sent; now the rows are stacked in their own shape (``(B, T)``) and expanded on the
device as views. Times both constructions on this machine's CPU (the pinned copy is stood in for by a
host copy where there is no CUDA).
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--budget", type=int, default=2048)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    n = a.budget + 1
    picks = [torch.cat([torch.arange(4), torch.arange(n - (a.budget - 4), n)]) for _ in range(a.rows)]
    copy = torch.Tensor.pin_memory if torch.cuda.is_available() else torch.Tensor.clone
    t0 = time.perf_counter()
    for _ in range(a.repeat):
        full = copy(torch.stack([q.expand(a.layers, a.heads, -1) for q in picks], dim=1))
    before = (time.perf_counter() - t0) / a.repeat
    t0 = time.perf_counter()
    for _ in range(a.repeat):
        small = copy(torch.stack(picks, dim=0))
    after = (time.perf_counter() - t0) / a.repeat
    print(f"{'index':<30} {'bytes':>12} {'ms per step':>12}")
    print(f"{'(L, B, H, T) on the host':<30} {full.nbytes:>12,} {before * 1000:>12.1f}")
    print(f"{'(B, T), expanded on device':<30} {small.nbytes:>12,} {after * 1000:>12.2f}")


if __name__ == "__main__":
    main()
