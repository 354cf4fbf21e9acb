"""Frozen copy of ``actors/tasks/logs/stats.py`` as of commit cc78ca9: today's per-line parser and window
statistics, before the batch path. The reference the faster per-line path and ``parse_batch`` are tested
against (tests/test_logparse.py) and the baseline of ``benchmarks/bench_logparse.py``. Do not edit.

Exact log statistics computed without the model: timestamps, levels, message templates, alert counts.

Contract:

* ``LogParser.parse(line)`` finds the line's timestamp (a configured ``regex`` + ``strptime`` format, or
  the earliest match among common formats in the first 96 characters: ISO 8601, syslog, Apache, BGL, HDFS,
  Spark, Android, HealthApp, Proxifier, epoch seconds), its level (normalized: ``WARNING`` -> ``WARN``,
  ``ERR`` -> ``ERROR``; ``NONE`` when absent) and its message template (the line without its timestamp,
  with hex ids, IP addresses and digit runs masked as ``<*>``).
* Year-less formats (syslog, Android, Proxifier) are placed in year 2000: good for ordering and windows,
  and the original text is kept for display (``first_timestamp``/``last_timestamp`` are the log's own text).
* ``WindowStats`` accumulates exact counts over a window: lines, levels, templates, alert lines, first and
  last timestamps, and lines that go back in time.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from actors.tasks.logs.formats import (
    ALERT_LEVELS,
    DEFAULT_LEVEL_PATTERN,
    GENERIC,
    LEVEL_CHARS,
    NOTABLE_LEVELS,
    LogFormat,
    normalize_level,
)

_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTHS = {m: i for i, m in enumerate(_MONTH_NAMES, start=1)}
_MON = f"(?P<b>{'|'.join(_MONTH_NAMES)})"
_HMS = r"(?P<H>\d{1,2}):(?P<M>\d{2}):(?P<S>\d{2})"

# Order breaks ties between matches that start at the same place: the more specific format first.
TIMESTAMP_FORMATS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        (
            "iso",
            r"(?P<Y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})[T ]"
            + _HMS
            + r"(?:[.,](?P<f>\d{1,9}))?(?P<z>Z|[+-]\d{2}:?\d{2}\b)?",
        ),
        (
            "bgl",
            r"(?P<Y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})-(?P<H>\d{2})\.(?P<M>\d{2})\.(?P<S>\d{2})(?:\.(?P<f>\d{1,9}))?",
        ),
        (
            "apache",
            r"\[(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) " + _MON + r" (?P<d>\d{1,2}) " + _HMS + r" (?P<Y>\d{4})\]",
        ),
        (
            "healthapp",
            r"\b(?P<Y>\d{4})(?P<m>\d{2})(?P<d>\d{2})-"
            + _HMS.replace(r"\d{2}", r"\d{1,2}")
            + r"(?::(?P<f>\d{1,3}))?",
        ),
        ("spark", r"\b(?P<y>\d{2})/(?P<m>\d{2})/(?P<d>\d{2}) " + _HMS + r"\b"),
        ("hdfs", r"^(?P<y>\d{2})(?P<m>\d{2})(?P<d>\d{2}) (?P<H>\d{2})(?P<M>\d{2})(?P<S>\d{2})\b"),
        ("syslog", r"\b" + _MON + r"\s+(?P<d>\d{1,2}) " + _HMS + r"\b"),
        ("android", r"\b(?P<m>\d{2})-(?P<d>\d{2}) " + _HMS + r"(?:\.(?P<f>\d{1,6}))?"),
        ("proxifier", r"\[(?P<m>\d{2})\.(?P<d>\d{2}) " + _HMS + r"\]"),
        ("epoch", r"\b(?P<e>1\d{9})(?:\.(?P<f>\d{1,6}))?\b"),
    )
)
SEARCH_CHARS = 96
_EPOCH = dict(TIMESTAMP_FORMATS)["epoch"]

# Android logcat: "03-17 16:13:38.811  1702  2395 D WindowManager: ..." (single-letter level after pid/tid)
_ANDROID_LEVEL = re.compile(r"^\S+ \S+\s+\d+\s+\d+ (?P<level>[VDIWEFA]) ")

_HEXID = re.compile(
    r"\b(?:[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}"  # UUIDs (first: they contain the others)
    r"|0x[0-9a-fA-F]+"  # 0x1f
    r"|(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{6,})\b"  # 9f4ef63 (hex ids with at least one digit)
)
_IP = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b")
_DIGITS = re.compile(r"\d+")
_STARS = re.compile(r"<\*>(?:[\s.:,_/-]*<\*>)+")
_SPACES = re.compile(r"\s+")
TEMPLATE_CHARS = 200


#: The year of timestamps that carry none (syslog, Android, Proxifier): a leap year, so Feb 29 parses.
NO_YEAR = 2000
#: A yearless timestamp this far before the previous one means the log crossed New Year.
NEW_YEAR_GAP_S = 180 * 86400


def _yearless(m: re.Match[str]) -> bool:
    g = m.groupdict()
    return not (g.get("Y") or g.get("y") or g.get("e"))


def _epoch(m: re.Match[str], no_year: int = NO_YEAR) -> float | None:
    g = m.groupdict()
    if g.get("e"):
        return float(g["e"]) + (float("0." + g["f"]) if g.get("f") else 0.0)
    try:
        year = int(g["Y"]) if g.get("Y") else 2000 + int(g["y"]) if g.get("y") else no_year
        month = int(g["m"]) if g.get("m") else _MONTHS[g["b"]]
        frac = float("0." + g["f"]) if g.get("f") else 0.0
        dt = datetime(year, month, int(g["d"]), int(g["H"]), int(g["M"]), int(g["S"]), tzinfo=UTC)
    except (KeyError, ValueError, TypeError):
        return None
    zone = g.get("z")
    if zone and zone != "Z":  # +02:00 is two hours ahead of UTC: subtract it
        digits = zone[1:].replace(":", "")
        offset = 3600 * int(digits[:2]) + 60 * int(digits[2:])
        frac -= offset if zone[0] == "+" else -offset
    return dt.timestamp() + frac


def _parse_custom(text: str, fmt: str) -> float:
    """``strptime``'s epoch seconds; a time without a zone (no ``%z`` in ``fmt``) is taken as UTC."""
    dt = datetime.strptime(text, fmt)
    return (dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)).timestamp()


