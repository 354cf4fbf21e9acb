"""Pipeline throughput: streams/s and tokens/s of the book summarization job, by actors and streams per actor.

    python benchmarks/bench_pipeline.py [--actors 1 2] [--streams-per-actor 1 4] [--max-tokens 2000]
        [--split-parts 1] [--out FILE.json]

Runs the main job's configuration (jobs/configs/summarize_books.yaml: SmolLM2-135M-Instruct, lacache
budget 512, stride 256, the three sample plays) once per actor count on one local Ray instance, each time
into a fresh output folder, with one torch thread per actor. Wall time covers the whole job as a user sees
it once Ray is up: planning, actor start-up (model loading), streaming, generation and Parquet writes.
Three streams on two actors leave one actor idle for the last one; ``--split-parts 2`` makes six.
``--streams-per-actor`` sets ``resources.streams_per_actor``: how many streams each actor runs at once on
its batched engine (one row per value and actor count).
Also prints the machine's load average, since other processes on a small machine skew the numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from jobs.config import CONFIG_DIR, config_from_dict, read_yaml
from jobs.run import run_job
from pipeline.output.writer import PartWriter


def run_once(actors: int, streams: int, max_tokens: int, split_parts: int, out: Path) -> dict[str, Any]:
    data = read_yaml(CONFIG_DIR / "summarize_books.yaml")
    data["input"]["max_tokens_per_stream"] = max_tokens
    data["input"]["split_parts"] = split_parts
    data["input"]["min_split_bytes"] = 1
    data["output"] = {"path": str(out)}
    data["resources"] = {"actors": actors, "threads_per_actor": 1, "streams_per_actor": streams}
    data["progress"] = False
    cfg = config_from_dict("summarize", data, "bench")
    t0 = time.perf_counter()
    report = run_job(cfg)
    wall = time.perf_counter() - t0
    rows = PartWriter(str(out)).read().to_pandas()
    finals = rows[rows.row_kind == "final"]
    return {
        "actors": actors,
        "streams_per_actor": streams,
        "split_parts": split_parts,
        "streams": report.streams_ok,
        "errors": report.streams_error,
        "tokens": report.tokens,
        "generations": len(rows[rows.row_kind != "error"]),
        "wall_s": wall,
        "streams_per_s": report.streams_ok / wall,
        "tokens_per_s": report.tokens / wall,
        "feed_tokens_per_s_per_actor": float(finals.tokens_per_second.mean()),
        "load_avg_1m": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--streams-per-actor", type=int, nargs="+", default=[1])
    parser.add_argument("--max-tokens", type=int, default=2000, help="tokens per book (the main job: 4000)")
    parser.add_argument(
        "--split-parts",
        type=int,
        default=1,
        help="split each play into N parallel streams (more, shorter streams)",
    )
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import ray

    ray.init(
        address="local", num_cpus=max(args.actors), include_dashboard=False, logging_level=logging.WARNING
    )
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in args.actors:
                for streams in args.streams_per_actor:
                    out = Path(tmp) / f"actors-{n}-streams-{streams}"
                    rows.append(run_once(n, streams, args.max_tokens, args.split_parts, out))
    finally:
        ray.shutdown()
    base = rows[0]["wall_s"]
    print(
        f"{'actors':>6} {'per actor':>9} {'streams':>7} {'tokens':>7} {'gens':>5} {'wall s':>7} "
        f"{'streams/s':>9} {'tokens/s':>8} {'speedup':>7} {'feed tok/s/actor':>16} {'load':>5}"
    )
    for r in rows:
        print(
            f"{r['actors']:>6} {r['streams_per_actor']:>9} {r['streams']:>7} {r['tokens']:>7} "
            f"{r['generations']:>5} {r['wall_s']:>7.1f} {r['streams_per_s']:>9.4f} {r['tokens_per_s']:>8.1f} "
            f"{base / r['wall_s']:>6.2f}x {r['feed_tokens_per_s_per_actor']:>16.1f} {r['load_avg_1m']:>5.1f}"
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
