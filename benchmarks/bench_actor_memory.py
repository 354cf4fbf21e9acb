"""Stream-worker memory across streams: RSS after each stream, and what holds the growth.

    python benchmarks/bench_actor_memory.py [--streams 20] [--max-tokens 512] [--variants none gc gc_trim ...]
                                            [--diagnose] [--out FILE.json]

Each variant runs in a fresh process: one ``StreamWorker`` (the actor class, here without Ray) with the
main job's settings (SmolLM2-135M-Instruct on CPU, one torch thread, lacache budget 512, stride 256),
summarizing ``--streams`` different Shakespeare texts of ``--max-tokens`` tokens each (two segment
summaries and a final one per stream, so three snapshot/restore pairs), writing Parquet like the actor.
After every stream it records RSS, glibc's heap (``mallinfo2``: in use, free but kept, mmapped) and what
the variant does between streams:

* ``none``: nothing (what an actor does today);
* ``gc``: ``gc.collect()``, which frees whatever only reference cycles keep alive;
* ``gc_trim``: ``gc.collect()`` then ``malloc_trim(0)``, which also hands free heap pages back to the OS;
* ``gc_mmap``: ``gc.collect()`` with ``MALLOC_MMAP_THRESHOLD_=65536`` in the environment, which keeps
  glibc from moving large (tensor) allocations from mmap into the heap after the first free.

``--diagnose`` adds a run that, after every stream, collects cyclic garbage with ``gc.DEBUG_SAVEALL`` to
see what it was (object types, caches, tensor bytes), counts live objects by type and live tensors, and
diffs ``tracemalloc`` snapshots between stream 2 and the last one. The table compares RSS after stream 2
and after the last; the JSON holds every per-stream sample.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packages, not an editable install's
VARIANTS = ("none", "gc", "gc_trim", "gc_mmap")
MMAP_THRESHOLD = 65536


# ------------------------------------------------------------------------------------- measurements
class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


_LIBC = ctypes.CDLL("libc.so.6")
_LIBC.mallinfo2.restype = _Mallinfo2


def heap() -> dict[str, float]:
    """glibc's view, in MB: heap in use, heap free but kept by the allocator, mmapped blocks."""
    info = _LIBC.mallinfo2()
    mb = 1 / 2**20
    used, free, mapped = info.uordblks * mb, info.fordblks * mb, info.hblkhd * mb
    return {"heap_used_mb": used, "heap_free_mb": free, "mmap_mb": mapped}


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def tensor_bytes(objects: list[Any]) -> tuple[int, int]:
    """(tensors, bytes of their distinct storages) among ``objects``."""
    import torch

    count, storages = 0, {}
    for obj in objects:
        if isinstance(obj, torch.Tensor):
            count += 1
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return count, sum(storages.values())


