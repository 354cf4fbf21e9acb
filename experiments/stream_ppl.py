"""Streaming perplexity: what a cache policy costs, on a long real text.

Streams the same token sequence through the model once per (policy, budget, stride) and prints a table:
tokens, perplexity (overall and at checkpoints), tokens/s, share of time in cache maintenance, and
memory: the KV buffers allocated (exact) at 25/50/100% of the stream and the process RSS growth.

    python -m experiments.stream_ppl --policy full --policy streaming_llm --policy lacache:span=15,overlap=0 \
        --budget 256 --budget 512 --stride 1 --stride 256 --tokens 16384 --out ppl.json

A policy spec is ``name`` or ``name:key=value,...`` (parameters of the policy class, see README). The
``full`` policy ignores the budget and runs once per stride. ``--config FILE.yaml`` takes the same fields.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from tqdm import tqdm

from cache_policies import check_spec, from_spec
from longread.engine import StreamingEngine

log = logging.getLogger("experiments.stream_ppl")


class StreamPPLConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("default", description="'default' (embedded SmolLM2), a model folder or a .gguf file")
    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    text: Path | None = Field(None, description="UTF-8 text to stream; default: a Shakespeare play")
    tokens: int = Field(16384, ge=2, description="stream at most this many tokens of the text")
    policies: list[str] = Field(
        default_factory=lambda: ["full", "streaming_llm", "lacache:span=15,overlap=0"]
    )
    budgets: list[int] = Field(default_factory=lambda: [256, 512])
    strides: list[int] = Field(default_factory=lambda: [256])
    sink: int = Field(4, ge=0)
    rope_mode: str | None = Field(None, description="'delta' or 'read'; default: the faithful one for dtype")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    checkpoints: list[int] = Field(default_factory=lambda: [1024, 2048, 4096, 8192, 16384])
    curve: int | None = Field(
        None, ge=1, description="also record perplexity per window of this many positions (row 'curve')"
    )
    out: Path | None = None

    @field_validator("policies")
    @classmethod
    def _check_specs(cls, specs: list[str]) -> list[str]:
        for spec in specs:
            check_spec(spec)
        return specs

    @field_validator("budgets", "strides")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if not values or any(v < 1 for v in values):
            raise ValueError("must be a non-empty list of positive integers")
        return values


class RssSampler:
    """Samples this process's resident memory in a thread; ``peak`` is the maximum seen."""

    def __init__(self, interval: float = 0.05) -> None:
        self.proc = psutil.Process()
        self.interval = interval
        self.peak = self.base = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def warm_up(model: Any, ids: torch.Tensor) -> None:
    """One short forward before any measurement: safetensors weights are memory-mapped and only become
    resident when first read (~540 MB for SmolLM2), which would otherwise count as the first run's RSS
    growth; the allocator's first workspaces likewise."""
    with torch.inference_mode():
        model(ids[None, :64].to(model.device), use_cache=False)


