"""Many streams per accelerator: aggregate feed and decode tokens/s of the batched engine, per policy and
batch size, side by side with the bare model step (transformers' DynamicCache at the same batch, context
and chunk) measured in the same run.

    python benchmarks/bench_batch.py --batches 1 2 4 8                       # CPU, the embedded SmolLM2
    python benchmarks/bench_batch.py --device cuda --geometry llama-3.1-8b --dtype bfloat16 \\
        --budget 2048 --stride 512 --batches 1 8 32                           # GPU, random weights

For each policy and batch size B: B streams are opened in one ``BatchEngine``, warmed up until their caches
are full (``budget + stride`` tokens each, untimed), then fed ``--feed-chunks`` more chunks of ``stride``
random tokens each, all B in one forward per chunk (aggregate feed tokens/s), then generate
``--decode-tokens`` tokens each, all B in one forward per step (aggregate decode tokens/s). The engine's
device timers give the shares of compaction and of attention-score work; ``kv/stream`` is the cache memory
per stream and ``peak`` the row's peak memory (GPU: allocated; CPU: the RSS high-water mark).

The bare model step is what a batch-B engine could reach at best: one forward of a ``stride``-token chunk
(or one token) for B rows over a DynamicCache holding ``budget`` tokens per row, cropped back after every
step so the context stays the same. Random weights built from a config (``--geometry``) time the same as
real ones; nothing is downloaded. Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import torch

from cache_policies import from_spec
from experiments.geometries import GEOMETRIES, random_model
from longread.engine import BatchEngine
from longread.generation import GenerationSettings
from longread.graphs import GraphSteps, RecordedGraphs

log = logging.getLogger("bench_batch")

#: lacache without a span gets the paper's span = layers / 2 (15 on SmolLM2, 8 on 1B, 16 on 8B).
DEFAULT_POLICIES = ["streaming_llm", "lacache", "cascading:cascades=4", "full"]


#: The timer of every row: wall time, or with ``--clock cpu`` this process's CPU time (a shared machine's
#: other jobs then cost nothing; meaningful on CPU with ``--threads 1``, where the process uses one core).
clock = time.perf_counter


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """Start a new peak: the CUDA allocator's, or (Linux) the process's RSS high-water mark."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pass  # elsewhere the peak is the process's since it started


