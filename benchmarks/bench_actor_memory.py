"""Stream-worker memory across streams: RSS after each stream, in process and inside a Ray actor.

    python benchmarks/bench_actor_memory.py [--streams 20] [--max-tokens 512] [--concurrent 4]
        [--variants none trim default ray_none ray_default] [--diagnose] [--out FILE.json]

Each variant runs in a fresh process: one ``StreamWorker`` (the actor class) with the main job's settings
(SmolLM2-135M-Instruct on CPU, one torch thread, lacache budget 512, stride 256, ``streams_per_actor``
4), summarizing ``--streams`` different Shakespeare texts of ``--max-tokens`` tokens each (two segment
summaries and a final one per stream), writing Parquet like the actor. ``--concurrent`` threads hand it
one descriptor each at a time, as Ray Data's concurrent calls do, so several streams share the batched
engine. After every stream it records RSS and glibc's heap (``mallinfo2``: in use, free but kept,
mmapped). Variants:

* ``none``: glibc's defaults (a dynamic mmap threshold), nothing between streams (the actor before the fix);
* ``trim``: glibc's defaults, ``gc.collect()`` + ``malloc_trim(0)`` after every stream (a reference only);
* ``default``: the allocator settings the pipeline gives every actor
  (``pipeline.cluster.memory.ALLOCATOR_ENV``, set in the environment before the process starts, as the actors'
  runtime_env does);
* ``ray_none`` / ``ray_default``: the same worker inside a Ray actor (local Ray, ``max_concurrency`` =
  ``--concurrent``), created without / with the pipeline's actor runtime_env
  (``pipeline.cluster.actor_runtime_env``); RSS is the actor process's.

``--diagnose`` adds an in-process run (``default`` settings) that, after every stream, collects cyclic
garbage with ``gc.DEBUG_SAVEALL`` to see what only reference cycles kept alive (it should be nothing),
and counts live tensors. The table compares RSS after stream 2 and after the last; the JSON holds every
per-stream sample.
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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packages, not an editable install's
VARIANTS = ("none", "trim", "default", "ray_none", "ray_default")


# ------------------------------------------------------------------------------------- measurements
def _libc() -> Any:
    """glibc, loaded when called: nothing ctypes lives at module level, so Ray can pickle the probe class."""
    names = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
             "keepcost")  # fmt: skip
    mallinfo2 = type("Mallinfo2", (ctypes.Structure,), {"_fields_": [(n, ctypes.c_size_t) for n in names]})
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = mallinfo2
    return libc


def heap() -> dict[str, float]:
    """glibc's view, in MB: heap in use, heap free but kept by the allocator, mmapped blocks."""
    info = _libc().mallinfo2()
    mb = 1 / 2**20
    used, free, mapped = info.uordblks * mb, info.fordblks * mb, info.hblkhd * mb
    return {"heap_used_mb": used, "heap_free_mb": free, "mmap_mb": mapped}


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def cyclic_garbage() -> dict[str, Any]:
    """Collect, keeping what only cycles held (DEBUG_SAVEALL) to describe it, then free it for real."""
    import torch

    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        garbage = list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    types = collections.Counter(type(o).__name__ for o in garbage)
    tensors = [o for o in garbage if isinstance(o, torch.Tensor)]
    out = {
        "objects": len(garbage),
        "tensors": len(tensors),
        "tensor_mb": sum(t.untyped_storage().nbytes() for t in tensors) / 2**20,
        "top_types": types.most_common(6),
    }
    del garbage, tensors
    gc.collect()
    return out


def live_tensors() -> tuple[int, float]:
    import torch

    storages: dict[int, int] = {}
    count = 0
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor):
            count += 1
            storages[obj.untyped_storage().data_ptr()] = obj.untyped_storage().nbytes()
    return count, sum(storages.values()) / 2**20


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


def job(work: Path, streams: int, max_tokens: int, concurrent: int) -> tuple[Any, list[Any]]:
    """The main job's config on a corpus of ``streams`` texts, and its stream descriptors."""
    from actors.tasks import make_task
    from jobs.config import CONFIG_DIR, config_from_dict, read_yaml
    from pipeline.inputs.sources import expand_inputs

    make_corpus(work / "in", streams)
    data = read_yaml(CONFIG_DIR / "summarize_books.yaml")
    data["input"] = {"paths": [str(work / "in")], "max_tokens_per_stream": max_tokens}
    data["output"] = {"path": str(work / "out")}
    data["resources"] = {"threads_per_actor": 1, "streams_per_actor": concurrent}
    # Short generations: the memory at stake is what each stream allocates, not the answers.
    data["summarize"].update(segment_tokens=256, min_segment_tokens=64)
    data["summarize"].update(segment_max_new_tokens=8, final_max_new_tokens=8)
    data["progress"] = False
    cfg = config_from_dict("summarize", data, "bench")
    task = make_task(cfg, None)
    units = task.plan(expand_inputs(task.inputs(), None, task.read_options()))
    assert len(units) == streams, (len(units), streams)
    return cfg, units


