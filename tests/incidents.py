"""Which of the generator's injected incidents a night's rows show, by the statistics alone (no model text):
shared by the condensed-feed tests and ``benchmarks/bench_rows.py log``."""

from __future__ import annotations

from typing import Any

import pandas as pd

from actors.tasks.logs.formats import get_format
from actors.tasks.logs.stats import LogParser


def clock(text: str, fmt: str) -> float:
    """A timestamp's time of day in seconds (yearless formats parse into another year: compare times)."""
    ts = LogParser(log_format=get_format(fmt)).timestamp(text)[0]
    assert ts is not None, text
    return ts % 86400


def span(incident: dict[str, Any]) -> tuple[float, float]:
    return incident["start_epoch"] % 86400, (incident["end_epoch"] - 1e-6) % 86400 + 1e-6


def found_incidents(labels: dict[str, Any], rows: pd.DataFrame, window_seconds: float) -> dict[str, bool]:
    """``"kind host start" -> found`` for every incident of tonight's labels: an alert burst, a silence,
    a rate ratio of 3 or more (either way) within three windows, the template in the host's new templates,
    the host flagged new."""
    windows = rows[rows.row_kind == "window"]
    summaries = rows[rows.row_kind == "summary"].set_index("log_host")
    found: dict[str, bool] = {}
    for incident in labels["incidents"]:
        host, kind = incident["host"], incident["kind"]
        mine = windows[windows.log_host == host]
        fmt = mine.log_format.iloc[0]
        start, end = span(incident)
        if kind == "error_burst":
            hit = any(clock(b["start"], fmt) < end and clock(b["end"], fmt) >= start - 60
                      for bursts in mine.log_alert_bursts for b in bursts)  # fmt: skip
        elif kind == "silence":
            hit = any(clock(s["start"], fmt) <= start + 60 and clock(s["end"], fmt) >= end - 60
                      for silences in mine.log_silences for s in silences)  # fmt: skip
        elif kind == "rate_change":
            w = window_seconds
            later = mine[[start <= clock(t.split(" .. ")[0], fmt) + w <= start + 3 * w + 1
                          for t in mine.segment_title]]  # fmt: skip
            hit = bool(((later.log_rate_ratio >= 3) | (later.log_rate_ratio <= 1 / 3)).any())
        elif kind == "new_template":
            hit = incident["template"] in set(summaries.loc[host, "log_new_templates"])
        else:  # new_host
            hit = bool(summaries.loc[host, "log_new_host"])
        found[f"{kind} {host} {incident['start']}"] = hit
    return found
