"""Degenerate-output rate of pipeline jobs, from their Parquet output (``longread.quality``'s rule).

    python -m experiments.degenerate output/summarize_books output/answer_questions output/analyze_logs
    python -m experiments.degenerate output/analyze_logs --examples 3 --json results/degenerate.json
    python -m experiments.degenerate output/answer_questions --references ../shared/data/squality/dev.jsonl

Contract: for each output folder (local or ``s3://``, read as the pipeline reads it), every row with
model-written text (``output_text`` of ``segment``, ``final``, ``answer`` and ``window`` rows; error rows
are counted apart) is checked with ``longread.quality.degeneracy``. One table row per folder and row kind,
plus one per folder over all its kinds: rows, degenerate share, the share per reason (unfinished,
repetition, empty), mean words, and the stop reasons. ``--examples N`` prints N degenerate texts per
folder; ``--json`` writes the table and every flagged row. ``--references FILE.jsonl`` (SQuALITY format, the
file a ``qa`` job read, without ``input.id_column``) adds ROUGE-1/2/L of the ``answer`` rows against that
question's reference responses (``experiments.evaluate``'s scorer: best reference per metric), matched by
record index (``record_id``) and question text; an answer without references is an error, not a zero.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from longread.quality import REASONS, degeneracy

TEXT_KINDS = ("segment", "final", "answer", "window")


def load_rows(output: str) -> list[dict[str, Any]]:
    """The rows of one job's output folder (the pipeline's own reader: temporary files skipped)."""
    from pipeline.output.writer import read_results

    table = read_results(output)
    if table.num_rows == 0:
        raise FileNotFoundError(f"{output}: no results (is it a job's output folder?)")
    columns = [
        "row_kind",
        "stream_id",
        "segment_index",
        "output_text",
        "stop_reason",
        "record_id",
        "question",
    ]
    return table.select(columns).to_pylist()


def reference_answers(path: Path) -> dict[tuple[str, str], list[str]]:
    """``(record index, question text) -> reference responses`` of a SQuALITY-format JSONL file, the index
    counted as the pipeline counts JSONL records without an id column (non-empty lines from 0)."""
    from experiments.evaluate import parse_story

    refs: dict[tuple[str, str], list[str]] = {}
    index = 0
    with path.open(encoding="utf-8-sig") as handle:  # a BOM, as the pipeline's reader allows
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            story = parse_story(json.loads(line), f"{path} line {number}")
            for question in story.questions:
                refs[str(index), question.text] = question.references
            index += 1
    return refs


def add_rouge(
    table: list[dict[str, Any]], rows: list[dict[str, Any]], refs: dict[tuple[str, str], list[str]]
) -> None:
    """Mean ROUGE of the ``answer`` rows into the ``answer`` and ``all`` entries of one folder's table."""
    from experiments.evaluate import METRICS, Scorer

    answers = [r for r in rows if r["row_kind"] == "answer"]
    missing = [r for r in answers if (r["record_id"], (r["question"] or "").strip()) not in refs]
    if missing:
        r = missing[0]
        raise ValueError(
            f"{len(missing)} answers have no references, e.g. record {r['record_id']}: {r['question']!r} "
            "(--references must be the JSONL file the job read, without input.id_column)"
        )
    scorer = Scorer()
    scores = [
        scorer.score(r["output_text"] or "", refs[r["record_id"], r["question"].strip()]) for r in answers
    ]
    for entry in table:
        if entry["kind"] in ("answer", "all") and scores:
            for m in METRICS:
                entry[m] = sum(s[m] for s in scores) / len(scores)


