"""Tables of evaluation results: means per (system, policy, budget, variant), shared by ``longread-eval``
(``experiments.evaluate``) and the plots that merge several result files (``experiments.plots``)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from longread.quality import REASONS

METRICS = ("rouge1", "rouge2", "rougeL")
GROUP = ("system", "policy", "fraction", "variant")


def _mean(values: Iterable[float]) -> float:
    vals = list(values)
    return sum(vals) / len(vals) if vals else float("nan")


def summarize(rows: list[dict[str, Any]], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Means per (system, policy, fraction, variant), with each run's memory and time joined in."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in GROUP), []).append(row)
    by_run: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        by_run.setdefault(tuple(run[k] for k in GROUP[:3]), []).append(run)
    out = []
    for key, group in groups.items():
        rs = by_run.get(key[:3], [])
        entry: dict[str, Any] = dict(zip(GROUP, key))
        entry["n"] = len(group)
        entry["stories"] = len({r["story"] for r in group})
        for m in METRICS:
            entry[m] = _mean(r[m] for r in group)
        entry["words"] = _mean(r["words"] for r in group)
        entry["degenerate"] = _mean(bool(r["degenerate"]) for r in group)
        for reason in REASONS:
            entry[reason] = _mean(reason in r["degenerate"] for r in group)
        entry["kept_fraction"] = _mean(r["kept_fraction"] for r in rs)
        entry["kv_mib"] = max((r["kv_mib"] for r in rs), default=float("nan"))
        entry["rss_peak_mib"] = max((r["rss_peak_mib"] for r in rs), default=float("nan"))
        entry["seconds_per_story"] = _mean(r["seconds"] for r in rs)
        out.append(entry)
    return out


def _fmt(value: float, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def format_table(summary: list[dict[str, Any]]) -> str:
    head = (
        f"{'system':<8} {'policy':<28} {'budget':>6} {'variant':<12} {'n':>4} {'R-1':>6} {'R-2':>6} "
        f"{'R-L':>6} {'words':>6} {'degen':>6} {'unfin':>6} {'repeat':>6} {'empty':>6} {'KV MiB':>7} "
        f"{'RSS+MiB':>8} {'s/story':>8}"
    )
    lines = [head, "-" * len(head)]
    for s in summary:
        budget = "full" if s["fraction"] is None else f"{100 * s['fraction']:.0f}%"
        lines.append(
            f"{s['system']:<8} {s['policy'][:28]:<28} {budget:>6} {s['variant'][:12]:<12} {s['n']:>4} "
            f"{s['rouge1']:>6.3f} {s['rouge2']:>6.3f} {s['rougeL']:>6.3f} {s['words']:>6.1f} "
            f"{100 * s['degenerate']:>5.0f}% {100 * s['unfinished']:>5.0f}% {100 * s['repetition']:>5.0f}% "
            f"{100 * s['empty']:>5.0f}% {_fmt(s['kv_mib'], '7.1f'):>7} {_fmt(s['rss_peak_mib'], '8.0f'):>8} "
            f"{_fmt(s['seconds_per_story'], '8.0f'):>8}"
        )
    return "\n".join(lines)


def label(row: dict[str, Any]) -> str:
    """A row's system, policy and budget, e.g. ``longread lacache:span=15,overlap=0 25%``."""
    budget = "full" if row["fraction"] is None else f"{100 * row['fraction']:.0f}%"
    return f"{row['system']} {row['policy']} {budget}"


def paired(
    rows: list[dict[str, Any]],
    baseline: str,
    metric: str = "rougeL",
    samples: int = 4000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Each (system, policy, budget, variant) against ``baseline`` (a substring of one row's ``label``)
    on the questions both answered: the mean paired difference of ``metric`` and a 95% interval from a
    bootstrap that resamples whole stories (a story's questions share its cache, so they are not
    independent). An interval that contains 0 means the sample cannot rank the two.

    Also the sample's resolution: ``detectable``, the smallest mean difference these stories can tell
    from 0 (1.96 bootstrap standard errors), and ``stories_needed``, how many stories of the same spread
    it would take for the observed difference to leave the interval (the standard error shrinks as
    1/sqrt(stories)); None when the observed difference is exactly 0."""
    import random

    keyed: dict[tuple[str, str], dict[tuple[str, int], float]] = {}
    for r in rows:
        keyed.setdefault((label(r), r["variant"]), {})[(r["story"], r["question_index"])] = r[metric]
    bases = [k for k in keyed if baseline in k[0]]
    if len({k[0] for k in bases}) != 1:
        found = sorted({k[0] for k in keyed})
        raise ValueError(f"baseline {baseline!r} must match exactly one of {found}")
    rng = random.Random(seed)
    out = []
    for (name, variant), scores in sorted(keyed.items()):
        base = keyed.get((bases[0][0], variant))
        if base is None or (name, variant) in bases:
            continue
        by_story: dict[str, list[float]] = {}
        for q, value in scores.items():
            if q in base:
                by_story.setdefault(q[0], []).append(value - base[q])
        if not by_story:
            continue
        stories = list(by_story.values())
        diffs = [d for ds in stories for d in ds]
        boot = []
        for _ in range(samples):
            pick = [d for ds in rng.choices(stories, k=len(stories)) for d in ds]
            boot.append(sum(pick) / len(pick))
        boot.sort()
        mean = sum(diffs) / len(diffs)
        centre = sum(boot) / samples
        half = 1.96 * math.sqrt(sum((b - centre) ** 2 for b in boot) / (samples - 1))
        needed = math.ceil(len(stories) * (half / mean) ** 2) if mean else None
        out.append(
            {
                "label": name,
                "variant": variant,
                "baseline": bases[0][0],
                "n": len(diffs),
                "stories": len(stories),
                "mean_diff": mean,
                "ci_low": boot[int(0.025 * samples)],
                "ci_high": boot[int(0.975 * samples) - 1],
                "wins": sum(d > 0 for d in diffs),
                "losses": sum(d < 0 for d in diffs),
                "detectable": half,
                "stories_needed": needed,
            }
        )
    return out


def format_paired(results: list[dict[str, Any]], metric: str = "rougeL") -> str:
    if not results:
        return "no rows share questions with the baseline"
    head = (
        f"{'vs ' + results[0]['baseline']:<48} {'variant':<10} {'n':>4} {'d ' + metric:>9} "
        f"{'95% CI':>17} {'W/L':>7} {'detect':>7} {'stories':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        ci = f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
        lines.append(
            f"{r['label'][:48]:<48} {r['variant'][:10]:<10} {r['n']:>4} {r['mean_diff']:>+9.4f} {ci:>17} "
            f"{r['wins']:>3}/{r['losses']:<3} {r['detectable']:>7.4f} {_fmt(r['stories_needed'], 'd'):>8}"
        )
    lines.append(
        "detect: the smallest mean difference these stories tell from 0; stories: how many it would take "
        "for this row's difference to leave its interval"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- run