def mask_template(message: str) -> str:
    """A message's template: variable parts (hex ids, IPs, numbers) replaced by ``<*>``."""
    text = _IP.sub("<*>", message)
    text = _HEXID.sub("<*>", text)
    text = _DIGITS.sub("<*>", text)
    text = _STARS.sub("<*>", text)
    return _SPACES.sub(" ", text).strip()[:TEMPLATE_CHARS]


@dataclass
class LogLine:
    text: str
    ts: float | None
    ts_text: str | None
    level: str
    template: str
    alert: bool = False

    @property
    def notable(self) -> bool:
        """An alert, or a line at WARN or above: worth listing in a report."""
        return self.alert or self.level in NOTABLE_LEVELS


class LogParser:
    """Parses lines of one stream. Remembers the timestamp format that matched, to try it first.

    ``log_format`` (``actors.tasks.logs.formats``; settable once the stream's first lines are seen) splits a
    line into level, component and message and decides alerts; ``level_pattern`` and ``alert_pattern``
    override its level and alert rule. Lines that do not match it (continuations) are parsed as ``GENERIC``
    ones.
    """

    def __init__(
        self,
        *,
        timestamp_pattern: str | None = None,
        timestamp_format: str | None = None,
        level_pattern: str | None = None,
        alert_pattern: str | None = None,
        log_format: LogFormat = GENERIC,
    ) -> None:
        self._custom: re.Pattern[str] | None = None
        if timestamp_pattern:
            self._custom = re.compile(timestamp_pattern)
            if "ts" not in self._custom.groupindex:
                raise ValueError(f"timestamp_pattern {timestamp_pattern!r} needs a named group (?P<ts>...)")
        self._custom_format = timestamp_format
        self._custom_level = level_pattern is not None
        self._level = re.compile(
            level_pattern or DEFAULT_LEVEL_PATTERN, 0 if level_pattern else re.IGNORECASE
        )
        if "level" not in self._level.groupindex:
            raise ValueError(f"level_pattern {level_pattern!r} needs a named group (?P<level>...)")
        self._alert = re.compile(alert_pattern) if alert_pattern else None
        self._last: re.Pattern[str] | None = None
        # Yearless timestamps: years added since the first one (the log crossed New Year), and the last.
        self._years = 0
        self._last_yearless: float | None = None
        self.format = log_format

    def timestamp(self, line: str) -> tuple[float | None, str | None, tuple[int, int] | None]:
        """(epoch seconds, the timestamp's text, its span) or Nones when the line has none."""
        if self._custom is not None:
            m = self._custom.search(line)
            if not m:
                return None, None, None
            text = m.group("ts")
            try:
                value = _parse_custom(text, self._custom_format) if self._custom_format else float(text)
            except ValueError:
                return None, text, m.span("ts")
            return value, text, m.span("ts")
        head = line[:SEARCH_CHARS]
        best: re.Match[str] | None = None
        if self._last is not None:
            best = self._last.search(head)
        if best is None or best.start() > 0:
            for name, pattern in TIMESTAMP_FORMATS:
                # In a stream whose timestamps have another format, a bare 10-digit number (an id, an
                # amount) is not an epoch time: the line has no timestamp (e.g. a continuation line).
                if name == "epoch" and self._last is not None and self._last is not _EPOCH:
                    continue
                m = pattern.search(head)
                if m and (best is None or m.start() < best.start()):
                    best = m
        if best is None:
            return None, None, None
        self._last = best.re
        seconds = _epoch(best, NO_YEAR + self._years)
        if seconds is not None and _yearless(best):
            last = self._last_yearless
            if last is not None and seconds > last + NEW_YEAR_GAP_S and self._years:
                # a Dec 31 line written out of order just after New Year: the year before (not remembered)
                seconds = _epoch(best, NO_YEAR + self._years - 1)
            else:
                if last is not None and seconds < last - NEW_YEAR_GAP_S:
                    self._years += 1  # Dec 31 -> Jan 1: the next year
                    seconds = _epoch(best, NO_YEAR + self._years)  # None: Feb 29 of a common year
                self._last_yearless = seconds if seconds is not None else last
        return seconds, best.group(0).strip("[]"), best.span()

    def memory(self) -> list[Any] | None:
        """What a resumed stream gives ``remember``: the remembered format's pattern and the yearless
        timestamps' year count and last value; None before any timestamp."""
        if self._last is None:
            return None
        return [self._last.pattern, self._years, self._last_yearless]

    def remember(self, memory: list[Any] | str | None) -> None:
        """Continue as the parser whose ``memory()`` this is (a bare pattern: an older checkpoint's)."""
        pattern, years, last = (memory, 0, None) if not isinstance(memory, list) else memory
        self._last = next((p for _, p in TIMESTAMP_FORMATS if p.pattern == pattern), None)
        self._years, self._last_yearless = int(years), last

    def level(self, line: str) -> str:
        """The level searched for in the head of ``line`` (``level_pattern``, else the usual words)."""
        m = (None if self._custom_level else _ANDROID_LEVEL.match(line)) or self._level.search(
            line[:LEVEL_CHARS]
        )
        return normalize_level(m.group("level")) if m else "NONE"

    def parse(self, line: str) -> LogLine:
        ts, ts_text, span = self.timestamp(line)
        fmt = self.format
        header = fmt.match(line) if fmt is not GENERIC else None
        if header is None:  # the generic format, or a line that is not of the stream's (a continuation)
            level = self.level(line)
            template = mask_template(line if span is None else line[: span[0]] + " " + line[span[1] :])
            alert = level in ALERT_LEVELS
        else:
            if self._custom_level or fmt.has_level:
                level = self.level(line) if self._custom_level else header.level or "NONE"
            else:
                level = "NONE"  # the format writes no level: do not read one into its free text
            message = f"{header.component}: {header.message}" if header.component else header.message
            template = mask_template(message)
            alert = fmt.is_alert(header)
        if self._alert is not None:
            alert = bool(self._alert.search(line))
        return LogLine(text=line, ts=ts, ts_text=ts_text, level=level, template=template, alert=alert)