def peak_bytes(device: torch.device) -> int:
    """The peak since ``reset_peak``: CUDA memory allocated, or the process's RSS high-water mark."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return max(
        int(psutil.Process().memory_info().rss), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )


def spec_params(spec: str, budget: int, layers: int) -> dict[str, Any]:
    name = spec.split(":")[0]
    params: dict[str, Any] = {} if name == "full" else {"budget": budget}
    if name == "lacache" and "span=" not in spec:
        params["span"] = layers // 2
    return params


def timed(step: Callable[[], Any], warm: int, n: int, device: torch.device) -> float:
    """Seconds (``clock``) of ``n`` calls of ``step``, device work included, after ``warm`` untimed ones."""
    for _ in range(warm):
        step()
    sync(device)
    t0 = clock()
    for _ in range(n):
        step()
    sync(device)
    return clock() - t0


def replayed(engine: BatchEngine, step: Callable[[], Any], warm: int, n: int, device: torch.device) -> float:
    """``timed`` with CUDA graphs on, checking that every timed step replayed a captured graph."""
    engine.cuda_graphs = True
    for _ in range(warm):
        step()
    before = engine.graphs.replays
    seconds = timed(step, 0, n, device)
    if engine.graphs.replays - before != n:
        raise RuntimeError(f"{engine.graphs.replays - before} of {n} steps replayed")
    return seconds


def bench_engine(model: Any, spec: str, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    device = next(model.parameters()).device
    layers = model.config.get_text_config().num_hidden_layers
    policy = from_spec(spec, **spec_params(spec, args.budget, layers), sink=args.sink)
    engine = BatchEngine(model, policy, rows=batch, stride=args.stride, rope_mode=args.rope_mode)
    vocab = engine.vocab_size
    gen = torch.Generator().manual_seed(batch)
    streams = [engine.open() for _ in range(batch)]

    def chunk() -> list[torch.Tensor]:
        return [torch.randint(0, vocab, (args.stride,), generator=gen) for _ in streams]

    def feed_step() -> None:
        engine.forward(streams, chunk())

    warm = -(-(args.budget + args.stride) // args.stride)
    timed(feed_step, warm, 0, device)  # fill every cache to its steady state (and warm up kernels)
    engine.stats = type(engine.stats)()
    feed_s = timed(feed_step, 0, args.feed_chunks, device)
    stats = engine.stats
    total = stats.seconds
    feed = {  # shares of the timed chunks only (the profiler's chunks below add to the same stats)
        "feed_tokens_per_s": batch * args.stride * args.feed_chunks / feed_s,
        "compact_share": stats.compact_seconds / total if total else 0.0,
        "score_share": stats.extra["score_seconds"] / total if total else 0.0,
        "feed_graph_tokens_per_s": None,
    }
    if args.profile and batch == 1:
        profile_feed(engine, streams, chunk, spec, device)
    if args.cuda_graphs:
        if device.type != "cuda":  # a dry run of the GPU measurement: CUDA-graph semantics, CPU timings
            engine.graphs = GraphSteps(RecordedGraphs())
        try:  # the same steady-state chunks replayed from a captured graph (longread.graphs)
            # warm: first sighting, then capture (+ replay)
            graph_s = replayed(engine, feed_step, 2, args.feed_chunks, device)
            feed["feed_graph_tokens_per_s"] = batch * args.stride * args.feed_chunks / graph_s
            if args.profile and batch == 1:
                profile_feed(engine, streams, chunk, spec + " (CUDA graphs)", device)
        except Exception as exc:  # a measurement, not a requirement: report and go on
            log.warning("CUDA-graph feed failed for %s B=%d: %r", spec, batch, exc)
        engine.cuda_graphs = False
    settings = GenerationSettings(max_new_tokens=3 * args.decode_tokens + 8)
    decoders = [engine.decoder(settings) for _ in streams]
    for d in decoders:
        d.eos = set()  # random weights: never stop early

    def decode_step() -> None:
        engine.decode(streams, decoders)

    # 3 warm-up steps: kernels compile and autotune on first use
    decode_s = timed(decode_step, 3, args.decode_tokens - 1, device)
    graph_rate = None
    if args.cuda_graphs:
        try:  # one-token steps have static shapes only with per-token compaction
            engine.decode_compaction = "token"
            # warm: compaction of the waiting tokens, first sighting, capture (+ replay)
            graph_s = replayed(engine, decode_step, 3, args.decode_tokens - 1, device)
            graph_rate = batch * (args.decode_tokens - 1) / graph_s
        except Exception as exc:  # a measurement, not a requirement: report and go on
            log.warning("CUDA-graph decode failed for %s B=%d: %r", spec, batch, exc)
    return {
        "policy": spec,
        "batch": batch,
        **feed,
        "decode_tokens_per_s": batch * (args.decode_tokens - 1) / decode_s,
        "decode_graph_tokens_per_s": graph_rate,
        "kv_bytes_per_stream": engine.kv.nbytes() // batch,
        "peak_bytes": peak_bytes(device),
    }


def profile_feed(engine: Any, streams: list[Any], chunk: Any, spec: str, device: torch.device) -> None:
    """Where one stream's feed time goes: torch.profiler over two chunks, top operators by device time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(2):
            engine.forward(streams, chunk())
        sync(device)
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    log.info(
        "profile of %s, B=1, two chunks:\n%s", spec, prof.key_averages().table(sort_by=key, row_limit=25)
    )


