"""Passkey retrieval through a bounded cache: can the model still read a key that streamed by long ago?

A 5-digit key ("The pass key is 12345. Remember it. 12345 is the pass key.") is hidden at a chosen depth in
filler text cut from a public-domain book, the stream ends with "What is the pass key? The pass key is", and
the model continues greedily. Streams are ``multiple x budget`` tokens long; the depth is drawn inside each of
``depths`` equal bins; every (length, bin) gets ``samples`` streams with fresh keys and filler offsets. All
policies see the same streams. Scored by exact match and per-digit accuracy (digits right in place); the
table also scores, apart, the keys that lie outside StreamingLLM's window (``out``: more than
``budget - sink`` tokens before the end of the stream).

    python -m experiments.passkey --budget 256 --stride 128 --multiple 2 --multiple 4 --multiple 8 \
        --multiple 16 --policy full --policy streaming_llm --policy lacache:span=15,overlap=0 \
        --policy cascading:cascades=4 --samples 3 --out passkey.json

``full`` runs only where the stream fits the model's position range.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from cache_policies import check_spec, from_spec
from longread.engine import StreamingEngine

log = logging.getLogger("experiments.passkey")

INTRO = (
    "There is an important pass key hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the pass key.\n\n"
)
NEEDLE = "\nThe pass key is {key}. Remember it. {key} is the pass key.\n"
QUESTION = "\n\nWhat is the pass key? The pass key is"
BOOK_SKIP = 1000  # tokens: stay clear of the title page and cast list


@dataclass
class PasskeyConfig:
    model: str = "default"
    book: Path | None = None  # default: longread.assets.default_book_path()
    budget: int = 256
    stride: int = 128
    sink: int = 4
    multiples: list[int] = field(default_factory=lambda: [2, 4, 8, 16])
    depths: int = 5
    samples: int = 3
    policies: list[str] = field(
        default_factory=lambda: ["full", "streaming_llm", "lacache:span=15,overlap=0", "cascading:cascades=4"]
    )
    max_new_tokens: int = 8
    seed: int = 0
    threads: int | None = None
    out: Path | None = None


@dataclass
class Trial:
    multiple: int
    length: int
    depth_bin: int
    sample: int
    key: str
    needle_at: int  # token index where the needle starts
    ids: list[int] = field(repr=False)

    @property
    def distance(self) -> int:
        """Tokens from the needle's start to the end of the stream."""
        return self.length - self.needle_at


def build_trials(cfg: PasskeyConfig, tokenizer: Any, book: list[int]) -> list[Trial]:
    def enc(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    rng = random.Random(cfg.seed)
    intro, question = enc(INTRO), enc(QUESTION)
    trials = []
    for multiple in cfg.multiples:
        length = multiple * cfg.budget
        for depth_bin in range(cfg.depths):
            for sample in range(cfg.samples):
                key = str(rng.randrange(10_000, 100_000))
                needle = enc(NEEDLE.format(key=key))
                n_filler = length - len(intro) - len(needle) - len(question)
                if n_filler < 1 or BOOK_SKIP + n_filler > len(book):
                    raise ValueError(
                        f"a {length}-token stream needs {n_filler} filler tokens; the book has {len(book)}. "
                        "Use a longer --book or a smaller --budget / --multiple."
                    )
                start = rng.randrange(BOOK_SKIP, len(book) - n_filler + 1)
                filler = book[start : start + n_filler]
                depth = (depth_bin + rng.random()) / cfg.depths
                cut = round(depth * n_filler)
                ids = intro + filler[:cut] + needle + filler[cut:] + question
                trials.append(Trial(multiple, len(ids), depth_bin, sample, key, len(intro) + cut, ids))
    return trials


def score(prediction: str, key: str) -> tuple[bool, float]:
    """Exact match of the first digit run, and the share of the key's digits right in place."""
    found = re.search(r"\d+", prediction)
    digits = found.group(0) if found else ""
    return digits == key, sum(a == b for a, b in zip(digits, key)) / len(key)


def run_policy(model: Any, tokenizer: Any, spec: str, trials: list[Trial], cfg: PasskeyConfig) -> list[dict]:
    policy = from_spec(spec, budget=cfg.budget, sink=cfg.sink)
    name = policy.name
    engine = StreamingEngine(model, policy, stride=cfg.stride, tokenizer=tokenizer)
    limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    rows = []
    for trial in trials:
        if name == "full" and limit and trial.length + cfg.max_new_tokens > limit:
            continue
        engine.reset()
        t0 = time.perf_counter()
        engine.feed(trial.ids)
        result = engine.generate(max_new_tokens=cfg.max_new_tokens)
        exact, digits = score(result.text, trial.key)
        rows.append(
            {
                "policy": name,
                "spec": policy.describe(),
                "multiple": trial.multiple,
                "length": trial.length,
                "depth_bin": trial.depth_bin,
                "sample": trial.sample,
                "key": trial.key,
                "needle_at": trial.needle_at,
                "distance": trial.distance,
                "outside_window": trial.distance > cfg.budget - cfg.sink,
                "prediction": result.text,
                "exact": exact,
                "digit_acc": digits,
                "seconds": time.perf_counter() - t0,
            }
        )
        log.info(
            "%s %d tokens, key %d tokens back: %s -> %r",
            name,
            trial.length,
            trial.distance,
            trial.key,
            result.text,
        )
    return rows


def summarize(rows: list[dict], depths: int) -> list[dict]:
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["spec"], row["multiple"]), []).append(row)
    out = []
    for (spec, multiple), group in groups.items():
        outside = [r for r in group if r["outside_window"]]
        out.append(
            {
                "spec": spec,
                "multiple": multiple,
                "length": max(r["length"] for r in group),
                "n": len(group),
                "exact_by_depth": [
                    _mean([r["exact"] for r in group if r["depth_bin"] == b]) for b in range(depths)
                ],
                "exact": _mean([r["exact"] for r in group]),
                "digit_acc": _mean([r["digit_acc"] for r in group]),
                "n_outside": len(outside),
                "exact_outside": _mean([r["exact"] for r in outside]),
                "digit_outside": _mean([r["digit_acc"] for r in outside]),
            }
        )
    return out


