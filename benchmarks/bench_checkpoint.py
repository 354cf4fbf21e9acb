"""Stream checkpoints: how big one is and what saving and loading one costs, and a stream's overhead.

    python benchmarks/bench_checkpoint.py [--policies streaming_llm lacache cascading full]
        [--part-tokens 2048] [--tokens 8192] [--every 0 4096 1024] [--threads 1] [--s3] [--out FILE.json]

The main job's settings (SmolLM2-135M-Instruct, float32, budget 512 + stride 256, CPU), one Shakespeare
play streamed through one ``StreamWorker`` (summarize, 1,024-token segments, 8-token summaries so the
stream's feeding dominates).

* Parts, per policy (``--policies``; the bounded ones at budget 512, ``full`` holding all
  ``--part-tokens``): after ``--part-tokens`` tokens fed, the size of one checkpoint and the time of each
  step: ``Save`` (the engine's snapshot of the stream, serialized: what the batcher thread pays), the
  checkpoint's bytes (pickling it with the task state), the atomic write to a local output (and to moto's
  S3 with ``--s3``), and the way back: read, unpickle, ``Load``. Each is the median of 5.
* Overhead, with the main job's policy (lacache): the same stream summarized with
  ``output.checkpoint_every_tokens`` of each ``--every`` (0 = none), wall seconds and checkpoints written;
  the difference to 0 is what checkpointing costs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


#: each policy at the main job's budget (cascading: 4 cascades of 127 slots)
POLICIES: dict[str, dict[str, Any]] = {
    "streaming_llm": {"name": "streaming_llm", "budget": 512, "params": {}},
    "lacache": {"name": "lacache", "budget": 512, "params": {"span": 15, "overlap": 0}},
    "cascading": {"name": "cascading", "budget": 512, "params": {"cascades": 4}},
    "full": {"name": "full", "budget": None, "params": {}},
}


def _config(
    book: Path, out: Path, tokens: int, every: int | None, threads: int, policy: str = "lacache"
) -> Any:
    from jobs.config import CONFIG_DIR, config_from_dict, read_yaml

    data = read_yaml(CONFIG_DIR / "summarize_books.yaml")
    data["policy"].update(POLICIES[policy])
    data["input"] = {"paths": [str(book)], "max_tokens_per_stream": tokens}
    data["output"] = {"path": str(out), "checkpoint_every_tokens": every}
    data["resources"] = {"threads_per_actor": threads, "streams_per_actor": 1}
    data["summarize"].update(segment_tokens=1024, min_segment_tokens=256)
    data["summarize"].update(segment_max_new_tokens=8, final_max_new_tokens=8)
    data["progress"] = False
    return config_from_dict("summarize", data, "bench")


def _median(fn: Any, n: int = 5) -> tuple[float, Any]:
    times, value = [], None
    for _ in range(n):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), value


def parts(worker: Any, work: Path, s3: Any | None, tokens: int) -> dict[str, Any]:
    """Each step of one checkpoint, on a stream fed ``tokens`` tokens (a bounded policy's cache is full)."""
    from actors.checkpoint import Checkpoint
    from longread.engine import Snapshot
    from pipeline.output.writer import PartWriter

    engine = worker.engine
    stream = engine.open()
    text = (ROOT / "README.md").read_text()
    ids = worker.env.encode(text * (1 + 4 * tokens // len(text)))[:tokens]
    assert len(ids) == tokens
    for start in range(0, len(ids), engine.stride):
        engine.forward([stream], [ids[start : start + engine.stride]])
    save_s, engine_bytes = _median(lambda: engine.snapshot(stream).to_bytes())
    state = {"rows": [{"output_text": "x" * 300, "segment_index": i} for i in range(8)], "position": 123456}
    checkpoint = Checkpoint("s", "f", 2048, 1.0, 2.0, engine_bytes, state)
    pickle_s, data = _median(checkpoint.to_bytes)
    out: dict[str, Any] = {
        "cache_tokens": engine.kv.length(stream.row),
        "bytes": len(data),
        "engine_bytes": len(engine_bytes),
        "save_s": save_s,
        "pickle_s": pickle_s,
    }
    stores = [("local", PartWriter(str(work / "parts")))]
    if s3 is not None:
        stores.append(("s3", PartWriter("s3://bench/parts", s3)))
    for name, writer in stores:
        writer.prepare()
        out[f"write_{name}_s"], _ = _median(lambda w=writer: w.write_checkpoint("s", data))
        out[f"read_{name}_s"], read = _median(lambda w=writer: w.read_checkpoint("s"))
        assert read == data
    out["unpickle_s"], loaded = _median(lambda: Checkpoint.from_bytes(data))
    target = engine.open()
    out["load_s"], _ = _median(
        lambda: engine.restore(target, Snapshot.from_bytes(loaded.engine, engine.prototype))
    )
    engine.close(target)
    engine.close(stream)
    return out


def overhead(book: Path, work: Path, tokens: int, every: int, threads: int, model: Any) -> dict[str, Any]:
    from actors.stream_worker import StreamWorker
    from pipeline.inputs.sources import expand_inputs
    from pipeline.output.writer import PartWriter

    out = work / f"every-{every}"
    cfg = _config(book, out, tokens, every or None, threads)
    worker = StreamWorker(cfg, "bench", model=model[0], tokenizer=model[1])
    written = []
    write = PartWriter.write_checkpoint

    def counting(self: PartWriter, stream_id: str, data: bytes) -> None:
        t0 = time.perf_counter()
        write(self, stream_id, data)
        written.append((len(data), time.perf_counter() - t0))

    PartWriter.write_checkpoint = counting  # type: ignore[method-assign]
    try:
        task = worker.task
        [unit] = task.plan(expand_inputs(task.inputs(), None, task.read_options()))
        t0 = time.perf_counter()
        [status] = worker.process(unit)
        seconds = time.perf_counter() - t0
    finally:
        PartWriter.write_checkpoint = write  # type: ignore[method-assign]
    assert status["status"] == "ok", status
    return {
        "every": every,
        "tokens": status["tokens"],
        "seconds": seconds,
        "checkpoints": len(written),
        "write_s_total": sum(s for _, s in written),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policies", nargs="+", choices=sorted(POLICIES), default=list(POLICIES))
    parser.add_argument("--part-tokens", type=int, default=2048, help="tokens fed before a checkpoint")
    parser.add_argument("--tokens", type=int, default=8192, help="tokens of the stream in the overhead runs")
    parser.add_argument("--every", type=int, nargs="+", default=[0, 4096, 1024])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--s3", action="store_true", help="also write to moto's S3 on this machine")
    parser.add_argument("--out", type=Path, default=Path("results/bench_checkpoint.json"))
    args = parser.parse_args()

    import torch

    from actors.stream_worker import StreamWorker
    from longread.assets import default_book_path
    from longread.models import load_model

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(tempfile.mkdtemp(prefix="bench-checkpoint-"))
    server = None
    try:
        book = default_book_path()
        model = load_model(None, device="cpu")
        s3 = None
        if args.s3:
            from moto.server import ThreadedMotoServer

            from pipeline.storage import Storage

            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            host, port = server.get_host_and_port()
            s3 = Storage(
                endpoint_url=f"http://{host}:{port}", key="bench", secret="bench", region="us-east-1"
            )

            import s3fs

            # no region here: s3fs would send us-east-1 as a location constraint, which S3 refuses
            s3fs.S3FileSystem(
                key="bench", secret="bench", client_kwargs={"endpoint_url": s3.endpoint_url}
            ).mkdir("bench")
        steps = {}
        for policy in args.policies:
            cfg = _config(book, work / f"parts-job-{policy}", args.tokens, None, args.threads, policy)
            worker = StreamWorker(cfg, "bench", model=model[0], tokenizer=model[1])
            steps[policy] = parts(worker, work / policy, s3, args.part_tokens)
            del worker
        runs = [overhead(book, work, args.tokens, every, args.threads, model) for every in args.every]
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0]
    names = {"save_s": "Save", "pickle_s": "pickle", "write_local_s": "write local",
             "read_local_s": "read local", "write_s3_s": "write S3", "read_s3_s": "read S3",
             "unpickle_s": "unpickle", "load_s": "Load"}  # fmt: skip
    shown = [k for k in names if any(k in st for st in steps.values())]
    print(f"one checkpoint after {args.part_tokens} tokens fed; times in ms (median of 5)\n")
    print("| policy | cached tokens | checkpoint MB | " + " | ".join(names[k] for k in shown) + " |")
    print("|---" * (3 + len(shown)) + "|")
    for policy, st in steps.items():
        cells = " | ".join(f"{st[k] * 1000:.1f}" for k in shown)
        print(f"| {policy} | {st['cache_tokens']} | {st['bytes'] / 2**20:.1f} | {cells} |")
    base = next((r["seconds"] for r in runs if r["every"] == 0), None)
    print(f"\n| checkpoint_every_tokens | tokens | checkpoints | wall s | overhead | load {load:.1f} |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        extra = f"{(r['seconds'] / base - 1) * 100:+.1f}%" if base and r["every"] else ""
        every = r["every"] or "none"
        print(f"| {every} | {r['tokens']} | {r['checkpoints']} | {r['seconds']:.1f} | {extra} | |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {**vars(args), "out": str(args.out)}, "steps": steps,
                                    "runs": runs, "load": load}, indent=1))  # fmt: skip
    print(f"\nJSON: {args.out}")


if __name__ == "__main__":
    main()