@dataclass
class TemplateStats:
    """One message template's share of a window: how often, how many alerts, when first and last."""

    count: int = 0
    alerts: int = 0
    level: str = "NONE"  # the level of its first line
    first: str | None = None  # timestamp text of its first and last lines that have one
    last: str | None = None


@dataclass
class Burst:
    """A span of time in which the window's lines came much faster than its average rate."""

    start: str
    end: str
    lines: int
    alerts: int
    rate_ratio: float  # lines per second in the burst / over the whole window


#: Time resolutions bursts are measured at: the finest that cuts a window's span into at most
#: ``BURST_BUCKETS`` buckets.
BURST_RESOLUTIONS = (1, 5, 10, 30, 60, 300, 600, 1800, 3600, 6 * 3600, 86400, 7 * 86400)
BURST_BUCKETS = 60
#: A bucket is part of a burst when it holds at least this many lines and this many times the mean.
BURST_MIN_LINES = 5
BURST_FACTOR = 4.0


@dataclass
class WindowStats:
    """Exact statistics of one window of log lines."""

    lines: int = 0
    alerts: int = 0
    out_of_order: int = 0
    levels: Counter[str] = field(default_factory=Counter)
    templates: Counter[str] = field(default_factory=Counter)
    template_stats: dict[str, TemplateStats] = field(default_factory=dict)
    first_ts: float | None = None
    last_ts: float | None = None
    first_ts_text: str | None = None
    last_ts_text: str | None = None
    #: lines (and alert lines) per whole second of log time, with the text of each second's first stamp
    per_second: Counter[int] = field(default_factory=Counter)
    alerts_per_second: Counter[int] = field(default_factory=Counter)
    second_text: dict[int, str] = field(default_factory=dict)

    def add(self, line: LogLine) -> None:
        self.lines += 1
        self.levels[line.level] += 1
        self.templates[line.template] += 1
        self.alerts += line.alert
        t = self.template_stats.get(line.template)
        if t is None:
            t = self.template_stats[line.template] = TemplateStats(level=line.level)
        t.count += 1
        t.alerts += line.alert
        if line.ts is not None:
            if self.last_ts is not None and line.ts < self.last_ts:
                self.out_of_order += 1
            if self.first_ts is None:
                self.first_ts, self.first_ts_text = line.ts, line.ts_text
            self.last_ts, self.last_ts_text = line.ts, line.ts_text
            if t.first is None:
                t.first = line.ts_text
            t.last = line.ts_text
            second = int(line.ts // 1)
            self.per_second[second] += 1
            self.alerts_per_second[second] += line.alert
            self.second_text.setdefault(second, line.ts_text or "")

    def top_templates(self, k: int) -> list[tuple[str, int]]:
        return sorted(self.templates.items(), key=lambda kv: (-kv[1], kv[0]))[:k]

    def top_template_stats(self, k: int, alerts_only: bool = False) -> list[tuple[str, TemplateStats]]:
        """The ``k`` most frequent templates (of alert lines only: by alert count), most frequent first."""
        items = [(t, s) for t, s in self.template_stats.items() if s.alerts or not alerts_only]
        key = (lambda ts: (-ts[1].alerts, ts[0])) if alerts_only else (lambda ts: (-ts[1].count, ts[0]))
        return sorted(items, key=key)[:k]

    def notable_templates(self, k: int) -> list[tuple[str, TemplateStats]]:
        """The ``k`` most frequent templates of alert or WARN-and-above lines."""
        items = [(t, s) for t, s in self.template_stats.items() if s.alerts or s.level in NOTABLE_LEVELS]
        return sorted(items, key=lambda ts: (-ts[1].alerts, -ts[1].count, ts[0]))[:k]

    def level_counts(self) -> list[tuple[str, int]]:
        return sorted(self.levels.items(), key=lambda kv: (-kv[1], kv[0]))

    @property
    def span_seconds(self) -> float | None:
        if not self.per_second:
            return None
        return float(max(self.per_second) - min(self.per_second) + 1)

    def bursts(self, k: int = 3) -> list[Burst]:
        """The ``k`` largest bursts (see ``BURST_*``), in time order. Buckets are aligned to the window's
        first second; adjacent burst buckets merge. None when the lines span a single bucket."""
        if not self.per_second:
            return []
        lo, hi = min(self.per_second), max(self.per_second)
        span = hi - lo + 1
        width = next((r for r in BURST_RESOLUTIONS if span / r <= BURST_BUCKETS), BURST_RESOLUTIONS[-1])
        n_buckets = (span + width - 1) // width
        if n_buckets < 2:
            return []
        lines = [0] * n_buckets
        alerts = [0] * n_buckets
        first: list[int | None] = [None] * n_buckets
        last: list[int | None] = [None] * n_buckets
        for second in sorted(self.per_second):
            b = (second - lo) // width
            lines[b] += self.per_second[second]
            alerts[b] += self.alerts_per_second[second]
            first[b] = second if first[b] is None else first[b]
            last[b] = second
        mean = sum(lines) / n_buckets
        hot = [n >= BURST_MIN_LINES and n >= BURST_FACTOR * mean for n in lines]
        found: list[Burst] = []
        b = 0
        while b < n_buckets:
            if not hot[b]:
                b += 1
                continue
            e = b
            while e + 1 < n_buckets and hot[e + 1]:
                e += 1
            start, end = first[b], last[e]
            assert start is not None and end is not None  # hot buckets hold lines
            n = sum(lines[b : e + 1])
            stamped = sum(self.per_second.values())  # the same lines the buckets count
            ratio = (n / ((e - b + 1) * width)) / (stamped / span) if stamped else 0.0
            found.append(
                Burst(self.second_text[start], self.second_text[end], n, sum(alerts[b : e + 1]), ratio)
            )
            b = e + 1
        largest = sorted(found, key=lambda x: -x.lines)[:k]
        return [x for x in found if x in largest]


def compile_key_pattern(pattern: str) -> re.Pattern[str]:
    """A grouping key regex: the named group ``key`` if present, else group 1, else the whole match."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"key_pattern {pattern!r} is not a valid regular expression: {exc}") from None


def extract_key(pattern: re.Pattern[str], text: str) -> str | None:
    m = pattern.search(text)
    if not m:
        return None
    if "key" in pattern.groupindex:
        return m.group("key")
    return m.group(1) if pattern.groups else m.group(0)
