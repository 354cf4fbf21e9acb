"""Incident reports from a log window's exact statistics: the text a reader sees first, the model's after.

Contract:

* ``statistics_text(stats, ...)`` renders a window's statistics (``actors.tasks.logs.stats.WindowStats``) as
  short plain-text lines: time span and duration, counts by level, alert lines and the rule that counted
  them, notable messages (alert, then WARN-and-above templates) and the most frequent ones with their first
  and last occurrence, and bursts in time. It needs no model, so a report is useful whatever model wrote
  the summary; the same text is what the model is shown before it summarizes.
* ``render_report(title, statistics, summary, model)`` puts a title, the statistics and the model's
  summary (labelled with the model's name, and marked when it is missing) together.
* ``template_rows`` / ``burst_rows`` give the same facts as Parquet-ready structs.
"""

from __future__ import annotations

from typing import Any

from actors.tasks.logs.stats import Burst, TemplateStats, WindowStats

MAX_TEMPLATE_CHARS = 120


def duration_text(seconds: float) -> str:
    """``3725`` -> ``"1 h 2 min"``; whole seconds under a minute, days above two."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 60:
        return f"{minutes:.0f} min"
    hours = minutes / 60
    if hours < 48:
        h, m = divmod(round(minutes), 60)
        return f"{h} h {m} min" if m else f"{h} h"
    return f"{hours / 24:.1f} days"


def _clip(text: str, limit: int = MAX_TEMPLATE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _span(t: TemplateStats) -> str:
    if t.first is None:
        return ""
    return f" (at {t.first})" if t.first == t.last else f" (first {t.first}, last {t.last})"


def _line(template: str, t: TemplateStats, alerts: bool = False) -> str:
    level = "" if t.level == "NONE" else f"[{t.level}] "
    count = f"{t.alerts}x" if alerts else f"{t.count}x"
    return f"  - {count} {level}{_clip(template)}{_span(t)}"


def statistics_text(stats: WindowStats, alert_rule: str, top: int = 5, notable: int = 3) -> str:
    """The window's facts as a few short lines (see the module docstring)."""
    lines = []
    count = f"{stats.lines} line{'' if stats.lines == 1 else 's'}"
    if stats.out_of_order and stats.per_second:  # lines went back in time: the earliest .. the latest
        lo, hi = min(stats.per_second), max(stats.per_second)
        when = f"{stats.second_text[lo]} .. {stats.second_text[hi]} ({duration_text(hi - lo)})"
        lines.append(f"Time: {when}, {count}")
    elif stats.first_ts_text:
        when = f"{stats.first_ts_text} .. {stats.last_ts_text}"
        if stats.first_ts is not None and stats.last_ts is not None:
            when += f" ({duration_text(stats.last_ts - stats.first_ts)})"
        lines.append(f"Time: {when}, {count}")
    else:
        lines.append(f"Time: no timestamps, {count}")
    levels = [(lv, n) for lv, n in stats.level_counts() if lv != "NONE"]
    if levels:
        lines.append("Levels: " + ", ".join(f"{lv} {n}" for lv, n in levels))
    share = 100 * stats.alerts / stats.lines if stats.lines else 0.0
    lines.append(f"Alerts: {stats.alerts} lines ({share:.0f}%; {alert_rule})")
    flagged = stats.notable_templates(notable)
    if flagged:
        lines.append("Notable messages:")
        lines += [_line(t, s, alerts=bool(s.alerts)) for t, s in flagged]
    else:
        lines.append("Notable messages: none (no alert, warning or error line)")
    frequent = stats.top_template_stats(top)
    if frequent:
        lines.append("Most frequent messages:")
        lines += [_line(t, s) for t, s in frequent]
    if stats.out_of_order:
        lines.append(f"Out of order: {stats.out_of_order} lines go back in time")
    bursts = stats.bursts()
    if bursts:
        lines.append("Bursts:")
        lines += [
            f"  - {b.start} .. {b.end}: {b.lines} lines, {b.rate_ratio:.0f}x the window's rate"
            + (f", {b.alerts} alerts" if b.alerts else "")
            for b in bursts
        ]
    return "\n".join(lines)


def render_report(title: str, statistics: str, summary: str, model: str) -> str:
    """The incident report: title, statistics, then the model's summary."""
    text = summary.strip() or "(the model wrote nothing)"
    return f"{title}\n{statistics}\nSummary ({model}): {text}"


def template_rows(items: list[tuple[str, TemplateStats]]) -> list[dict[str, Any]]:
    return [
        {
            "template": t,
            "count": s.count,
            "alerts": s.alerts,
            "level": s.level,
            "first": s.first,
            "last": s.last,
        }
        for t, s in items
    ]


def burst_rows(bursts: list[Burst]) -> list[dict[str, Any]]:
    return [
        {"start": b.start, "end": b.end, "lines": b.lines, "alerts": b.alerts, "rate_ratio": b.rate_ratio}
        for b in bursts
    ]
