"""Lines per second per core of the logs task's statistics (parse + window statistics), per log format.

    python benchmarks/bench_logparse.py [--lines 200000] [--repeat 3] [--batch-lines 8192]
        [--approaches baseline per-line batch] [--kernels] [--json benchmarks/results/logparse.json]

Each of the 16 Loghub sample logs (../shared/data/loghub, 2,000 lines each) is repeated to ``--lines``
lines -- each copy with its digits outside the timestamp permuted (a random permutation of 0-9 per copy),
so that copies are new lines, as in a real log, with the same shapes, times and templates: a verbatim
copy would flatter any path that does a repeated text's work once -- and parsed by one parser into one
``WindowStats`` (its format detected from the first 128 lines, as
the logs task does), single-threaded (pyarrow's thread pool at one thread; no torch, no Ray). Approaches:

* ``baseline``: the per-line code before the batch path (tests/reference/logstats_ref.py, frozen),
  ``parser.parse(line)`` + ``stats.add(line)``;
* ``per-line``: today's ``parse`` + ``add`` (tuned: one timestamp regex per parser state, one masking
  substitution);
* ``batch``: ``parse_batch`` over ``--batch-lines`` lines at a time + ``add_batch``.

The clock is the process's CPU time (``time.process_time``), the best of ``--repeat`` runs: on a shared
machine wall time counts other work too; ``--wall`` reports wall time instead. Before timing, each file's
2,000 lines are parsed both ways and compared (``exact``), and ``fallback`` is the share of lines the batch
path hands to the per-line code. ``--kernels`` also times the heaviest regex steps alone with pyarrow.compute
(RE2), polars (Rust regex; when installed) and Python's ``re`` -- the numbers the choice of engine rests on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's code, not another one installed in the venv
os.environ.setdefault("POLARS_MAX_THREADS", "1")

import pyarrow as pa  # noqa: E402

from actors.tasks.logs.formats import detect_format  # noqa: E402
from actors.tasks.logs.stats import LogParser, WindowStats  # noqa: E402
from tests.reference import logstats_ref as ref  # noqa: E402

LOGHUB = ROOT.parent / "shared" / "data" / "loghub"
APPROACHES = ("baseline", "per-line", "batch")


def run_baseline(lines: list[str], fmt: object, batch_lines: int) -> object:
    parser, stats = ref.LogParser(log_format=fmt), ref.WindowStats()  # type: ignore[arg-type]
    parse, add = parser.parse, stats.add
    for line in lines:
        add(parse(line))
    return stats


def run_per_line(lines: list[str], fmt: object, batch_lines: int) -> object:
    parser, stats = LogParser(log_format=fmt), WindowStats()  # type: ignore[arg-type]
    parse, add = parser.parse, stats.add
    for line in lines:
        add(parse(line))
    return stats


def run_batch(lines: list[str], fmt: object, batch_lines: int) -> object:
    parser, stats = LogParser(log_format=fmt), WindowStats()  # type: ignore[arg-type]
    for i in range(0, len(lines), batch_lines):
        stats.add_batch(parser.parse_batch(lines[i : i + batch_lines]))
    return stats


RUNNERS: dict[str, Callable[[list[str], object, int], object]] = {
    "baseline": run_baseline,
    "per-line": run_per_line,
    "batch": run_batch,
}


def repeated(sample: list[str], fmt: object, n: int, seed: int = 0) -> list[str]:
    """``sample`` repeated to ``n`` lines, copies after the first with their digits permuted outside the
    timestamp (found as the per-line parser finds it)."""
    parser = LogParser(log_format=fmt)  # type: ignore[arg-type]
    spans = [parser.timestamp(line)[2] for line in sample]
    rng = random.Random(seed)
    out = list(sample)
    while len(out) < n:
        digits = list("0123456789")
        rng.shuffle(digits)
        table = str.maketrans("0123456789", "".join(digits))
        for line, span in zip(sample, spans):
            if span is None:
                out.append(line.translate(table))
            else:
                out.append(
                    line[: span[0]].translate(table)
                    + line[span[0] : span[1]]
                    + line[span[1] :].translate(table)
                )
    return out[:n]


def clock(wall: bool) -> Callable[[], float]:
    return time.perf_counter if wall else time.process_time


def exactness(lines: list[str], fmt: object) -> tuple[bool, float]:
    """(batch == per-line == baseline on these lines, share of lines the batch path hands back)."""
    one, old = LogParser(log_format=fmt), ref.LogParser(log_format=fmt)  # type: ignore[arg-type]
    want = [one.parse(line) for line in lines]
    old_lines = [old.parse(line) for line in lines]
    batch = LogParser(log_format=fmt).parse_batch(lines)  # type: ignore[arg-type]

    def key(x: object) -> tuple:
        return tuple(getattr(x, f) for f in ("text", "ts", "ts_text", "level", "template", "alert"))

    same = [key(x) for x in batch.lines()] == [key(x) for x in want] == [key(x) for x in old_lines]
    return same, float(batch.fallback.mean())


def kernels(lines: list[str], repeat: int, wall: bool) -> dict[str, dict[str, float]]:
    """Microseconds per line of the heaviest regex steps alone, per engine."""
    import re

    import pyarrow.compute as pc

    from actors.tasks.logs import stats as S

    tick = clock(wall)
    hadoop_line = (
        r"^\d{4}-\d{2}-\d{2} [\d:]{8},\d+ (?P<level>[A-Z]+) \[[^\]]*\] (?P<component>[^:]+): (?P<message>.*)$"
    )
    iso = S.TIMESTAMP_FORMATS[0][1].pattern
    others = "|".join(S._unnamed(S.TIMESTAMP_FORMATS[i][1].pattern) for i in S._order(0) if i != 0)
    ts_regex = f"(?P<s>{iso})|(?P<o>{others})"
    steps = {
        "mask (one substitution)": ("replace", S._RE2_MASK, "<*>"),
        "collapse white space": ("replace", r"[ \t]{2,}|\t", " "),
        "line regex with groups": ("extract", hadoop_line, None),
        "timestamp search with groups": ("extract", ts_regex, None),
    }
    engines: dict[str, Callable[[str, str, str | None], Callable[[], object]]] = {}
    arr = pa.array(lines, pa.large_string())
    engines["pyarrow.compute (RE2)"] = lambda kind, rx, rep: (
        (lambda: pc.replace_substring_regex(arr, rx, rep))
        if kind == "replace"
        else (lambda: pc.extract_regex(arr, rx))
    )
    try:
        import polars as pl

        series = pl.Series(lines)
        engines["polars (Rust regex)"] = lambda kind, rx, rep: (
            (lambda: series.str.replace_all(rx, rep or ""))
            if kind == "replace"
            else (lambda: series.str.extract_groups(rx))
        )
    except ImportError:
        pass

    def python(kind: str, rx: str, rep: str | None) -> Callable[[], object]:
        compiled = re.compile(S._MASK.pattern if rx == S._RE2_MASK else rx)
        if kind == "replace":
            return lambda: [compiled.sub(rep or "", line) for line in lines]
        return lambda: [compiled.search(line) for line in lines]

    engines["python re"] = python
    out: dict[str, dict[str, float]] = {}
    for step, (kind, rx, rep) in steps.items():
        out[step] = {}
        for engine, make in engines.items():
            fn = make(kind, rx, rep)
            best = float("inf")
            for _ in range(repeat):
                t0 = tick()
                fn()
                best = min(best, tick() - t0)
            out[step][engine] = 1e6 * best / len(lines)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=200_000, help="lines per format (each file repeated)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--batch-lines", type=int, default=8192)
    p.add_argument("--approaches", nargs="+", default=list(APPROACHES), choices=APPROACHES)
    p.add_argument("--formats", nargs="*", help="Loghub names (default: all 16)")
    p.add_argument("--wall", action="store_true", help="wall time instead of the process's CPU time")
    p.add_argument("--kernels", action="store_true", help="also time the heaviest regex steps per engine")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "logparse.json")
    a = p.parse_args()
    if not LOGHUB.is_dir():
        sys.exit(f"no Loghub samples at {LOGHUB}")
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    tick = clock(a.wall)
    names = a.formats or sorted(f.name.removesuffix("_2k.log") for f in LOGHUB.glob("*_2k.log"))
    rows = []
    header = f"{'log':<12} {'format':<12} {'exact':>5} {'fallback':>8} " + " ".join(
        f"{x:>10}" for x in a.approaches
    )
    if "baseline" in a.approaches and len(a.approaches) > 1:
        header += " " + " ".join(f"{'x ' + x:>12}" for x in a.approaches if x != "baseline")
    print(
        f"lines/s per core ({'wall' if a.wall else 'CPU'} time, best of {a.repeat}), {a.lines:,} lines each"
    )
    print(header)
    totals = {x: 0.0 for x in a.approaches}
    n_total = 0
    sample_all: list[str] = []
    for name in names:
        sample = (LOGHUB / f"{name}_2k.log").read_text(encoding="utf-8", errors="replace").splitlines()
        sample_all += sample
        fmt = detect_format(sample[:128])
        lines = repeated(sample, fmt, a.lines)
        same, fallback = exactness(sample, fmt)
        row: dict[str, object] = {"log": name, "format": fmt.name, "lines": len(lines), "exact": same}
        row["fallback_share"] = fallback
        for approach in a.approaches:
            best = float("inf")
            for _ in range(a.repeat):
                t0 = tick()
                RUNNERS[approach](lines, fmt, a.batch_lines)
                best = min(best, tick() - t0)
            row[approach] = len(lines) / best
            totals[approach] += best
        n_total += len(lines)
        rows.append(row)
        line = f"{name:<12} {fmt.name:<12} {'yes' if same else 'NO':>5} {100 * fallback:>7.2f}% "
        line += " ".join(f"{row[x]:>10,.0f}" for x in a.approaches)
        if "baseline" in a.approaches and len(a.approaches) > 1:
            line += " " + " ".join(
                f"{row[x] / row['baseline']:>11.1f}x"  # type: ignore[operator]
                for x in a.approaches
                if x != "baseline"
            )
        print(line, flush=True)
    overall = {x: n_total / t for x, t in totals.items()}
    line = f"{'overall':<12} {'':<12} {'':>5} {'':>8} " + " ".join(
        f"{overall[x]:>10,.0f}" for x in a.approaches
    )
    if "baseline" in a.approaches and len(a.approaches) > 1:
        line += " " + " ".join(
            f"{overall[x] / overall['baseline']:>11.1f}x" for x in a.approaches if x != "baseline"
        )
    print(line)
    for x in a.approaches:
        print(f"  {x}: 7 million lines (a 1 GB log) in {7e6 / overall[x] / 60:.1f} min on one core")
    result: dict[str, object] = {
        "clock": "wall" if a.wall else "process CPU",
        "repeat": a.repeat,
        "lines_per_format": a.lines,
        "batch_lines": a.batch_lines,
        "machine": {"python": platform.python_version(), "pyarrow": pa.__version__, "cpus": os.cpu_count()},
        "rows": rows,
        "overall_lines_per_s": overall,
    }
    if a.kernels:
        got = kernels(sample_all, a.repeat, a.wall)
        result["kernels_us_per_line"] = got
        print(f"\nregex steps alone, microseconds per line ({len(sample_all):,} Loghub lines):")
        for step, by_engine in got.items():
            print(f"  {step:<30} " + "  ".join(f"{e} {us:.2f}" for e, us in by_engine.items()))
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
