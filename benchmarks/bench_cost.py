"""What each cache policy costs: tokens/s, memory and the share of time in cache maintenance, 4K..64K tokens.

    python benchmarks/bench_cost.py --budget 512 --stride 128 --threads 1 --out cost.json

One synthetic token stream (random ids, seeded: costs do not depend on the text) is streamed through
SmolLM2-135M by one engine per policy, all at the same budget and stride. The engines take turns chunk by
chunk, so a load change on a shared machine hits every policy alike; each engine's own clock counts only its
own chunks. At every checkpoint length the table reports, per policy and cumulatively from the start:

* tokens/s, and the time relative to streaming_llm's;
* maintenance share: cache compaction (``engine.stats.compact_seconds``) plus attention-score work (column
  sums and the policy's EMA update, ``stats.extra["score_seconds"]``). Score work runs inside the model call,
  so it is taken out of the forward time rather than hidden in it;
* memory held for the stream: the KV buffers (``engine.cache.nbytes()``, preallocated) plus the policy's own
  tensors (Cascading's score EMAs), and the process's peak RSS so far (shared by all engines).

``full`` keeps every token and runs only up to ``--full-max-tokens``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import psutil
import torch

from cache_policies import CachePolicy, check_spec, from_spec
from longread.engine import StreamingEngine
from longread.models import load_model

log = logging.getLogger("bench_cost")

DEFAULT_POLICIES = ["full", "streaming_llm", "lacache:span=15,overlap=0", "cascading:cascades=4"]


def policy_bytes(policy: CachePolicy) -> int:
    """Bytes of the tensors a policy keeps between chunks (e.g. Cascading's per-slot scores)."""
    return sum(v.nbytes for v in vars(policy).values() if isinstance(v, torch.Tensor))


def row(spec: str, engine: StreamingEngine, rss_peak: int) -> dict[str, Any]:
    s = engine.stats
    score = float(s.extra.get("score_seconds", 0.0))
    return {
        "spec": spec,
        "policy": engine.policy.describe(),
        "tokens": s.tokens,
        "seconds": s.seconds,
        "tokens_per_s": s.tokens_per_s,
        "forward_s": s.forward_seconds - score,
        "compact_s": s.compact_seconds,
        "score_s": score,
        "maintenance_share": (s.compact_seconds + score) / s.seconds if s.seconds else 0.0,
        "kv_bytes": engine.cache.nbytes(),
        "policy_bytes": policy_bytes(engine.policy),
        "rss_peak_bytes": rss_peak,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'policy':<64} {'tokens':>6} {'tok/s':>7} {'x sllm':>6} {'maint%':>6} {'compact%':>8} "
        f"{'score%':>6} {'KV MiB':>7} {'state MiB':>9} {'RSS MiB':>8}"
    )
    lines = [head, "-" * len(head)]
    base = {r["tokens"]: r["seconds"] for r in rows if r["spec"] == "streaming_llm"}
    for r in rows:
        rel = r["seconds"] / base[r["tokens"]] if r["tokens"] in base else float("nan")
        lines.append(
            f"{r['policy']:<64} {r['tokens']:>6} {r['tokens_per_s']:>7.1f} {rel:>6.2f} "
            f"{100 * r['maintenance_share']:>5.1f}% {100 * r['compact_s'] / r['seconds']:>7.1f}% "
            f"{100 * r['score_s'] / r['seconds']:>5.1f}% {r['kv_bytes'] / 2**20:>7.1f} "
            f"{r['policy_bytes'] / 2**20:>9.2f} {r['rss_peak_bytes'] / 2**20:>8.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768, 65536])
    parser.add_argument("--budget", type=int, default=512)
    parser.add_argument("--stride", type=int, default=128)
    parser.add_argument("--sink", type=int, default=4)
    parser.add_argument("--policy", action="append", dest="policies", help="repeatable policy spec")
    parser.add_argument("--full-max-tokens", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    if any(n % args.stride for n in args.lengths):
        parser.error(
            f"--lengths must be multiples of --stride {args.stride}, so every checkpoint ends a chunk"
        )
    specs = args.policies or DEFAULT_POLICIES
    model, _ = load_model(args.model)
    lengths = sorted(args.lengths)
    ids = torch.randint(
        0, model.config.vocab_size, (lengths[-1],), generator=torch.Generator().manual_seed(args.seed)
    )

    engines: dict[str, StreamingEngine] = {}
    for spec in specs:
        engines[spec] = StreamingEngine(
            model, from_spec(spec, budget=args.budget, sink=args.sink), stride=args.stride
        )
    limits = {spec: args.full_max_tokens if check_spec(spec)[0] == "full" else lengths[-1] for spec in specs}

    proc = psutil.Process()
    rss_peak = proc.memory_info().rss
    rows: list[dict[str, Any]] = []
    marks = iter(lengths)
    mark = next(marks)
    t0 = time.perf_counter()
    for start in range(0, lengths[-1], args.stride):
        chunk = ids[start : start + args.stride]
        for spec, engine in engines.items():
            if start + chunk.numel() <= limits[spec]:
                engine.forward_chunk(chunk, logits=False)
        rss_peak = max(rss_peak, proc.memory_info().rss)
        if start + chunk.numel() >= mark:
            for spec, engine in engines.items():
                if engine.stats.tokens == mark:
                    rows.append(row(spec, engine, rss_peak))
            log.info("%d tokens streamed by every policy (%.0fs)", mark, time.perf_counter() - t0)
            if args.out:
                args.out.write_text(json.dumps(rows, indent=1))
            mark = next(marks, lengths[-1] + 1)
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    main()