@torch.inference_mode()
def bench_bare(model: Any, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    """transformers' own step: DynamicCache of ``budget`` tokens per row, a ``stride`` chunk or one token."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    past = DynamicCache(config=model.config)
    ids = torch.randint(0, vocab, (batch, args.budget), generator=gen).to(device)
    model(input_ids=ids, cache=past, use_cache=True, logits_to_keep=1)

    def step(width: int) -> None:
        x = torch.randint(0, vocab, (batch, width), generator=gen).to(device)
        model(input_ids=x, cache=past, use_cache=True, logits_to_keep=1)
        past.crop(-width)  # back to `budget` cached tokens: the same context at every step

    feed_s = timed(lambda: step(args.stride), 2, args.feed_chunks, device)
    feed = batch * args.stride * args.feed_chunks / feed_s
    decode = batch * (args.decode_tokens - 1) / timed(lambda: step(1), 3, args.decode_tokens - 1, device)
    return {
        "policy": "bare model step",
        "batch": batch,
        "feed_tokens_per_s": feed,
        "decode_tokens_per_s": decode,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'policy':<28} {'B':>3} {'feed tok/s':>10} {'x bare':>6} {'compact%':>8} {'score%':>6} "
        f"{'graph feed':>10} {'x bare':>6} {'decode tok/s':>12} {'x bare':>6} {'graph dec':>9} "
        f"{'kv/stream MiB':>13} {'peak MiB':>9}"
    )
    lines = [head, "-" * len(head)]
    bare = {r["batch"]: r for r in rows if r["policy"] == "bare model step"}
    for r in rows:
        b = bare.get(r["batch"])
        fx = r["feed_tokens_per_s"] / b["feed_tokens_per_s"] if b else float("nan")
        dx = r["decode_tokens_per_s"] / b["decode_tokens_per_s"] if b else float("nan")
        extra = (
            f"{100 * r['compact_share']:>7.1f}% {100 * r['score_share']:>5.1f}%"
            if "compact_share" in r
            else f"{'':>8} {'':>6}"
        )
        mem = (
            f"{r['kv_bytes_per_stream'] / 2**20:>13.1f} {r['peak_bytes'] / 2**20:>9.0f}"
            if "kv_bytes_per_stream" in r
            else f"{'':>13} {'':>9}"
        )
        graph = r.get("decode_graph_tokens_per_s") or float("nan")
        graph_feed = r.get("feed_graph_tokens_per_s") or float("nan")
        gx = graph_feed / b["feed_tokens_per_s"] if b else float("nan")
        lines.append(
            f"{r['policy']:<28} {r['batch']:>3} {r['feed_tokens_per_s']:>10.0f} {fx:>6.2f} {extra} "
            f"{graph_feed:>10.0f} {gx:>6.2f} {r['decode_tokens_per_s']:>12.1f} {dx:>6.2f} {graph:>9.1f} {mem}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="default", help="'default' (SmolLM2) or a model folder; see --geometry")
    p.add_argument("--geometry", choices=sorted(GEOMETRIES), help="random weights of this geometry")
    p.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--policy", action="append", dest="policies", help="repeatable spec; default: all four")
    p.add_argument("--budget", type=int, default=512)
    p.add_argument("--sink", type=int, default=4)
    p.add_argument("--stride", type=int, default=256)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--feed-chunks", type=int, default=4)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-bare", action="store_true")
    p.add_argument(
        "--no-discard",
        action="store_true",
        help="CUDA: no discarded engine after each bare step (to study the first-engine slowdown)",
    )
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="also time feed and decode replayed from CUDA graphs (on CPU: a dry run through the "
        "recorded-op emulator of longread.graphs; its timings mean nothing)",
    )
    p.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall", help="cpu: process CPU time (shared CPU machines)"
    )
    p.add_argument("--rope-mode", choices=["delta", "read"], default=None, help="default: per dtype")
    p.add_argument("--profile", action="store_true", help="log a torch.profiler table of B=1 feeding")
    p.add_argument("--out", type=Path, default=Path("bench_batch.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        if args.device != "cpu":
            p.error("--clock cpu measures the host's CPU time: use it with --device cpu")
        global clock
        clock = time.process_time
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    if args.geometry:
        model = random_model(args.geometry, dtype, args.device, args.attn)
        name = f"{args.geometry} (random weights)"
    else:
        from longread.models import load_model

        model, _ = load_model(args.model, dtype=dtype, device=args.device, attn_implementation=args.attn)
        name = args.model
    device = next(model.parameters()).device
    rows: list[dict[str, Any]] = []
    if device.type == "cuda":  # clocks, cuBLAS heuristics, lazy module loading: not part of any row
        bench_bare(model, args.batches[0], args)
    for batch in args.batches:
        if not args.no_bare:
            rows.append(bench_bare(model, batch, args))
            log.info("%s", rows[-1])
            if device.type == "cuda" and not args.no_discard:
                # On the H100 the first engine measured after a bare step decoded 2-4x slower, whatever its
                # policy (three runs; BENCHMARKS.md): a discarded engine absorbs that.
                short = argparse.Namespace(
                    **{**vars(args), "feed_chunks": 1, "decode_tokens": 4, "profile": False}
                )
                bench_engine(model, (args.policies or DEFAULT_POLICIES)[0], batch, short)
                gc.collect()
        for spec in args.policies or DEFAULT_POLICIES:
            reset_peak(device)
            rows.append(bench_engine(model, spec, batch, args))
            log.info("%s", rows[-1])
            gc.collect()
    print(f"{name}, {device}, {dtype}, budget {args.budget}, stride {args.stride}, attention {args.attn}")
    print(format_table(rows))
    meta = {k: str(v) for k, v in vars(args).items()}
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