def cyclic_garbage() -> dict[str, Any]:
    """Collect, keeping what only cycles held (DEBUG_SAVEALL) to describe it, then free it for real."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        garbage = list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    types = collections.Counter(type(o).__name__ for o in garbage)
    tensors, nbytes = tensor_bytes(garbage)
    out = {
        "objects": len(garbage),
        "caches": types.get("BoundedCache", 0),
        "cache_layers": types.get("BoundedLayer", 0),
        "tensors": tensors,
        "tensor_mb": nbytes / 2**20,
        "top_types": types.most_common(8),
    }
    del garbage
    gc.collect()
    return out


def live_counts() -> collections.Counter[str]:
    gc.collect()
    return collections.Counter(type(o).__name__ for o in gc.get_objects())


# --------------------------------------------------------------------------------------- one run
def make_corpus(folder: Path, streams: int) -> list[Path]:
    """``streams`` different texts: Shakespeare works, each cut to ~40 KB (more than --max-tokens needs)."""
    from longread.assets import book_texts

    texts = book_texts()
    if len(texts) < streams:
        raise SystemExit(f"only {len(texts)} sample texts; use --streams <= {len(texts)}")
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, path in enumerate(texts[:streams]):
        target = folder / f"{i:03d}_{path.name}"
        target.write_text(path.read_text(encoding="utf-8", errors="replace")[:40_000], encoding="utf-8")
        out.append(target)
    return out


def run_variant(variant: str, streams: int, max_tokens: int, diagnose: bool) -> dict[str, Any]:
    import torch

    from jobs.config import CONFIG_DIR, config_from_dict, read_yaml
    from pipeline.sharding import plan_tasks
    from pipeline.sources import expand_inputs

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-actor-memory-"))
    make_corpus(work / "in", streams)
    data = read_yaml(CONFIG_DIR / "summarize_books.yaml")
    data["input"] = {"paths": [str(work / "in")], "max_tokens_per_stream": max_tokens}
    data["output"] = {"path": str(work / "out")}
    data["resources"] = {"threads_per_actor": 1}
    # Short generations: the memory at stake is the cache copies each question makes, not the answer.
    data["summarize"].update(segment_tokens=256, min_segment_tokens=64)
    data["summarize"].update(segment_max_new_tokens=8, final_max_new_tokens=8)
    data["progress"] = False
    cfg = config_from_dict("summarize", data, "bench")
    storage = cfg.storage.to_storage()
    sources = expand_inputs(cfg.input.paths, storage, cfg.read_options())
    tasks = plan_tasks("summarize", sources, storage=storage)
    assert len(tasks) == streams, (len(tasks), streams)

    try:
        return _measure(variant, cfg, tasks, diagnose, streams, max_tokens)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _measure(variant: str, cfg: Any, tasks: list[Any], diagnose: bool, streams: int, max_tokens: int) -> Any:
    from actors.stream_worker import StreamWorker

    rss_start = rss_mb()
    worker = StreamWorker(cfg, job_id=f"bench-{variant}")
    samples: list[dict[str, Any]] = [{"stream": 0, "rss_mb": rss_mb(), **heap()}]
    counts_at_2: collections.Counter[str] | None = None
    tracemalloc_at_2 = None
    for i, task in enumerate(tasks, start=1):
        t0 = time.perf_counter()
        (status,) = worker.process(task)
        assert status["status"] == "ok", status
        seconds = time.perf_counter() - t0
        sample: dict[str, Any] = {"stream": i, "seconds": seconds, "tokens": status["tokens"]}
        if diagnose:
            sample["garbage"] = cyclic_garbage()
            live = gc.get_objects()
            sample["live_tensors"], live_bytes = tensor_bytes(live)
            sample["live_tensor_mb"] = live_bytes / 2**20
            kinds = collections.Counter(f"{type(o).__module__}.{type(o).__name__}" for o in live)
            sample["live_caches"] = kinds["longread.cache.BoundedCache"]
            sample["live_snapshots"] = kinds["longread.engine.Snapshot"]
            del kinds
            del live
            if i == 2:
                counts_at_2 = live_counts()
                tracemalloc.start(8)
                tracemalloc_at_2 = tracemalloc.take_snapshot()
        elif variant in ("gc", "gc_trim", "gc_mmap"):
            gc.collect()
        if variant == "gc_trim":
            _LIBC.malloc_trim(0)
        sample.update(rss_mb=rss_mb(), **heap())
        samples.append(sample)
        print(f"  {variant:8s} stream {i:3d}: rss {sample['rss_mb']:7.1f} MB", file=sys.stderr, flush=True)
    result: dict[str, Any] = {
        "variant": "diagnose" if diagnose else variant,
        "streams": streams,
        "max_tokens": max_tokens,
        "rss_before_model_mb": rss_start,
        "samples": samples,
    }
    if diagnose and counts_at_2 is not None and tracemalloc_at_2 is not None:
        growth = live_counts() - counts_at_2
        result["live_object_growth_after_stream_2"] = growth.most_common(15)
        stats = tracemalloc.take_snapshot().compare_to(tracemalloc_at_2, "lineno")
        result["tracemalloc_growth_after_stream_2"] = [
            {"where": str(s.traceback[0]), "size_kb": s.size_diff / 1024, "count": s.count_diff}
            for s in stats[:12]
        ]
        tracemalloc.stop()
    return result


# ------------------------------------------------------------------------------------------ driver
def child(args: argparse.Namespace) -> None:
    variant = args.child
    result = run_variant(variant, args.streams, args.max_tokens, diagnose=variant == "diagnose")
    print(json.dumps(result))


def spawn(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    if variant == "gc_mmap":
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant]
    cmd += ["--streams", str(args.streams), "--max-tokens", str(args.max_tokens)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    samples = result["samples"]
    by = {s["stream"]: s for s in samples}
    last = samples[-1]
    two = by.get(2, last)
    return {
        "variant": result["variant"],
        "rss_loaded_mb": by[0]["rss_mb"],
        "rss_after_2_mb": two["rss_mb"],
        "rss_after_last_mb": last["rss_mb"],
        "ratio_last_over_2": last["rss_mb"] / two["rss_mb"],
        "mb_per_stream_after_2": (last["rss_mb"] - two["rss_mb"]) / max(1, last["stream"] - 2),
        "heap_free_last_mb": last["heap_free_mb"],
        "mmap_last_mb": last["mmap_mb"],
        "s_per_stream": sum(s.get("seconds", 0.0) for s in samples) / max(1, last["stream"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--diagnose", action="store_true", help="also run the diagnostic variant")
    parser.add_argument("--out", type=Path, default=Path("results/bench_actor_memory.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    results = []
    for variant in [*args.variants, *(["diagnose"] if args.diagnose else [])]:
        print(f"running {variant} ...", file=sys.stderr, flush=True)
        results.append(spawn(variant, args))
    rows = [summarize(r) for r in results]
    head = (
        f"| variant | RSS loaded MB | RSS after 2 MB | RSS after {args.streams} MB | ratio "
        "| MB/stream after 2 | heap free (kept) MB | mmapped MB | s/stream |"
    )
    print(head)
    print("|" + "---|" * 9)
    for r in rows:
        print(
            f"| {r['variant']} | {r['rss_loaded_mb']:.0f} | {r['rss_after_2_mb']:.0f} | "
            f"{r['rss_after_last_mb']:.0f} | {r['ratio_last_over_2']:.3f} | "
            f"{r['mb_per_stream_after_2']:.1f} | {r['heap_free_last_mb']:.0f} | {r['mmap_last_mb']:.0f} | "
            f"{r['s_per_stream']:.1f} |"
        )
    for r in results:
        if r["variant"] == "diagnose":
            garbage = [s["garbage"] for s in r["samples"] if "garbage" in s]
            print("\ndiagnose: cyclic garbage per stream (freed only by the cyclic GC):")
            for s, g in zip(r["samples"][1:], garbage):
                print(
                    f"  stream {s['stream']:3d}: {g['objects']:6d} objects, {g['caches']} BoundedCache, "
                    f"{g['tensors']} tensors = {g['tensor_mb']:.1f} MB; live: {s['live_tensors']} tensors "
                    f"= {s['live_tensor_mb']:.1f} MB, {s['live_caches']} caches, "
                    f"{s['live_snapshots']} engine snapshots"
                )
            print("  live objects grown after stream 2:", r.get("live_object_growth_after_stream_2"))
            print("  tracemalloc growth after stream 2 (Python allocations):")
            for t in r.get("tracemalloc_growth_after_stream_2", [])[:8]:
                print(f"    {t['size_kb']:9.1f} KB {t['count']:+6d}  {t['where']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "runs": results}, indent=1))
    print(f"\nJSON: {args.out}")


if __name__ == "__main__":
    main()
