"""How faithful is each pos-shift implementation in bf16? Both against a float32 run of the same stream.

    python benchmarks/bench_bf16_rope.py --threads 1 --tokens 16384 --stride 256 --out bf16_rope.json
    python benchmarks/bench_bf16_rope.py --device cuda --geometry llama-3.2-1b --tokens 65536 \\
        --budget 2048 --stride 512 --out bf16_rope_gpu.json

``rope_mode="delta"`` stores keys rotated at their slot and re-rotates every moved key at every compaction,
rounding it to the cache dtype each time; ``"read"`` stores keys as inserted and rotates them into a
temporary on every read (one rounding, never accumulated). For every policy and stride, one float32 engine
(the reference) and one low-precision engine per mode stream the same tokens in lockstep, chunk by chunk.
Per position the script compares next-token distributions: KL(fp32 || low) (mean, p99, max, the mean over
the first and the last quarter of the stream -- growth between them is accumulation), the largest
|logit difference|, and the perplexity of each run (drift = low / fp32 - 1). It also reports
KL(delta || read), the quantity measured in issue 10.

Geometries: ``smollm2`` is the embedded SmolLM2-135M (real weights) streaming Hamlet (the text
``experiments.stream_ppl`` uses); ``llama-3.2-1b`` is that model's architecture built by hand from its config
(random weights, random token ids: nothing is downloaded); ``tiny`` is a 4-layer toy for tests. The
low-precision model is the float32 one's weights cast (inverse RoPE frequencies stay float32, as in a
model loaded in bf16). Score-based policies (Cascading) pick what to keep from each run's own attention,
so their caches may diverge between runs: that is part of what a user of the low-precision run gets.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from cache_policies import from_spec, parse_spec
from experiments.geometries import GEOMETRIES, config
from longread.engine import StreamingEngine
from longread.models import resolve_dtype

log = logging.getLogger("bench_bf16_rope")

DEFAULT_POLICIES = ["streaming_llm", "lacache:span=15,overlap=0", "cascading:cascades=4"]
MODES = ("delta", "read")
SEGMENTS = 16  # the per-position KL curve in the JSON: mean per 1/16 of the stream


def random_models(geometry: str, dtype: torch.dtype, device: str, seed: int) -> tuple[Any, Any]:
    """(float32 model, the same weights in ``dtype``), random, built on ``device`` from a config."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        ref = AutoModelForCausalLM.from_config(config(geometry), dtype=torch.float32).eval()
        low = AutoModelForCausalLM.from_config(config(geometry), dtype=dtype).eval()
    low.load_state_dict(ref.state_dict())  # casts; non-persistent inv_freq stays float32 in both
    return ref, low