def run_one(
    model: Any, ids: torch.Tensor, spec: str, budget: int | None, stride: int, cfg: StreamPPLConfig
) -> dict[str, Any]:
    policy = from_spec(spec, budget=budget, sink=cfg.sink)
    engine = StreamingEngine(model, policy, stride=stride, rope_mode=cfg.rope_mode)  # type: ignore[arg-type]
    total = ids.numel()
    marks = {int(total * f): f for f in (0.25, 0.5, 1.0)}
    kv_at: dict[str, float] = {}
    nll_sum, count = 0.0, 0
    ppl_at: dict[str, float] = {}
    checkpoints = sorted(c for c in cfg.checkpoints if c < total)
    nlls: list[torch.Tensor] | None = [] if cfg.curve else None
    bar = tqdm(total=total, desc=f"{policy.describe()} stride={stride}", unit="tok", leave=False)
    with RssSampler() as rss:
        for nll in engine.nll(ids):
            # Checkpoint perplexities: cumulative over the first c predictions.
            for c in checkpoints:
                if count < c <= count + nll.numel():
                    ppl_at[str(c)] = math.exp((nll_sum + nll[: c - count].sum().item()) / c)
            nll_sum += nll.sum().item()
            count += nll.numel()
            if nlls is not None:
                nlls.append(nll)
            bar.update(engine.tokens_seen - bar.n)
            for mark, frac in marks.items():
                if engine.tokens_seen >= mark and f"{int(frac * 100)}%" not in kv_at:
                    kv_at[f"{int(frac * 100)}%"] = engine.cache.nbytes() / 2**20
    bar.close()
    stats = engine.stats
    curve = None
    if nlls is not None and cfg.curve:
        # Perplexity against position: window w covers the predictions of tokens w*curve+1 .. (w+1)*curve.
        windows = torch.cat(nlls).split(cfg.curve)
        curve = {"window": cfg.curve, "ppl": [math.exp(w.mean().item()) for w in windows if w.numel()]}
    return {
        "policy": policy.name,
        "spec": policy.describe(),
        "params": policy.params(),
        "budget": policy.budget,
        "stride": stride,
        "rope_mode": engine.rope_mode,
        "tokens": total,
        "ppl": math.exp(nll_sum / count),
        "ppl_at": ppl_at,
        "tokens_per_s": stats.tokens_per_s,
        "seconds": stats.seconds,
        "compact_share": stats.compact_seconds / stats.seconds if stats.seconds else 0.0,
        "kv_mib_at": kv_at,
        "kv_peak_tokens": engine.cache.peak_length,
        "rss_growth_mib": (rss.peak - rss.base) / 2**20,
        "policy_stats": policy.stats(),
        "layer_stats": engine.cache.layer_stats(policy.sink),
        **({"curve": curve} if curve is not None else {}),
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'policy':<44} {'stride':>6} {'tokens':>7} {'ppl':>8} {'tok/s':>7} {'maint%':>6} "
        f"{'KV MiB 25%/50%/100%':>21} {'peak tok':>8} {'RSS+MiB':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        kv = "/".join(f"{r['kv_mib_at'].get(k, float('nan')):.1f}" for k in ("25%", "50%", "100%"))
        lines.append(
            f"{r['spec']:<44} {r['stride']:>6} {r['tokens']:>7} {r['ppl']:>8.3f} {r['tokens_per_s']:>7.1f} "
            f"{100 * r['compact_share']:>5.1f}% {kv:>21} {r['kv_peak_tokens']:>8} {r['rss_growth_mib']:>8.1f}"
        )
    return "\n".join(lines)


def load_config(argv: list[str] | None = None) -> StreamPPLConfig:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.stream_ppl", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--config", type=Path, help="YAML file with StreamPPLConfig fields")
    parser.add_argument("--model")
    parser.add_argument("--dtype")
    parser.add_argument("--text", type=Path)
    parser.add_argument("--tokens", type=int)
    parser.add_argument("--policy", action="append", dest="policies", help="repeatable policy spec")
    parser.add_argument("--budget", action="append", type=int, dest="budgets")
    parser.add_argument("--stride", action="append", type=int, dest="strides")
    parser.add_argument("--sink", type=int)
    parser.add_argument("--rope-mode", dest="rope_mode", choices=["delta", "read"])
    parser.add_argument("--threads", type=int)
    parser.add_argument("--curve", type=int, help="record perplexity per window of N positions in the JSON")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    data: dict[str, Any] = {}
    if args.config:
        loaded = yaml.safe_load(args.config.read_text())
        if not isinstance(loaded, dict):
            parser.error(f"{args.config}: expected a mapping of StreamPPLConfig fields")
        data.update(loaded)
    data.update({k: v for k, v in vars(args).items() if k != "config" and v is not None})
    try:
        return StreamPPLConfig(**data)
    except ValidationError as exc:
        parser.error(f"invalid configuration:\n{exc}")
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(argv)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    from longread.assets import default_book_path
    from longread.models import load_model

    model, tokenizer = load_model(
        cfg.model,
        dtype=cfg.dtype,
        attn_implementation=cfg.attn_implementation,
    )
    path = cfg.text or default_book_path()
    ids = torch.tensor(tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"])
    if ids.numel() < cfg.tokens:
        log.warning("%s has only %d tokens (asked for %d)", path, ids.numel(), cfg.tokens)
    ids = ids[: cfg.tokens]
    log.info("streaming %d tokens of %s", ids.numel(), path.name)
    warm_up(model, ids)
    rows = []
    for stride in cfg.strides:
        for spec in cfg.policies:
            budgets: list[int | None] = [None] if check_spec(spec)[0] == "full" else list(cfg.budgets)
            for budget in budgets:
                t0 = time.perf_counter()
                row = run_one(model, ids, spec, budget, stride, cfg)
                row.update(model=cfg.model, dtype=cfg.dtype, text=path.name)
                rows.append(row)
                log.info(
                    "%s stride=%d ppl=%.3f (%.0fs)", row["spec"], stride, row["ppl"], time.perf_counter() - t0
                )
                if cfg.out:  # rewrite after every run so a long sweep keeps what it has
                    cfg.out.write_text(json.dumps(rows, indent=1))
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    main()