def score(output: str, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(table rows per kind and overall, flagged rows) of one output folder."""
    checked = []
    errors = 0
    for row in rows:
        if row["row_kind"] not in TEXT_KINDS:
            errors += row["row_kind"] == "error"
            continue
        text = row["output_text"] or ""
        checked.append({**row, "reasons": list(degeneracy(text)), "words": len(text.split())})
    table = []
    for kind in [*[k for k in TEXT_KINDS if any(r["row_kind"] == k for r in checked)], "all"]:
        group = [r for r in checked if kind == "all" or r["row_kind"] == kind]
        n = len(group)
        entry: dict[str, Any] = {
            "output": output,
            "kind": kind,
            "rows": n,
            "degenerate": sum(bool(r["reasons"]) for r in group) / n if n else math.nan,
        }
        for reason in REASONS:
            entry[reason] = sum(reason in r["reasons"] for r in group) / n if n else math.nan
        entry["words"] = sum(r["words"] for r in group) / n if n else math.nan
        entry["stop_reasons"] = dict(Counter(r["stop_reason"] for r in group).most_common())
        if kind == "all":
            entry["error_rows"] = errors
        table.append(entry)
    flagged = [r for r in checked if r["reasons"]]
    return table, flagged


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.0f}%"


def format_table(table: list[dict[str, Any]]) -> str:
    head = (
        f"{'output':<34} {'kind':<8} {'rows':>5} {'degen':>6} {'unfin':>6} {'repeat':>6} {'empty':>6} "
        f"{'words':>6} {'errors':>6}  stop reasons"
    )
    lines = [head, "-" * len(head)]
    for t in table:
        stops = ", ".join(f"{k} {v}" for k, v in t["stop_reasons"].items())
        rouge = "  ROUGE-1/2/L {rouge1:.3f} {rouge2:.3f} {rougeL:.3f}".format(**t) if "rougeL" in t else ""
        words = "-" if math.isnan(t["words"]) else f"{t['words']:.1f}"
        errors = str(t["error_rows"]) if "error_rows" in t else ""
        lines.append(
            f"{t['output'][-34:]:<34} {t['kind']:<8} {t['rows']:>5} {_pct(t['degenerate']):>6} "
            f"{_pct(t['unfinished']):>6} {_pct(t['repetition']):>6} {_pct(t['empty']):>6} {words:>6} "
            f"{errors:>6}  {stops}{rouge}"
        )
    return "\n".join(lines)


def _no_nan(value: Any) -> Any:
    """``value`` with NaN as None: strict JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.degenerate", description=__doc__.split("\n\n")[0])
    p.add_argument("outputs", nargs="+", help="a job's output folder (local or s3://), repeatable")
    p.add_argument("--examples", type=int, default=0, help="print this many degenerate texts per folder")
    p.add_argument("--json", type=Path, help="write the table and the flagged rows here")
    p.add_argument(
        "--references", type=Path, help="SQuALITY-format JSONL the qa job read: adds ROUGE of the answers"
    )
    args = p.parse_args(argv)
    try:
        refs = reference_answers(args.references) if args.references else None
    except (OSError, ValueError) as exc:
        print(f"error: --references {args.references}: {exc}")
        return 2
    table: list[dict[str, Any]] = []
    flagged: dict[str, list[dict[str, Any]]] = {}
    for output in args.outputs:
        try:
            rows = load_rows(output)
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}")
            return 2
        part, bad = score(output, rows)
        if refs is not None:
            try:
                add_rouge(part, rows, refs)
            except ValueError as exc:
                print(f"error: {output}: {exc}")
                return 2
        table += part
        flagged[output] = bad
    print(format_table(table))
    for output, bad in flagged.items():
        for row in bad[: args.examples]:
            text = " ".join((row["output_text"] or "").split())
            where = f"{row['row_kind']} {row['stream_id']} #{row['segment_index']}"
            print(f"\n{output} {where} {row['reasons']}:")
            print(f"  {text[:400]}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = _no_nan({"table": table, "flagged": flagged})
        args.json.write_text(json.dumps(payload, indent=1, default=str, allow_nan=False))
    empty = [t for t in table if t["kind"] == "all" and t["rows"] == 0]
    for t in empty:
        print(f"warning: {t['output']} has no generated text to score ({t['error_rows']} error rows)")
    return 1 if empty else 0


if __name__ == "__main__":
    raise SystemExit(main())
