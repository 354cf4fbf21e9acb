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

import numpy as np

from actors.checkpoint import allow
from actors.tasks.logs.report import duration_text
from actors.tasks.logs.stats import Burst, LogLine, ParsedBatch, WindowStats, hot_runs

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
#: Windows whose rate a stream keeps for later nights (a day of minutes).
MAX_WINDOWS = 1440
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
    #: tonight's windows' rates against the earlier nights' at the same time of day (for their scale)
    vs_history: list[float] = field(default_factory=list)
    #: (window start as seconds of the day, lines, seconds) of each window: what later nights compare with
    windows: list[tuple[float, int, float]] = field(default_factory=list)
    busiest: list[tuple[int, int, str]] = field(default_factory=list)  # (lines, window, span)
    last_ts: float | None = None
    last_ts_text: str | None = None
    # the open window's notes
    new: list[tuple[str, str]] = field(default_factory=list)  # (template, its first line)
    new_more: int = 0
    silences: list[Silence] = field(default_factory=list)

    def add(self, line: LogLine, window: int) -> None:
        """Note one parsed line with text of window ``window`` (the raw feed's way; ``add_batch`` is the
        same in columns)."""
        template = line.template
        self.counts[template] += 1
        if template not in self.seen:
            self._first_seen(template, line.text, window)
        if line.ts is not None:
            if self.last_ts is not None and line.ts - self.last_ts >= self.silence_seconds:
                gap = line.ts - self.last_ts
                self.silences.append(Silence(self.last_ts_text or "", line.ts_text or "", gap))
            if self.last_ts is None or line.ts >= self.last_ts:
                self.last_ts, self.last_ts_text = line.ts, line.ts_text

    def add_batch(self, batch: ParsedBatch, start: int, stop: int, window: int) -> None:
        """``add`` of rows ``start:stop`` of a parsed batch (lines with text), in columns: the same notes."""
        rows = np.arange(start, stop)
        rows = rows[~batch.blank[start:stop]]
        if not len(rows):
            return
        codes = batch.template_codes[rows]
        names = batch.template_names
        distinct, first = np.unique(codes, return_index=True)
        counts = np.bincount(codes - codes.min(), minlength=0)
        for code, at in sorted(zip(distinct.tolist(), first.tolist()), key=lambda ca: ca[1]):
            template = names[code]
            self.counts[template] += int(counts[code - codes.min()])
            if template not in self.seen:
                self._first_seen(template, batch.text[int(rows[at])], window)
        self._silences(batch, rows)

    def _first_seen(self, template: str, line: str, window: int) -> None:
        if len(self.seen) >= MAX_SEEN:
            self.overflowed = True
            return
        self.seen[template] = window
        if len(self.new) < MAX_NEW:
            self.new.append((template, line[:LINE_CHARS]))
        else:
            self.new_more += 1

    def _silences(self, batch: ParsedBatch, rows: np.ndarray) -> None:
        """Gaps of ``silence_seconds`` or more between a line's time and the latest time before it."""
        ts = batch.ts[rows]
        stamped = rows[~np.isnan(ts)]
        if not len(stamped):
            return
        times = batch.ts[stamped]
        before = np.maximum.accumulate(
            np.concatenate([[-np.inf if self.last_ts is None else self.last_ts], times])
        )
        gaps = np.flatnonzero((times - before[:-1] >= self.silence_seconds) & np.isfinite(before[:-1]))
        for g in gaps.tolist():
            start_text = self.last_ts_text if g == 0 else _latest_text(batch, stamped[:g], times[:g])
            end = batch[int(stamped[g])]
            self.silences.append(Silence(start_text or "", end.ts_text or "", float(times[g] - before[g])))
        latest = _last_max(times)  # the last of the latest times (the per-line rule keeps ties' last)
        if self.last_ts is None or times[latest] >= self.last_ts:
            self.last_ts, self.last_ts_text = float(times[latest]), batch[int(stamped[latest])].ts_text

    def rate(
        self, stats: WindowStats, seconds: float, day: float | None = None, earlier: float | None = None
    ) -> float | None:
        """The closing window's lines per second against what was usual (None for the first window),
        remembered. ``day``: the window's start as seconds of the day; ``earlier``: the earlier nights'
        rate at that time. With earlier nights, usual is their rate at this time of day times tonight's
        scale (the median of tonight's windows against theirs), so a daily rhythm is no change and a change
        at the day's peak still shows; without, it is the median of the last few windows (a median, so a
        window that the change itself cuts in two does not hide it in the next one)."""
        rate = stats.lines / max(seconds, 1e-9)
        if day is not None and len(self.windows) < MAX_WINDOWS:
            self.windows.append((day, stats.lines, seconds))
        usual = statistics.median(self.recent) if self.recent else 0.0
        self.recent = [*self.recent, rate][-RECENT_RATES:]
        if earlier:
            against = rate / earlier
            scale = statistics.median(self.vs_history) if len(self.vs_history) >= 2 else None
            self.vs_history = [*self.vs_history, against][-MAX_WINDOWS:]
            if scale:
                return against / scale
        return rate / usual if usual > 0 else None

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


def _last_max(values: np.ndarray) -> int:
    return len(values) - 1 - int(np.argmax(values[::-1]))


def _latest_text(batch: ParsedBatch, rows: np.ndarray, times: np.ndarray) -> str | None:
    """The timestamp text of the latest of these lines (of equal times, the last one)."""
    return batch[int(rows[_last_max(times)])].ts_text


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
    for b, e in hot_runs(hot):
        start = next(s for s in range(lo + b * width, lo + (e + 1) * width) if s in stats.second_text)
        end = max(s for s in range(lo + b * width, lo + (e + 1) * width) if s in stats.second_text)
        n_alerts = sum(alerts[b : e + 1])
        ratio = n_alerts / ((e - b + 1) * (mean or 1.0))
        found.append(
            Burst(stats.second_text[start], stats.second_text[end], sum(lines[b : e + 1]), n_alerts, ratio)
        )
    return found