def stream_ids(args: argparse.Namespace, vocab: int, tokenizer: Any) -> torch.Tensor:
    if tokenizer is None:
        gen = torch.Generator().manual_seed(args.seed)
        return torch.randint(0, vocab, (args.tokens,), generator=gen)
    from longread.assets import default_book_path

    path = args.text or default_book_path()
    ids = torch.tensor(tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"])
    if ids.numel() < args.tokens:
        log.warning("%s has only %d tokens (asked for %d)", path, ids.numel(), args.tokens)
    return ids[: args.tokens]


def kl_rows(ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(p_ref || p) per row of (S, V) logits, in float64: float32 log-probabilities alone carry ~1e-7 of
    rounding, which would be a floor under the smallest divergences."""
    ref_lp = torch.log_softmax(ref_logits.double(), dim=-1)
    lp = torch.log_softmax(logits.double(), dim=-1)
    return (ref_lp.exp() * (ref_lp - lp)).sum(-1).float()


def nll_rows(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    rows = targets.numel()
    return torch.nn.functional.cross_entropy(logits[:rows].float(), targets, reduction="none")


def run_pair(
    ref_model: Any, low_model: Any, ids: torch.Tensor, spec: str, args: argparse.Namespace, stride: int
) -> list[dict[str, Any]]:
    """Stream ``ids`` through the float32 engine and one low-precision engine per mode, in lockstep."""

    def policy() -> Any:
        return from_spec(spec, budget=args.budget, sink=args.sink)

    ref = StreamingEngine(ref_model, policy(), stride=stride, rope_mode="delta")
    lows = {mode: StreamingEngine(low_model, policy(), stride=stride, rope_mode=mode) for mode in MODES}
    total = ids.numel()
    kl = {mode: torch.zeros(total) for mode in MODES}  # (N,) KL(fp32 || mode) per position
    kl_dr = torch.zeros(total)  # (N,) KL(delta || read)
    nll = {key: torch.zeros(max(total - 1, 0)) for key in ("fp32", *MODES)}  # (N-1,)
    max_diff = dict.fromkeys(MODES, 0.0)
    seconds = dict.fromkeys(("fp32", *MODES), 0.0)
    device = ref.device
    bar = tqdm(total=total, desc=f"{spec} stride={stride}", unit="tok", leave=False)
    for start in range(0, total, stride):
        chunk = ids[start : start + stride]
        end = start + chunk.numel()
        targets = ids[start + 1 : end + 1].to(device)
        t0 = time.perf_counter()
        ref_logits = ref.forward_chunk(chunk)
        assert ref_logits is not None
        seconds["fp32"] += time.perf_counter() - t0
        ref_logits = ref_logits.float()
        nll["fp32"][start : start + targets.numel()] = nll_rows(ref_logits, targets).cpu()
        out: dict[str, torch.Tensor] = {}
        for mode, engine in lows.items():
            t0 = time.perf_counter()
            logits = engine.forward_chunk(chunk)
            assert logits is not None
            seconds[mode] += time.perf_counter() - t0
            out[mode] = logits = logits.float()
            kl[mode][start:end] = kl_rows(ref_logits, logits).cpu()
            max_diff[mode] = max(max_diff[mode], (logits - ref_logits).abs().max().item())
            nll[mode][start : start + targets.numel()] = nll_rows(logits, targets).cpu()
        kl_dr[start:end] = kl_rows(out["delta"], out["read"]).cpu()
        bar.update(chunk.numel())
    bar.close()
    quarter = max(total // 4, 1)
    ppl_ref = math.exp(nll["fp32"].mean().item())
    rows = []
    for mode in MODES:
        values = kl[mode].clamp_min(0.0)  # float rounding can leave tiny negatives
        ppl = math.exp(nll[mode].mean().item())
        rows.append(
            {
                "policy": ref.policy.name,
                "spec": ref.policy.describe(),
                "stride": stride,
                "budget": args.budget,
                "mode": mode,
                "dtype": args.dtype,
                "tokens": total,
                "kl_mean": values.mean().item(),
                "kl_p99": values.quantile(0.99).item() if total <= 2**24 else float("nan"),
                "kl_max": values.max().item(),
                "kl_first_quarter": values[:quarter].mean().item(),
                "kl_last_quarter": values[-quarter:].mean().item(),
                "kl_by_segment": [seg.mean().item() for seg in values.tensor_split(SEGMENTS)],
                "max_abs_logit_diff": max_diff[mode],
                "ppl_fp32": ppl_ref,
                "ppl": ppl,
                "ppl_drift": ppl / ppl_ref - 1.0,
                "kl_delta_read_mean": kl_dr.clamp_min(0.0).mean().item(),
                "seconds": seconds[mode],
                "seconds_fp32": seconds["fp32"],
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'policy':<62} {'stride':>6} {'mode':>5} {'tokens':>6} {'KL mean':>9} {'KL p99':>9} "
        f"{'KL max':>9} {'KL 1st q':>9} {'KL last q':>9} {'max|dlogit|':>11} {'ppl fp32':>9} "
        f"{'ppl':>9} {'drift':>8} {'KL(d||r)':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['spec']:<62} {r['stride']:>6} {r['mode']:>5} {r['tokens']:>6} {r['kl_mean']:>9.2e} "
            f"{r['kl_p99']:>9.2e} {r['kl_max']:>9.2e} {r['kl_first_quarter']:>9.2e} "
            f"{r['kl_last_quarter']:>9.2e} {r['max_abs_logit_diff']:>11.4f} {r['ppl_fp32']:>9.3f} "
            f"{r['ppl']:>9.3f} {100 * r['ppl_drift']:>+7.3f}% {r['kl_delta_read_mean']:>9.2e}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--geometry", choices=["smollm2", *GEOMETRIES], default="smollm2")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--stride", type=int, action="append", dest="strides", help="repeatable")
    parser.add_argument("--sink", type=int, default=4)
    parser.add_argument("--policy", action="append", dest="policies", help="repeatable policy spec")
    parser.add_argument("--text", type=Path, help="text to stream (smollm2; default: Hamlet)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    args.strides = args.strides or [256]
    args.policies = args.policies or DEFAULT_POLICIES
    for spec in args.policies:
        if parse_spec(spec)[0] == "full":
            parser.error("--policy full: this benchmark compares bounded (compacting) caches")
    if args.tokens < 2:
        parser.error("--tokens must be >= 2")
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    # The reference must be true float32: no TF32 matmuls on Ampere+ GPUs.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dtype = resolve_dtype(args.dtype)
    tokenizer = None
    if args.geometry == "smollm2":
        from longread.models import load_model

        ref_model, tokenizer = load_model(None, dtype="float32", device=args.device)
        low_model, _ = load_model(None, dtype=dtype, device=args.device)
    else:
        ref_model, low_model = random_models(args.geometry, dtype, args.device, args.seed)
    ids = stream_ids(args, ref_model.config.vocab_size, tokenizer)
    log.info("%s on %s: %d tokens, %s vs float32", args.geometry, args.device, ids.numel(), args.dtype)
    rows: list[dict[str, Any]] = []
    for stride in args.strides:
        for spec in args.policies:
            t0 = time.perf_counter()
            new = run_pair(ref_model, low_model, ids, spec, args, stride)
            for row in new:
                row.update(geometry=args.geometry, device=args.device)
            rows.extend(new)
            log.info("%s stride=%d done in %.0fs", spec, stride, time.perf_counter() - t0)
            if args.out:  # rewrite after every pair so a long sweep keeps what it has
                args.out.write_text(json.dumps(rows, indent=1))
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    main()
