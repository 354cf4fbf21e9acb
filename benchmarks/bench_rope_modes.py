"""Which pos-shift implementation is faster: re-rotate on compaction ("delta") or rotate on read ("read")?

    python benchmarks/bench_rope_modes.py --tokens 2048 --out rope_modes.json

Streams the same tokens through SmolLM2-135M under streaming_llm and lacache for both modes and several
strides; prints tokens/s and the time split (forward vs cache maintenance). Both modes give the same
logits to float tolerance (tests/test_policy_matrix.py::test_rope_delta_and_read_modes_agree).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from cache_policies import make_policy
from longread.assets import default_book_path
from longread.engine import StreamingEngine
from longread.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--budget", type=int, default=512)
    parser.add_argument("--strides", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    model, tok = load_model()
    ids = torch.tensor(tok(default_book_path().read_text(), add_special_tokens=False)["input_ids"])
    rows = []
    for stride in args.strides:
        # Stride 1 is ~25 tok/s on CPU: stream fewer tokens there, past the budget all the same.
        n = min(args.tokens, args.budget + 128) if stride == 1 else args.tokens
        for name, params in (("streaming_llm", {}), ("lacache", {"span": 15})):
            for mode in ("delta", "read"):
                engine = StreamingEngine(
                    model, make_policy(name, budget=args.budget, **params), stride=stride, rope_mode=mode
                )
                engine.feed(ids[:n])
                s = engine.stats
                rows.append(
                    {
                        "policy": name,
                        "stride": stride,
                        "mode": mode,
                        "tokens": n,
                        "tokens_per_s": s.tokens_per_s,
                        "forward_s": s.forward_seconds,
                        "compact_s": s.compact_seconds,
                    }
                )
    print(
        f"{'policy':<14} {'stride':>6} {'mode':>6} {'tokens':>6} {'tok/s':>8} "
        f"{'forward s':>9} {'compact s':>9}"
    )
    for r in rows:
        print(
            f"{r['policy']:<14} {r['stride']:>6} {r['mode']:>6} {r['tokens']:>6} {r['tokens_per_s']:>8.1f} "
            f"{r['forward_s']:>9.2f} {r['compact_s']:>9.2f}"
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