class Probe:
    """The measured worker: runs descriptors from ``concurrent`` threads, samples memory after each."""

    def __init__(self, cfg: Any, concurrent: int, between: str, diagnose: bool) -> None:
        import torch

        from actors.stream_worker import StreamWorker

        torch.set_num_threads(1)
        self.rss_start = rss_mb()
        self.worker = StreamWorker(cfg, job_id="bench-memory")
        self.concurrent, self.between, self.diagnose = concurrent, between, diagnose
        self.lock = threading.Lock()
        self.samples: list[dict[str, Any]] = [{"stream": 0, "rss_mb": rss_mb(), **heap()}]

    def pid(self) -> int:
        return os.getpid()

    def one(self, unit_json: str) -> None:
        from pipeline.job.plan import StreamTask

        t0 = time.perf_counter()
        (status,) = self.worker.process(StreamTask.from_json(unit_json))
        assert status["status"] == "ok", status
        with self.lock:  # one sample at a time; the other threads' streams keep running meanwhile
            sample: dict[str, Any] = {"stream": len(self.samples), "seconds": time.perf_counter() - t0}
            if self.between == "trim":
                gc.collect()
                _libc().malloc_trim(0)
            if self.diagnose:
                sample["garbage"] = cyclic_garbage()
                sample["live_tensors"], sample["live_tensor_mb"] = live_tensors()
            sample.update(rss_mb=rss_mb(), **heap())
            self.samples.append(sample)
            line = f"  stream {sample['stream']:3d}: rss {sample['rss_mb']:7.1f} MB"
            print(line, file=sys.stderr, flush=True)

    def run(self, units_json: list[str]) -> dict[str, Any]:
        with ThreadPoolExecutor(self.concurrent) as pool:
            list(pool.map(self.one, units_json))
        return {"rss_before_model_mb": self.rss_start, "samples": self.samples}


def run_in_process(variant: str, streams: int, max_tokens: int, concurrent: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-actor-memory-"))
    try:
        cfg, units = job(work, streams, max_tokens, concurrent)
        between = "trim" if variant == "trim" else "none"
        probe = Probe(cfg, concurrent, between, diagnose=variant == "diagnose")
        return probe.run([u.to_json() for u in units])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_in_ray(variant: str, streams: int, max_tokens: int, concurrent: int) -> dict[str, Any]:
    import ray

    from pipeline.cluster.session import actor_runtime_env

    work = Path(tempfile.mkdtemp(prefix="bench-actor-memory-"))
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="WARNING")
    try:
        cfg, units = job(work, streams, max_tokens, concurrent)
        options: dict[str, Any] = {"num_cpus": 1, "max_concurrency": concurrent}
        if variant == "ray_default":
            options["runtime_env"] = actor_runtime_env()
        actor = ray.remote(Probe).options(**options).remote(cfg, concurrent, "none", False)
        result = ray.get(actor.run.remote([u.to_json() for u in units]))
        result["actor_pid"] = ray.get(actor.pid.remote())
        return result
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------------------ driver
def child(args: argparse.Namespace) -> None:
    variant = args.child
    run = run_in_ray if variant.startswith("ray_") else run_in_process
    result = run(variant, args.streams, args.max_tokens, args.concurrent)
    result.update(variant=variant, streams=args.streams, max_tokens=args.max_tokens)
    print(json.dumps(result))


def spawn(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.cluster.memory import ALLOCATOR_ENV

    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV and k != "RAY_ADDRESS"}
    env["TOKENIZERS_PARALLELISM"] = "false"
    if variant in ("default", "diagnose"):
        env.update(ALLOCATOR_ENV)
        env.update(dict(item.split("=", 1) for item in args.allocator_env or []))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant]
    cmd += ["--streams", str(args.streams), "--max-tokens", str(args.max_tokens)]
    cmd += ["--concurrent", str(args.concurrent)]
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
    parser.add_argument("--concurrent", type=int, default=4, help="streams at once (streams_per_actor)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--diagnose", action="store_true", help="also run the diagnostic variant")
    parser.add_argument(
        "--allocator-env", nargs="*", metavar="KEY=VALUE", help="other settings for 'default' (in process)"
    )
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
    print(
        f"| variant | RSS loaded MB | RSS after 2 MB | RSS after {args.streams} MB | ratio "
        "| MB/stream after 2 | heap free (kept) MB | mmapped MB | s/stream |"
    )
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
            print("\ndiagnose: cyclic garbage and live tensors after each stream:")
            for s in r["samples"][1:]:
                g = s["garbage"]
                print(
                    f"  stream {s['stream']:3d}: cyclic garbage {g['objects']} objects, {g['tensors']} "
                    f"tensors ({g['tensor_mb']:.1f} MB); live {s['live_tensors']} tensors "
                    f"({s['live_tensor_mb']:.1f} MB)"
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "runs": results}, indent=1))
    print(f"\nJSON: {args.out}")


if __name__ == "__main__":
    main()