def _mean(values: list[Any]) -> float:
    return sum(values) / len(values) if values else float("nan")


def format_table(summary: list[dict], depths: int) -> str:
    bins = " ".join(f"{f'd{b + 1}':>5}" for b in range(depths))
    head = (
        f"{'policy':<64} {'x':>3} {'tokens':>6} {bins} {'EM':>5} {'digit':>5} "
        f"{'out: n':>6} {'EM':>5} {'digit':>5}"
    )
    lines = [head, "-" * len(head)]
    for s in summary:
        cells = " ".join(f"{v:>5.2f}" for v in s["exact_by_depth"])
        lines.append(
            f"{s['spec']:<64} {s['multiple']:>3} {s['length']:>6} {cells} {s['exact']:>5.2f} "
            f"{s['digit_acc']:>5.2f} {s['n_outside']:>6} {s['exact_outside']:>5.2f} "
            f"{s['digit_outside']:>5.2f}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> PasskeyConfig:
    d = PasskeyConfig()
    p = argparse.ArgumentParser(prog="python -m experiments.passkey", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=d.model, help="'default' (embedded SmolLM2), a model folder or a .gguf")
    p.add_argument("--book", type=Path, help="filler text (default: the embedded Shakespeare play)")
    p.add_argument("--budget", type=int, default=d.budget)
    p.add_argument("--stride", type=int, default=d.stride)
    p.add_argument("--sink", type=int, default=d.sink)
    p.add_argument("--multiple", type=int, action="append", dest="multiples", help="stream length / budget")
    p.add_argument("--depths", type=int, default=d.depths, help="number of depth bins")
    p.add_argument("--samples", type=int, default=d.samples, help="streams per (length, depth bin)")
    p.add_argument("--policy", action="append", dest="policies", help="repeatable policy spec")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int)
    p.add_argument("--out", type=Path, help="write config, rows and summary as JSON here")
    args = p.parse_args(argv)
    values = {k: v for k, v in vars(args).items() if v is not None}
    cfg = PasskeyConfig(**values)
    if min(cfg.budget, cfg.stride, cfg.depths, cfg.samples, cfg.max_new_tokens, *cfg.multiples) < 1:
        p.error("budget, stride, depths, samples, max-new-tokens and multiples must be positive")
    for spec in cfg.policies:
        try:
            check_spec(spec)
        except ValueError as exc:
            p.error(str(exc))
    return cfg


def main(argv: list[str] | None = None) -> list[dict]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse_args(argv)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    from longread.assets import default_book_path
    from longread.models import load_model

    model, tokenizer = load_model(cfg.model)
    book_path = cfg.book or default_book_path()
    book = list(tokenizer(book_path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"])
    trials = build_trials(cfg, tokenizer, book)
    log.info(
        "%d streams of %s tokens from %s", len(trials), sorted({t.length for t in trials}), book_path.name
    )
    rows: list[dict] = []
    for spec in cfg.policies:
        t0 = time.perf_counter()
        done = run_policy(model, tokenizer, spec, trials, cfg)
        rows += done
        log.info(
            "%s: %d streams, exact match %.2f, %.0fs",
            spec,
            len(done),
            _mean([r["exact"] for r in done]),
            time.perf_counter() - t0,
        )
        if cfg.out:  # rewrite after every policy so a long sweep keeps what it has
            _write(cfg, rows)
    summary = summarize(rows, cfg.depths)
    if cfg.out:
        _write(cfg, rows)
    print(format_table(summary, cfg.depths))
    return summary


def _write(cfg: PasskeyConfig, rows: list[dict]) -> None:
    assert cfg.out is not None
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    payload = {"config": config, "rows": rows, "summary": summarize(rows, cfg.depths)}
    cfg.out.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
