"""The condensed feed: a log as an operator would skim it, one short block of text per window.

Contract:

* ``Skim`` follows one stream (a host's log) line by line, beside the window's exact statistics
  (``WindowStats``), and keeps what a skimming operator would note: the first occurrence of each message
  template never seen before in the stream (its line, clipped), silences (no line for at least
  ``silence_seconds``), and, when a window closes, its line rate against the stream's recent windows (a
  rate change at ``rate_change`` times or its inverse). Over the whole stream it counts every template and
  the busiest windows, for the night's summary row.
* ``Skim.window_text(stats, ...)`` is the text the model reads for a window instead of the window's lines:
  its time span and counts, the new templates with their first line, the alert lines deduplicated by
  template with counts, the bursts of lines and of alert lines, the silences and the rate. Its length
  grows with what is new in the log, not with its lines; the stream stays one continuous stream across
  the night, so the bounded cache carries earlier hours into later reports.
* What ``Skim`` remembers is bounded: at most ``MAX_SEEN`` templates (past that, a template counts as seen
  and the stream says so once), ``MAX_NEW`` new templates listed per window (the rest counted), a few
  recent rates and busiest windows. It is part of the task's checkpointed state.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field

from actors.checkpoint import allow
from actors.tasks.logs.report import duration_text
from actors.tasks.logs.stats import Burst, LogLine, WindowStats

#: Templates a stream remembers (for "new" and for the night's summary), at most.
MAX_SEEN = 50_000
#: New templates listed in one window's skim (the rest are counted).
MAX_NEW = 20
#: Alert templates listed in one window's skim.
MAX_ALERTS = 8
#: Characters of a line quoted in the skim.
LINE_CHARS = 240
#: Recent windows a window's rate is compared with, and busiest windows kept for the summary.
RECENT_RATES = 3
BUSIEST = 5
#: Alert bursts: minutes whose alert lines are at least this many (and BURST_FACTOR times the window's
#: median minute, and 1.5 times its mean).
ALERT_BURST_MIN = 5
ALERT_BURST_FACTOR = 4.0


@allow
@dataclass
class Silence:
    start: str
    end: str
    seconds: float


@allow
@dataclass
class Skim:
    """One stream's skimming memory (see the module docstring)."""

    silence_seconds: float = 600.0
    rate_change: float = 3.0
    #: template -> the window it was first seen in (the stream's memory of what is not new)
    seen: dict[str, int] = field(default_factory=dict)
    overflowed: bool = False  # MAX_SEEN reached: later templates are not told apart as new
    counts: Counter[str] = field(default_factory=Counter)  # every template of the stream, with its lines
    recent: list[float] = field(default_factory=list)  # lines per second of the last windows
    busiest: list[tuple[int, int, str]] = field(default_factory=list)  # (lines, window, span)
    last_ts: float | None = None
    last_ts_text: str | None = None
    # the open window's notes
    new: list[tuple[str, str]] = field(default_factory=list)  # (template, its first line)
    new_more: int = 0
    silences: list[Silence] = field(default_factory=list)

    def add(self, line: LogLine, window: int) -> None:
        """Note one parsed line with text of window ``window``."""
        template = line.template
        self.counts[template] += 1
        if template not in self.seen:
            if len(self.seen) < MAX_SEEN:
                self.seen[template] = window
                if len(self.new) < MAX_NEW:
                    self.new.append((template, line.text[:LINE_CHARS]))
                else:
                    self.new_more += 1
            else:
                self.overflowed = True
        if line.ts is not None:
            if self.last_ts is not None and line.ts - self.last_ts >= self.silence_seconds:
                self.silences.append(
                    Silence(self.last_ts_text or "", line.ts_text or "", line.ts - self.last_ts)
                )
            if self.last_ts is None or line.ts >= self.last_ts:
                self.last_ts, self.last_ts_text = line.ts, line.ts_text

    def rate(self, stats: WindowStats, seconds: float) -> float | None:
        """The closing window's lines per second against the recent windows' (None for the first), and
        remember it."""
        rate = stats.lines / max(seconds, 1e-9)
        mean = statistics.fmean(self.recent) if self.recent else 0.0
        self.recent = [*self.recent, rate][-RECENT_RATES:]
        return rate / mean if mean > 0 else None

    def close(self, stats: WindowStats, index: int) -> None:
        """The window ended (after ``window_text``): count it among the busiest, start the next's notes."""
        span = (
            f"{stats.first_ts_text} .. {stats.last_ts_text}" if stats.first_ts_text else f"window {index + 1}"
        )
        self.busiest = sorted([*self.busiest, (stats.lines, index, span)], reverse=True)[:BUSIEST]
        self.new, self.new_more, self.silences = [], 0, []

    def is_rate_change(self, ratio: float | None) -> bool:
        return ratio is not None and (ratio >= self.rate_change or ratio <= 1 / self.rate_change)

    def window_text(self, stats: WindowStats, source: str, fmt: str, ratio: float | None) -> str:
        """The window as the model reads it (see the module docstring)."""
        when = f"{stats.first_ts_text} .. {stats.last_ts_text}" if stats.first_ts_text else "no timestamps"
        levels = ", ".join(f"{lv} {n}" for lv, n in stats.level_counts() if lv != "NONE")
        out = [f"[{when}] {source} ({fmt}): {stats.lines} lines" + (f"; {levels}" if levels else "")
               + f"; {stats.alerts} alerts"]  # fmt: skip
        out += [f"New message: {line}" for _, line in self.new]
        if self.new_more:
            out.append(f"... and {self.new_more} more new messages")
        alerts = stats.top_template_stats(MAX_ALERTS, alerts_only=True)
        for template, t in alerts:
            out.append(
                f"Alert {t.alerts}x: {template[:LINE_CHARS]}" + (f" (first {t.first})" if t.first else "")
            )
        for burst in [*stats.bursts(), *alert_bursts(stats)]:
            out.append(f"Burst {burst.start} .. {burst.end}: {burst.lines} lines, {burst.alerts} alerts")
        for silence in self.silences:
            out.append(
                f"Silence {silence.start} .. {silence.end}: no lines for {duration_text(silence.seconds)}"
            )
        if self.is_rate_change(ratio):
            assert ratio is not None
            out.append(f"Rate: {ratio:.1f}x the lines per second of the previous hours")
        return "\n".join(out) + "\n"


