"""Small PNG plots of the experiments' JSON results (matplotlib, no display needed).

    python -m experiments.plots eval results/eval.json results/kvpress.json --out docs/eval_rougeL.png
    python -m experiments.plots ppl ppl.json --out docs/ppl_curve.png
    python -m experiments.plots passkey passkey.json --out docs/passkey_heatmap.png
    python -m experiments.plots throughput pipeline.json --out docs/throughput_streams.png

Contract: each ``plot_*`` takes what the experiment wrote (``longread-eval``'s summary, ``stream_ppl``'s
rows recorded with ``--curve``, ``passkey``'s rows, ``bench_pipeline``'s rows) and writes one PNG, about
1,100 px wide at most (100 dpi).
``eval`` given several JSON files merges their summaries (e.g. longread's and kvpress's) and prints the
merged table.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install -e '.[eval]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_eval(summary: list[dict[str, Any]], path: Path, title: str = "", metric: str = "rougeL") -> None:
    """``metric`` against the budget fraction, one line per (system, policy), the full cache as a line;
    one panel per generation variant."""
    plt = _pyplot()
    variants = list(dict.fromkeys(s["variant"] for s in summary))
    fig, axes = plt.subplots(
        1, len(variants), figsize=(min(10, 2.5 + 4.5 * len(variants)), 3.8), squeeze=False, sharey=True
    )
    for ax, variant in zip(axes[0], variants, strict=True):
        rows = [s for s in summary if s["variant"] == variant]
        curves = list(dict.fromkeys((s["system"], s["policy"]) for s in rows if s["fraction"] is not None))
        for system, policy in curves:
            points = sorted(
                (s["fraction"], s[metric])
                for s in rows
                if (s["system"], s["policy"]) == (system, policy) and s["fraction"] is not None
            )
            style = "--" if system != "longread" else "-"
            label = policy if system == "longread" else f"{system}: {policy}"
            ax.plot([100 * x for x, _ in points], [y for _, y in points], style, marker="o", label=label)
        for s in rows:
            if s["fraction"] is None:
                label = "full cache" if s["system"] == "longread" else f"{s['system']}: full"
                ax.axhline(s[metric], color="black", linestyle=":", label=label)
        ax.set_xlim(0, 105)
        ax.set_title(variant, fontsize=9)
        ax.grid(alpha=0.3)
    fig.supxlabel("budget (% of the story's tokens)", fontsize=9)
    axes[0][0].set_ylabel(f"{metric} F1")
    axes[0][-1].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_paired(
    comparisons: list[dict[str, Any]], path: Path, title: str = "", metric: str = "rougeL"
) -> None:
    """Each row's mean paired difference to the baseline with its 95% story-bootstrap interval: the
    picture of whether a sample can rank them at all (an interval across 0 cannot)."""
    plt = _pyplot()
    if not comparisons:
        raise ValueError("no paired comparisons to plot")
    rows = sorted(comparisons, key=lambda c: c["mean_diff"])
    fig, ax = plt.subplots(figsize=(8.5, 1.4 + 0.45 * len(rows)))
    ys = range(len(rows))
    means = [c["mean_diff"] for c in rows]
    low = [c["mean_diff"] - c["ci_low"] for c in rows]
    high = [c["ci_high"] - c["mean_diff"] for c in rows]
    ax.errorbar(means, list(ys), xerr=[low, high], fmt="o", capsize=3)
    ax.axvline(0.0, color="black", linestyle=":")
    ax.set_yticks(list(ys), [f"{c['label']} (n={c['n']})" for c in rows], fontsize=8)
    ax.set_xlabel(f"{metric} F1 minus {rows[0]['baseline']}, same questions (95% interval)", fontsize=9)
    ax.xaxis.set_major_locator(plt.MaxNLocator(6))
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: f"{x:+.3f}"))
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(alpha=0.3, axis="x")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_ppl_curve(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Perplexity per window of positions, one line per stream_ppl row that has a ``curve``."""
    plt = _pyplot()
    curved = [r for r in rows if r.get("curve")]
    if not curved:
        raise ValueError("no row has a 'curve': run experiments.stream_ppl with --curve N (e.g. --curve 512)")
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for r in curved:
        window = r["curve"]["window"]
        ppl = r["curve"]["ppl"]
        xs = [window * (i + 0.5) for i in range(len(ppl))]
        label = r["spec"] + (f" stride={r['stride']}" if len({c["stride"] for c in curved}) > 1 else "")
        ax.plot(xs, ppl, label=label, linewidth=1.2)
    ax.set_xlabel(f"position in the stream (tokens; mean over windows of {curved[0]['curve']['window']})")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_passkey(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Exact-match rate as a stream length x needle depth heat map, one panel per policy."""
    plt = _pyplot()
    specs = list(dict.fromkeys(r["spec"] for r in rows))
    lengths = sorted({r["multiple"] for r in rows})
    depths = sorted({r["depth_bin"] for r in rows})
    cols = min(4, len(specs))
    nrows = math.ceil(len(specs) / cols)
    fig, axes = plt.subplots(
        nrows, cols, figsize=(2.5 * cols + 1, 2.5 * nrows + 0.5), squeeze=False, layout="constrained"
    )
    image = None
    for ax, spec in zip(axes.flat, specs, strict=False):
        grid = []
        for depth in depths:
            line = []
            for multiple in lengths:
                cell = [
                    r["exact"]
                    for r in rows
                    if (r["spec"], r["multiple"], r["depth_bin"]) == (spec, multiple, depth)
                ]
                line.append(sum(cell) / len(cell) if cell else float("nan"))
            grid.append(line)
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", origin="lower", aspect="auto")
        ax.set_xticks(range(len(lengths)))
        ax.set_xticklabels(
            [str(max(r["length"] for r in rows if r["multiple"] == m)) for m in lengths], fontsize=7
        )
        ax.set_yticks(range(len(depths)))
        ax.set_yticklabels([f"d{d + 1}" for d in depths], fontsize=7)
        ax.set_title(spec.split("(")[0] + _short_params(spec), fontsize=8)
        ax.set_xlabel("stream tokens", fontsize=7)
        ax.set_ylabel("depth (d1 = start)", fontsize=7)
        for y, line in enumerate(grid):
            for x, value in enumerate(line):
                if not math.isnan(value):
                    ax.text(
                        x,
                        y,
                        f"{value:.2f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if value < 0.5 else "black",
                    )
    for ax in list(axes.flat)[len(specs) :]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="exact match")
    if title:
        fig.suptitle(title, fontsize=9)
    _save(fig, path)


def plot_throughput(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Job throughput (document tokens/s and generations/s over the whole job's wall time) against streams
    per actor, one line per actor count (``benchmarks/bench_pipeline.py --out`` rows)."""
    plt = _pyplot()
    if not rows or "streams_per_actor" not in rows[0]:
        raise ValueError("expected benchmarks/bench_pipeline.py --out JSON (rows with 'streams_per_actor')")
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.4))
    for actors in sorted({r["actors"] for r in rows}):
        points = sorted((r["streams_per_actor"], r) for r in rows if r["actors"] == actors)
        xs = [x for x, _ in points]
        label = f"{actors} actor" + ("s" if actors > 1 else "")
        left.plot(xs, [r["tokens_per_s"] for _, r in points], marker="o", label=label)
        right.plot(xs, [r["generations"] / r["wall_s"] for _, r in points], marker="o", label=label)
    for ax, ylabel in ((left, "document tokens/s (whole job)"), (right, "generations/s (whole job)")):
        ax.set_xlabel("streams per actor")
        ax.set_ylabel(ylabel)
        ax.set_xticks(sorted({r["streams_per_actor"] for r in rows}))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def _short_params(spec: str) -> str:
    """``lacache(budget=256,sink=4,span=15,overlap=0)`` -> `` 15/0``-style tail of the interesting params."""
    inside = spec.partition("(")[2].rstrip(")")
    keep = [p for p in inside.split(",") if p and not p.startswith(("budget=", "sink=", "beta=", "reduce="))]
    return f" ({', '.join(keep)})" if keep else ""


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def merged_rows(results: list[dict[str, Any]], variants: list[str] | None = None) -> list[dict[str, Any]]:
    """The answers of several evaluation JSONs (longread-eval, bench_kvpress), restricted to the stories
    that every (system, policy, budget) answered, so every row is measured on the same questions. A
    question answered in several files counts once: the last file's answer (files that re-run a story)."""
    answers = {
        (r["system"], r["policy"], r["fraction"], r["variant"], r["story"], r["question_index"]): r
        for res in results
        for r in res["rows"]
        if variants is None or r["variant"] in variants
    }
    stories: dict[tuple, set[str]] = {}
    for r in answers.values():
        stories.setdefault((r["system"], r["policy"], r["fraction"]), set()).add(r["story"])
    common = set.intersection(*stories.values()) if stories else set()
    if stories and not common:
        raise SystemExit("error: the files share no story; run them on the same --data/--stories/--skip")
    return [r for r in answers.values() if r["story"] in common]


def merge_eval(results: list[dict[str, Any]], variants: list[str] | None = None) -> list[dict[str, Any]]:
    """One summary over several evaluation JSONs on their common stories (see ``merged_rows``)."""
    return summarize_merged(results, merged_rows(results, variants))


def summarize_merged(results: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The summary of ``merged_rows(results, ...)``, with the runs (memory, time) of the same stories."""
    from experiments.eval_table import summarize

    common = {r["story"] for r in rows}
    runs = {(r["system"], r["policy"], r["fraction"], r["story"]): r for res in results for r in res["runs"]}
    summary = summarize(rows, [r for r in runs.values() if r["story"] in common])
    for s in summary:
        s["common_stories"] = len(common)
    return summary


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SystemExit(f"error: cannot read {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise SystemExit(
            f"error: {path} is not JSON ({exc.msg}); pass the file the experiment wrote"
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.plots", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="kind", required=True)
    for kind, help_ in (
        ("eval", "ROUGE-L vs budget from longread-eval / bench_kvpress JSON (several files merge)"),
        ("ppl", "perplexity vs position from experiments.stream_ppl --curve JSON"),
        ("passkey", "length x depth heat map from experiments.passkey JSON"),
        ("throughput", "tokens/s vs streams per actor from benchmarks/bench_pipeline.py --out JSON"),
    ):
        s = sub.add_parser(kind, help=help_)
        s.add_argument("json", type=Path, nargs="+" if kind == "eval" else 1)
        s.add_argument("--out", type=Path, required=True, help="PNG to write")
        s.add_argument("--title", default="")
        if kind == "eval":
            s.add_argument("--variant", action="append", help="only these generation variants (repeatable)")
            s.add_argument(
                "--only",
                action="append",
                metavar="POLICY",
                help="only rows whose policy contains this (repeatable): e.g. two systems over the stories "
                "both answered, across files of other systems",
            )
            s.add_argument(
                "--summary-json", type=Path, help="also write the merged summary (no answer texts) as JSON"
            )
            s.add_argument(
                "--paired",
                metavar="BASELINE",
                help="also print each row's paired ROUGE-L difference to BASELINE (part of a row's label, "
                "e.g. KnormPress) with a 95%% story-bootstrap interval",
            )
            s.add_argument(
                "--paired-metric",
                choices=["rougeL", "rouge1", "rouge2"],
                default="rougeL",
                help="the metric --paired compares (default rougeL)",
            )
    args = p.parse_args(argv)
    if args.kind == "eval":
        from experiments.eval_table import format_table

        results = [_load(path) for path in args.json]
        if args.only:
            for res in results:
                res["rows"] = [r for r in res["rows"] if any(o in r["policy"] for o in args.only)]
        rows = merged_rows(results, args.variant)
        summary = summarize_merged(results, rows)
        print(format_table(summary))
        comparisons: list[dict[str, Any]] = []
        if args.paired:
            from experiments.eval_table import format_paired, paired

            try:
                comparisons = paired(rows, args.paired, metric=args.paired_metric)
            except ValueError as exc:
                raise SystemExit(f"error: --paired: {exc}") from None
            print(format_paired(comparisons, args.paired_metric))
            paired_png = args.out.with_name(args.out.stem + "_paired.png")
            plot_paired(comparisons, paired_png, args.title, args.paired_metric)
            print(f"wrote {paired_png}")
        if args.summary_json:
            args.summary_json.parent.mkdir(parents=True, exist_ok=True)
            payload = {"files": [p.name for p in args.json], "summary": summary, "paired": comparisons}
            args.summary_json.write_text(json.dumps(payload, indent=2), encoding="utf-8")
        plot_eval(summary, args.out, args.title)
    elif args.kind == "ppl":
        data = _load(args.json[0])
        plot_ppl_curve(data if isinstance(data, list) else data["rows"], args.out, args.title)
    elif args.kind == "throughput":
        plot_throughput(_load(args.json[0]), args.out, args.title)
    else:
        plot_passkey(_load(args.json[0])["rows"], args.out, args.title)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