def alert_bursts(stats: WindowStats, width: int = 60) -> list[Burst]:
    """Spans of ``width``-second buckets with many more alert lines than the window's usual bucket (see
    ``ALERT_BURST_*``): an error burst need not be a burst of lines."""
    if not stats.alerts_per_second or not stats.per_second:
        return []
    lo, hi = min(stats.per_second), max(stats.per_second)
    n = (hi - lo) // width + 1
    if n < 3:
        return []
    alerts, lines = [0] * n, [0] * n
    for second, count in stats.alerts_per_second.items():
        alerts[(second - lo) // width] += count
    for second, count in stats.per_second.items():
        lines[(second - lo) // width] += count
    mean = statistics.fmean(alerts)
    threshold = max(ALERT_BURST_MIN, ALERT_BURST_FACTOR * statistics.median(alerts), 1.5 * mean)
    hot = [a >= threshold for a in alerts]
    found: list[Burst] = []
    b = 0
    while b < n:
        if not hot[b]:
            b += 1
            continue
        e = b
        while e + 1 < n and hot[e + 1]:
            e += 1
        start = next(s for s in range(lo + b * width, lo + (e + 1) * width) if s in stats.second_text)
        end = max(s for s in range(lo + b * width, lo + (e + 1) * width) if s in stats.second_text)
        n_alerts = sum(alerts[b : e + 1])
        ratio = n_alerts / ((e - b + 1) * (mean or 1.0))
        found.append(
            Burst(stats.second_text[start], stats.second_text[end], sum(lines[b : e + 1]), n_alerts, ratio)
        )
        b = e + 1
    return found
