"""Exact log statistics computed without the model: timestamps, levels, message templates, alert counts.

Contract:

* ``LogParser.parse(line)`` finds the line's timestamp (a configured ``regex`` + ``strptime`` format, or
  the earliest match among common formats in the first 96 characters: ISO 8601, syslog, Apache, BGL, HDFS,
  Spark, Android, HealthApp, Proxifier, epoch seconds), its level (normalized: ``WARNING`` -> ``WARN``,
  ``ERR`` -> ``ERROR``; ``NONE`` when absent) and its message template (the line without its timestamp,
  with hex ids, IP addresses and digit runs masked as ``<*>``).
* ``LogParser.parse_batch(lines)`` -> ``ParsedBatch``: the same, field for field, for a list of lines at
  once, and leaves the parser in the same state (``memory()``) as parsing them one by one. ``ParsedBatch``
  holds columns (``ts`` float, NaN for none; ``ts_text``; ``level``; ``template``; ``alert``; ``blank``),
  ``batch[i]`` is the ``LogLine`` that ``parse`` gives, and ``batch.slice(start, stop)`` is a cheap view.
* Year-less formats (syslog, Android, Proxifier) are placed in year 2000: good for ordering and windows,
  and the original text is kept for display (``first_timestamp``/``last_timestamp`` are the log's own text).
  A log that goes from Dec 31 to Jan 1 counts on into the next year.
* ``WindowStats`` accumulates exact counts over a window: lines, levels, templates, alert lines, first and
  last timestamps, and lines that go back in time. ``WindowStats.add_batch(batch, start, stop)`` adds the
  rows ``start:stop`` of a ``ParsedBatch`` and leaves the statistics equal to adding them line by line.

Why a batch path, and this one (measured by ``benchmarks/bench_logparse.py``; BENCHMARKS.md has the table):
the per-line code spends its time in Python's regex engine (up to eleven timestamp searches, five masking
substitutions, the format's line regex) and in the Python around it: 24,000 lines per CPU-second over the 16
Loghub logs. Tuning it in Python (one timestamp regex per parser state, one masking substitution, cached day
numbers: today's ``parse``) gains 1.1x (0.8-2.3x per log). ``parse_batch`` runs each regex once over a whole
batch with pyarrow.compute (RE2, C++; pyarrow is already a dependency): where the parser's current timestamp
format matches at a line's start (RE2's DFA says so cheaply) that is the line's timestamp, the other lines
get one search of all formats (``(?P<s>that format)|(?P<o>the others)``, which also says where the format
changes); the format's line regex captures the line's head and the line is split after it (RE2's capturing
engine is slow over a long message); one substitution masks IP addresses, hex ids, digit runs and the
``<*>`` runs they make (equal to the old four substitutions, tested), once per distinct message of the
batch; numpy turns the fields into epoch seconds, walks the yearless year count and makes the window's
counts. That is 158,000 lines per CPU-second, 6.7x the old per-line code (2.2-10.8x per log format; a 1 GB
log of 7 million lines: 45 s of CPU). Batches of 8,192 lines or more: each call compiles its regexes (RE2
has no cache across calls), which costs as much as parsing about a thousand lines. polars (Rust's regex) was
measured too: 1.1-1.6x faster on the regex steps alone, perhaps a fifth overall, for a 40 MB dependency;
google-re2's Python binding, called per line, was slower than ``re``.

Exactness: RE2 and Python's ``re`` agree only where the text is printable ASCII (Python's ``\\d``, ``\\s``,
``\\w``, ``\\b`` and case folding are Unicode-aware, RE2's are ASCII), so every other line (tabs allowed)
is parsed by the per-line code, in its place in the order; so are the few lines at which the parser's state
changes in a way the vectors do not follow (the timestamp format changes, a yearless log crosses New Year
or a line goes back across it). What the per-line path does with a user's regex (``timestamp_pattern``,
``level_pattern``, ``alert_pattern``) runs through Python's ``re`` on every line, as before.
"""

from __future__ import annotations

import math
import operator
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from functools import cache, lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
_EPOCH_INDEX = [name for name, _ in TIMESTAMP_FORMATS].index("epoch")
#: Formats without a year: placed in ``NO_YEAR`` plus the New Years the log crossed.
_YEARLESS = frozenset(
    i for i, (_, p) in enumerate(TIMESTAMP_FORMATS) if not {"Y", "y", "e"} & set(p.groupindex)
)
#: A timestamp's fields, in the order ``_seconds`` takes them.
_FIELDS = ("Y", "y", "m", "b", "d", "H", "M", "S", "f", "z", "e")

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

# The masking in one pass: a chain of tokens (an IP address, a hex id, a digit run or a <*> already in
# the text) joined by separators is one <*>. This is what the four substitutions above do one after the
# other (IP addresses, then hex ids, then digit runs, then runs of <*>): tests/test_logparse.py checks it
# on random text and every Loghub line. ``_token`` is written twice: with Python's lookahead, and for RE2
# (no lookaround: "hex run of 6+ with a digit" spelled out by where its first digit is).
_SEP = r"[\s.:,_/-]"


def _chain(ip: str, hexid: str, digit: str, sep: str) -> str:
    token = f"(?:{ip}|{hexid}|{digit}+|<\\*>)"
    return f"{token}(?:{sep}*{token})*"


_MASK = re.compile(_chain(_IP.pattern, _HEXID.pattern, r"\d", _SEP))
_H = "[0-9a-fA-F]"
_RE2_HEXRUN = "|".join(
    [f"[a-fA-F]{{{k}}}[0-9]{_H}{{{5 - k},}}" for k in range(6)] + [f"[a-fA-F]{{6,}}[0-9]{_H}*"]
)
_RE2_MASK = _chain(
    r"\b[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?::[0-9]+)?\b",
    rf"\b(?:{_H}{{8}}(?:-{_H}{{4}}){{3}}-{_H}{{12}}|0x{_H}+|{_RE2_HEXRUN})\b",
    "[0-9]",
    r"[\t .:,_/-]",  # the lines RE2 sees are printable ASCII and tabs: \s is a space or a tab
)


#: The year of timestamps that carry none (syslog, Android, Proxifier): a leap year, so Feb 29 parses.
NO_YEAR = 2000
#: A yearless timestamp this far before the previous one means the log crossed New Year.
NEW_YEAR_GAP_S = 180 * 86400
_EPOCH_DAY = date(1970, 1, 1).toordinal()


@lru_cache(maxsize=4096)
def _days(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to the date (ValueError for an impossible date, as ``datetime`` raises)."""
    return date(year, month, day).toordinal() - _EPOCH_DAY


def _seconds(g: Sequence[str | None], no_year: int = NO_YEAR) -> float | None:
    """Epoch seconds of a timestamp's fields (``_FIELDS``; None where absent), or None for an impossible
    time (Feb 30, 25:00). Equal to ``datetime(..., tzinfo=UTC).timestamp()`` plus the fraction and zone."""
    year_s, yy, month_s, mon, day_s, hour_s, minute_s, second_s, frac_s, zone, e = g
    if e:
        return float(e) + (float("0." + frac_s) if frac_s else 0.0)
    try:
        year = int(year_s) if year_s else 2000 + int(yy) if yy else no_year
        month = int(month_s) if month_s else _MONTHS[mon or ""]
        frac = float("0." + frac_s) if frac_s else 0.0
        days = _days(year, month, int(day_s or ""))
        hour, minute, second = int(hour_s or ""), int(minute_s or ""), int(second_s or "")
        if hour > 23 or minute > 59 or second > 59:
            return None
    except (KeyError, ValueError, TypeError):
        return None
    if zone and zone != "Z":  # +02:00 is two hours ahead of UTC: subtract it
        digits = zone[1:].replace(":", "")
        offset = 3600 * int(digits[:2]) + 60 * int(digits[2:])
        frac -= offset if zone[0] == "+" else -offset
    return float(days * 86400 + hour * 3600 + minute * 60 + second) + frac


def _parse_custom(text: str, fmt: str) -> float:
    """``strptime``'s epoch seconds; a time without a zone (no ``%z`` in ``fmt``) is taken as UTC."""
    dt = datetime.strptime(text, fmt)
    return (dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)).timestamp()


def mask_template(message: str) -> str:
    """A message's template: variable parts (hex ids, IPs, numbers) replaced by ``<*>``, runs of them
    joined by separators as one ``<*>``, white space collapsed, at most ``TEMPLATE_CHARS`` characters."""
    return " ".join(_MASK.sub("<*>", message).split())[:TEMPLATE_CHARS]


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


# ------------------------------------------------------------------------------------------------ search
def _numbered(pattern: str, i: int) -> str:
    """``pattern`` with its named groups renamed ``name_i`` (so alternatives can share one regex)."""
    return re.sub(r"\(\?P<(\w+)>", lambda m: f"(?P<{m.group(1)}_{i}>", pattern)


def _unnamed(pattern: str) -> str:
    return re.sub(r"\(\?P<\w+>", "(?:", pattern)


def _order(state: int | None) -> list[int]:
    """The formats a parser whose last timestamp format is ``state`` tries, first to last: that format
    first (it wins ties), then the others in ``TIMESTAMP_FORMATS`` order; in a stream whose timestamps
    have another format, a bare 10-digit number (an id, an amount) is not an epoch time."""
    rest = [i for i in range(len(TIMESTAMP_FORMATS)) if i != state]
    if state is not None and state != _EPOCH_INDEX:
        rest.remove(_EPOCH_INDEX)
    return rest if state is None else [state, *rest]


@dataclass(frozen=True)
class _Search:
    """One regex for a parser state: the formats of ``_order(state)`` as named alternatives (Python
    ``re``, like RE2, takes the leftmost match and, there, the first alternative: the per-line rule)."""

    regex: re.Pattern[str]
    alternatives: dict[int, tuple[int, operator.itemgetter[Any], int]]  # group -> format, fields, group


@cache
def _search(state: int | None) -> _Search:
    parts, alternatives = [], {}
    for i in _order(state):
        parts.append(f"(?P<_{i}>{_numbered(TIMESTAMP_FORMATS[i][1].pattern, i)})")
    regex = re.compile("|".join(parts))
    for i in _order(state):
        group = regex.groupindex[f"_{i}"]
        # fields index the match's groups() plus a trailing None (for fields the format lacks)
        idx = [regex.groupindex.get(f"{name}_{i}", regex.groups + 1) - 1 for name in _FIELDS]
        alternatives[group] = (i, operator.itemgetter(*idx), group)
    return _Search(regex, alternatives)


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
        self._custom_values: dict[str, float | None] = {}
        self._custom_level = level_pattern is not None
        self._level = re.compile(
            level_pattern or DEFAULT_LEVEL_PATTERN, 0 if level_pattern else re.IGNORECASE
        )
        if "level" not in self._level.groupindex:
            raise ValueError(f"level_pattern {level_pattern!r} needs a named group (?P<level>...)")
        self._alert = re.compile(alert_pattern) if alert_pattern else None
        # The timestamp format that matched last (an index into TIMESTAMP_FORMATS), tried first.
        self._state: int | None = None
        self._search = _search(None)
        # Yearless timestamps: years added since the first one (the log crossed New Year), and the last.
        self._years = 0
        self._last_yearless: float | None = None
        self.format = log_format

    @property
    def format(self) -> LogFormat:
        return self._format

    @format.setter
    def format(self, fmt: LogFormat) -> None:
        self._format = fmt
        self._line = fmt.line if fmt is not GENERIC else None
        groups = self._line.groupindex if self._line is not None else {}
        self._groups = tuple(groups.get(name, 0) for name in ("level", "component", "message", "label"))

    @property
    def _last(self) -> re.Pattern[str] | None:
        """The pattern of the timestamp format that matched last (None before any)."""
        return None if self._state is None else TIMESTAMP_FORMATS[self._state][1]

    def _set_state(self, state: int | None) -> None:
        self._state = state
        self._search = _search(state)

    def timestamp(self, line: str) -> tuple[float | None, str | None, tuple[int, int] | None]:
        """(epoch seconds, the timestamp's text, its span) or Nones when the line has none."""
        if self._custom is not None:
            return self._custom_timestamp(line)
        m = self._search.regex.search(line, 0, SEARCH_CHARS)
        if m is None:
            return None, None, None
        state, fields, group = self._search.alternatives[m.lastindex or 0]
        if state != self._state:
            self._set_state(state)
        g = (*m.groups(), None)
        seconds = _seconds(fields(g), NO_YEAR + self._years)
        if seconds is not None and state in _YEARLESS:
            last = self._last_yearless
            if last is not None and seconds > last + NEW_YEAR_GAP_S and self._years:
                # a Dec 31 line written out of order just after New Year: the year before (not remembered)
                seconds = _seconds(fields(g), NO_YEAR + self._years - 1)
            else:
                if last is not None and seconds < last - NEW_YEAR_GAP_S:
                    self._years += 1  # Dec 31 -> Jan 1: the next year
                    seconds = _seconds(fields(g), NO_YEAR + self._years)  # None: Feb 29 of a common year
                self._last_yearless = seconds if seconds is not None else last
        return seconds, m.group(group).strip("[]"), m.span(group)

    def _custom_timestamp(self, line: str) -> tuple[float | None, str | None, tuple[int, int] | None]:
        assert self._custom is not None
        m = self._custom.search(line)
        if not m:
            return None, None, None
        text = m.group("ts")
        try:
            value = self._custom_values[text]
        except KeyError:
            try:
                value = _parse_custom(text, self._custom_format) if self._custom_format else float(text)
            except (ValueError, OverflowError):
                value = None
            if value is not None and not math.isfinite(value):
                value = None  # float("nan"), float("inf"): no time (they broke the per-second counts)
            if len(self._custom_values) >= 65536:
                self._custom_values.clear()
            self._custom_values[text] = value
        return value, text, m.span("ts")

    def memory(self) -> list[Any] | None:
        """What a resumed stream gives ``remember``: the remembered format's pattern and the yearless
        timestamps' year count and last value; None before any timestamp."""
        if self._state is None:
            return None
        return [TIMESTAMP_FORMATS[self._state][1].pattern, self._years, self._last_yearless]

    def remember(self, memory: list[Any] | str | None) -> None:
        """Continue as the parser whose ``memory()`` this is (a bare pattern: an older checkpoint's)."""
        pattern, years, last = (memory, 0, None) if not isinstance(memory, list) else memory
        state = next((i for i, (_, p) in enumerate(TIMESTAMP_FORMATS) if p.pattern == pattern), None)
        self._set_state(state)
        self._years, self._last_yearless = int(years), last

    def level(self, line: str) -> str:
        """The level searched for in the head of ``line`` (``level_pattern``, else the usual words)."""
        m = (None if self._custom_level else _ANDROID_LEVEL.match(line)) or self._level.search(
            line, 0, LEVEL_CHARS
        )
        return normalize_level(m.group("level")) if m else "NONE"

    def parse(self, line: str) -> LogLine:
        ts, ts_text, span = self.timestamp(line)
        fmt = self._format
        header = self._line.match(line) if self._line is not None else None
        if header is None:  # the generic format, or a line that is not of the stream's (a continuation)
            level = self.level(line)
            template = mask_template(line if span is None else line[: span[0]] + " " + line[span[1] :])
            alert = level in ALERT_LEVELS
        else:
            i_level, i_component, i_message, i_label = self._groups
            own = header.group(i_level) if i_level else None
            own = normalize_level(own) if own else None
            # a format without a level column: NONE, not a level word read from its free text
            level = self.level(line) if self._custom_level else (own or "NONE") if fmt.has_level else "NONE"
            component = header.group(i_component) if i_component else None
            component = component.strip() if component else None
            message = header.group(i_message).strip()
            template = mask_template(f"{component}: {message}" if component else message)
            if fmt.alert_rule == "label":
                alert = (header.group(i_label) if i_label else None) not in (None, "-")
            elif fmt.alert_rule == "keywords":
                assert fmt.keywords is not None
                alert = fmt.keywords.search(message) is not None
            else:
                alert = own in fmt.alert_levels
        if self._alert is not None:
            alert = self._alert.search(line) is not None
        return LogLine(text=line, ts=ts, ts_text=ts_text, level=level, template=template, alert=alert)

    # -------------------------------------------------------------------------------------- batch path
    def parse_batch(self, lines: Sequence[str]) -> ParsedBatch:
        """``[self.parse(line) for line in lines]`` as columns, computed a batch at a time (see the module
        docstring); the parser's state afterwards is the same too."""
        return _BatchParse(self, lines).run()


# ------------------------------------------------------------------------------------- batch columns
@dataclass(frozen=True)
class ParsedBatch:
    """Parsed lines as columns. ``ts`` is NaN where a line has no time; ``level``/``template`` are codes
    into ``level_names``/``template_names``; ``blank`` marks lines without text (no log lines: the logs
    task does not count them); ``fallback`` marks the lines the per-line code parsed."""

    text: Sequence[str]
    ts: np.ndarray  # float64
    ts_text: pa.Array  # UTF-8 bytes (lone surrogates kept: "surrogatepass"), null where none; see texts()
    level_codes: np.ndarray  # int32
    level_names: list[str]
    template_codes: np.ndarray  # int32
    template_names: list[str]
    alert: np.ndarray  # bool
    blank: np.ndarray  # bool
    fallback: np.ndarray  # bool

    def __len__(self) -> int:
        return len(self.ts)

    def __getitem__(self, i: int) -> LogLine:
        ts = float(self.ts[i])
        return LogLine(
            text=self.text[i],
            ts=None if math.isnan(ts) else ts,
            ts_text=_texts(self.ts_text.slice(i, 1))[0],
            level=self.level_names[self.level_codes[i]],
            template=self.template_names[self.template_codes[i]],
            alert=bool(self.alert[i]),
        )

    def lines(self) -> list[LogLine]:
        return [self[i] for i in range(len(self))]

    @property
    def level(self) -> list[str]:
        names = self.level_names
        return [names[c] for c in self.level_codes.tolist()]

    @property
    def template(self) -> list[str]:
        names = self.template_names
        return [names[c] for c in self.template_codes.tolist()]

    def slice(self, start: int, stop: int | None = None) -> ParsedBatch:
        """Rows ``start:stop`` (views of the same columns, no copy of the text)."""
        start, stop, _ = slice(start, stop).indices(len(self))
        stop = max(start, stop)
        return ParsedBatch(
            self.text[start:stop],
            self.ts[start:stop],
            self.ts_text.slice(start, stop - start),
            self.level_codes[start:stop],
            self.level_names,
            self.template_codes[start:stop],
            self.template_names,
            self.alert[start:stop],
            self.blank[start:stop],
            self.fallback[start:stop],
        )

    def ts_filled(self, last: float | None = None) -> np.ndarray:
        """Each line's time, or the time of the last line before it that has one (``last`` before the
        first; NaN while there is none): the time a line without its own belongs to."""
        ts = self.ts
        have = ~np.isnan(ts)
        idx = np.where(have, np.arange(len(ts)), -1)
        np.maximum.accumulate(idx, out=idx)
        fill = np.nan if last is None else last
        return np.where(idx >= 0, ts[np.maximum(idx, 0)], fill)


def _np_bool(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(arr.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def _offsets_data(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The offsets (n + 1) and bytes of a (large) string array."""
    arr = arr.cast(pa.large_string())
    buffers = arr.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    return offsets, data


def _np_int(arr: pa.Array, missing: int = -1) -> np.ndarray:
    """ASCII digit strings (at most 18) as int64, ``missing`` for empty ones (and nulls, which are)."""
    offsets, data = _offsets_data(arr)
    lens = np.diff(offsets)
    width = int(lens.max()) if len(lens) else 0
    if width == 0:
        return np.full(len(arr), missing, dtype=np.int64)
    col = np.arange(width)
    pad = width - lens  # right-aligned: digit j of a row sits at column pad + j
    at = offsets[:-1, None] + (col[None, :] - pad[:, None])
    inside = col[None, :] >= pad[:, None]
    digits = np.where(inside, data[np.clip(at, 0, max(len(data) - 1, 0))].astype(np.int64) - 48, 0)
    value = digits @ (10 ** np.arange(width - 1, -1, -1, dtype=np.int64))
    return np.where(lens > 0, value, missing)


def _np_len(arr: pa.Array) -> np.ndarray:
    """Lengths (ASCII: bytes are characters), 0 for nulls."""
    return np.diff(_offsets_data(arr)[0])


def _strings(values: list[str | None]) -> pa.Array:
    return pa.array(values, pa.large_string())


def _binaries(values: list[str | None]) -> pa.Array:
    """Python strings as UTF-8 bytes, lone surrogates too (the per-line code's lines may hold them)."""
    return pa.array(
        [None if v is None else v.encode("utf-8", "surrogatepass") for v in values], pa.large_binary()
    )


def _texts(arr: pa.Array) -> list[str | None]:
    """The strings of a ``_binaries``-like array."""
    return [None if b is None else b.decode("utf-8", "surrogatepass") for b in arr.to_pylist()]


def _mask(arr: pa.Array) -> pa.Array:
    """``mask_template`` of printable-ASCII strings, with RE2."""
    text = pc.replace_substring_regex(arr, _RE2_MASK, "<*>")
    text = pc.replace_substring_regex(text, r"[ \t]{2,}|\t", " ")
    return _head(pc.ascii_trim_whitespace(text), 0, TEMPLATE_CHARS)


def _normalized(levels: pa.Array) -> pa.Array:
    """``normalize_level`` of each (null and empty: ``NONE``), computed once per distinct value."""
    encoded = pc.dictionary_encode(levels.fill_null(""))
    names = [normalize_level(v) if v else "NONE" for v in encoded.dictionary.to_pylist()]
    return pa.array(names, pa.large_string()).take(encoded.indices)


_POW10 = np.array([float(10**k) for k in range(23)])
_DAYS_IN_MONTH = np.array([0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


def _civil_days(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(days from 1970-01-01, valid) of proleptic Gregorian dates, as ``date`` accepts them."""
    leap = (y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0))
    mm = np.clip(m, 0, 12)
    dim = _DAYS_IN_MONTH[mm] - ((mm == 2) & ~leap)
    valid = (y >= 1) & (y <= 9999) & (m >= 1) & (m <= 12) & (d >= 1) & (d <= dim)
    yy = np.where(valid, y, 2000) - (m <= 2)
    era = yy // 400
    yoe = yy - era * 400
    mp = (np.where(valid, m, 1) + 9) % 12
    doy = (153 * mp + 2) // 5 + np.where(valid, d, 1) - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468, valid


class _Fields:
    """One state's timestamp fields of its own format's lines, as numbers (vectors of ``_seconds``)."""

    def __init__(self, state: int, rows: np.ndarray, get: dict[str, pa.Array]) -> None:
        names = set(TIMESTAMP_FORMATS[state][1].groupindex)
        self.rows = rows
        self.yearless = state in _YEARLESS
        self.epoch = "e" in names
        frac = np.zeros(len(rows))
        if "f" in names:
            digits = _np_int(get["f"], 0)
            frac = digits / _POW10[np.minimum(_np_len(get["f"]), 22)]
        if self.epoch:
            self.e = _np_int(get["e"])
            self.frac = frac
            return
        if "z" in names:
            zones = pc.dictionary_encode(get["z"])
            offsets = []
            for z in zones.dictionary.to_pylist():
                if z and z != "Z":
                    digits = z[1:].replace(":", "")
                    offset = 3600 * int(digits[:2]) + 60 * int(digits[2:])
                    offsets.append(offset if z[0] == "+" else -offset)
                else:
                    offsets.append(0)
            shift = np.array(offsets, dtype=np.int64)[zones.indices.to_numpy(zero_copy_only=False)]
            frac = np.where(shift != 0, frac - shift, frac)
        self.frac = frac
        if "Y" in names:
            self.year: np.ndarray | None = _np_int(get["Y"])
        elif "y" in names:
            self.year = 2000 + _np_int(get["y"])
        else:
            self.year = None
        if "m" in names:
            self.month = _np_int(get["m"])
        else:
            self.month = (
                np.asarray(
                    pc.index_in(get["b"], value_set=pa.array(_MONTH_NAMES)).to_numpy(zero_copy_only=False)
                ).astype(np.int64)
                + 1
            )
        self.day = _np_int(get["d"])
        self.hms = _np_int(get["H"]) * 3600 + _np_int(get["M"]) * 60 + _np_int(get["S"])
        self.hms_ok = (_np_int(get["H"]) <= 23) & (_np_int(get["M"]) <= 59) & (_np_int(get["S"]) <= 59)
        self._fixed = None if self.yearless else self._values(None)

    def _values(self, year: int | None) -> np.ndarray:
        y = self.year if year is None else np.full(len(self.rows), year, dtype=np.int64)
        assert y is not None
        days, valid = _civil_days(y, self.month, self.day)
        base = (days * 86400 + self.hms).astype(np.float64)
        return np.where(valid & self.hms_ok, base + self.frac, np.nan)

    def values(self, year: int) -> np.ndarray:
        """Epoch seconds of all ``rows`` (NaN: an impossible time); yearless formats in ``year``."""
        if self.epoch:
            return self.e.astype(np.float64) + self.frac
        if self._fixed is not None:
            return self._fixed
        return self._values(year)


class _StatePass:
    """The timestamp search of one parser state over a whole batch: which lines the state's own format
    matches first (``own``, with the timestamp's text and fields), which another format (``other``: the
    state changes there).

    A line whose own-format match starts at its first character needs no other search (the per-line
    rule: the format that matched last wins where it matches at the start); RE2 answers that with its
    DFA, cheaply. The others take one search of all formats (``(?P<s>own)|(?P<o>the others)``)."""

    def __init__(self, state: int | None, head: pa.Array) -> None:
        n = len(head)
        order = _order(state)
        self.regex = "|".join(_unnamed(TIMESTAMP_FORMATS[i][1].pattern) for i in order)
        self.own = np.zeros(n, dtype=bool)
        self.other = np.zeros(n, dtype=bool)
        self.fields: _Fields | None = None
        self.text: pa.Array | None = None  # the own lines' timestamp text (brackets stripped), in order
        if state is None:
            self.other = _np_bool(pc.match_substring_regex(head, self.regex))
        else:
            own = TIMESTAMP_FORMATS[state][1].pattern
            start = _np_bool(pc.match_substring_regex(head, f"^(?:{_unnamed(own)})"))
            rest = np.flatnonzero(~start)
            texts = [(np.flatnonzero(start), head.filter(pa.array(start)) if len(rest) else head, "^")]
            if len(rest):
                others = "|".join(_unnamed(TIMESTAMP_FORMATS[i][1].pattern) for i in order if i != state)
                sub = head.take(pa.array(rest)) if len(rest) < n else head
                ext = pc.extract_regex(sub, f"(?P<s>{_unnamed(own)})|(?P<o>{others})")
                matched = _np_bool(ext.is_valid())
                other = matched & (_np_len(ext.field("o")) > 0)
                self.other[rest[other]] = True
                found = matched & ~other
                texts.append((rest[found], ext.field("s").filter(pa.array(found)), "^$"))
            parts = [(rows, pc.extract_regex(text, f"^(?P<_t>{own})" + anchors[1:]))
                     for rows, text, anchors in texts if len(rows)]  # fmt: skip
            if parts:
                names = ["_t", *TIMESTAMP_FORMATS[state][1].groupindex]
                if len(parts) == 1:
                    rows, ext = parts[0]
                    get = {name: ext.field(name) for name in names}
                else:
                    rows = np.concatenate([r for r, _ in parts])
                    order_rows = np.argsort(rows, kind="stable")
                    take = pa.array(order_rows)
                    get = {
                        name: pa.concat_arrays([ext.field(name) for _, ext in parts]).take(take)
                        for name in names
                    }
                    rows = rows[order_rows]
                self.own[rows] = True
                self.fields = _Fields(state, rows, get)
                self.text = pc.utf8_trim(get["_t"], "[]")
        self.other_rows = np.flatnonzero(self.other)
        self.own_rows = np.flatnonzero(self.own)
        self._values: dict[int, np.ndarray] = {}
        self.position = np.full(n, -1, dtype=np.int64)
        self.position[self.own_rows] = np.arange(len(self.own_rows))

    def values(self, rows: np.ndarray, year: int) -> np.ndarray:
        assert self.fields is not None
        if year not in self._values:
            self._values[year] = self.fields.values(year)
        return self._values[year][self.position[rows]]


_MESSAGE = "(?P<message>.*)$"
_ELIGIBLE_NOT = r"[^\t\x20-\x7e]"  # a line with any other character is parsed by the per-line code


class _BatchParse:
    """``LogParser.parse_batch``: the columns of the eligible lines with pyarrow.compute and numpy, the
    per-line code for the rest, the parser's state walked through the batch in order."""

    def __init__(self, parser: LogParser, lines: Sequence[str]) -> None:
        self.p = parser
        self.lines = lines
        self.n = len(lines)
        self.custom_spans: dict[int, tuple[int, int]] = {}
        self.custom_texts: dict[int, str] = {}
        try:
            arr = pa.array(lines, pa.large_string())
        except (UnicodeEncodeError, pa.ArrowException):  # lone surrogates: no UTF-8 for them
            arr = pa.array([_encodable(line) for line in lines], pa.large_string())
        bad = ~(_np_bool(pc.string_is_ascii(arr)) & _np_bool(pc.ascii_is_printable(arr)))
        if bad.any():  # printable ASCII with tabs is eligible too
            check = np.flatnonzero(bad)
            other = _np_bool(pc.match_substring_regex(arr.take(pa.array(check)), _ELIGIBLE_NOT))
            bad[check[~other]] = False
        if bad.any():
            arr = pc.if_else(pa.array(bad), pa.scalar("", pa.large_string()), arr)
        self.arr = arr
        self.bad = bad
        self.bad_rows = np.flatnonzero(bad)

    def run(self) -> ParsedBatch:
        """The batch's columns: each line's timestamp (the parser's state walked through the batch),
        then its level, template, alert and blank, then the per-line code's lines written over them."""
        self.fallback: dict[int, LogLine] = {}
        ts = np.full(self.n, np.nan)
        # state of each line's timestamp search (-2: the per-line code's; -1: no state yet)
        state_of = np.full(self.n, -2, dtype=np.int16)
        passes: dict[int | None, _StatePass] = {}
        if self.p._custom is None:
            self._walk_states(ts, state_of, passes)
            ts_text = self._state_texts(state_of, passes)
        else:
            ts_text = self._custom_timestamps(ts)
        level, source, alert, blank = self._columns(state_of, passes)
        level_codes, level_names = _codes(pc.dictionary_encode(level))
        template_codes, template_names = _template_codes(source)
        batch = ParsedBatch(
            text=self.lines,
            ts=ts,
            ts_text=ts_text.cast(pa.large_binary()),
            level_codes=level_codes,
            level_names=level_names,
            template_codes=template_codes,
            template_names=template_names,
            alert=alert,
            blank=blank,
            fallback=np.zeros(self.n, dtype=bool),
        )
        return self._with_fallback(batch) if self.fallback else batch

    def _walk_states(
        self, ts: np.ndarray, state_of: np.ndarray, passes: dict[int | None, _StatePass]
    ) -> None:
        """Fill ``ts`` and ``state_of`` run by run: up to the next line the per-line code parses, the
        lines take their times from the current state's pass (made once per state, in ``passes``);
        that line is parsed per line (into ``fallback``), which may change the state."""
        p, n = self.p, self.n
        head = _head(self.arr, 0, SEARCH_CHARS)
        pos = 0
        while pos < n:
            state = p._state
            sp = passes.get(state)
            if sp is None:
                sp = passes[state] = _StatePass(state, head)
            stop = min(
                _next(self.bad_rows, pos, n), _next(sp.other_rows, pos, n)
            )  # the next line the per-line code parses
            own = np.flatnonzero(sp.own[pos:stop]) + pos
            if len(own):
                assert state is not None
                values = sp.values(own, NO_YEAR + p._years)
                if state in _YEARLESS:
                    cut = self._yearless(values)
                    if cut is not None:  # New Year (or a line back across it): the per-line code
                        stop = int(own[cut])
                        own, values = own[:cut], values[:cut]
                ts[own] = values
            state_of[pos:stop] = -1 if state is None else state
            if stop >= n:
                break
            self.fallback[stop] = p.parse(self.lines[stop])
            pos = stop + 1

    def _state_texts(self, state_of: np.ndarray, passes: dict[int | None, _StatePass]) -> pa.Array:
        """Each line's timestamp text (null where none), from the pass of the state its search ran in:
        a pass also holds texts of lines another state searched, which are left out."""
        n = self.n
        ts_text: pa.Array = pa.nulls(n, pa.large_string())
        for state, sp in passes.items():
            if sp.text is None:
                continue
            keep = state_of[sp.own_rows] == (-1 if state is None else state)
            if keep.any():
                rows = np.zeros(n, dtype=bool)
                rows[sp.own_rows[keep]] = True
                ts_text = pc.replace_with_mask(ts_text, pa.array(rows), sp.text.filter(pa.array(keep)))
        return ts_text

    def _custom_timestamps(self, ts: np.ndarray) -> pa.Array:
        """Fill ``ts`` by a user's timestamp regex and return the texts (null where none): Python's re
        on each line (cached strptime); the spans are kept to cut the timestamp out of generic lines."""
        p, n = self.p, self.n
        ts_text: pa.Array = pa.nulls(n, pa.large_string())
        for i, line in enumerate(self.lines):
            if not self.bad[i]:
                value, text, span = p._custom_timestamp(line)
                if text is not None and span is not None:
                    self.custom_spans[i] = span
                    if value is not None:
                        ts[i] = value
                    self.custom_texts[i] = text
            else:
                self.fallback[i] = p.parse(line)
        if self.custom_texts:
            rows = np.zeros(n, dtype=bool)
            rows[list(self.custom_texts)] = True
            ts_text = pc.replace_with_mask(
                ts_text,
                pa.array(rows),
                _strings([self.custom_texts[i] for i in sorted(self.custom_texts)]),
            )
        return ts_text

    def _with_fallback(self, batch: ParsedBatch) -> ParsedBatch:
        """``batch`` with the per-line code's lines written over its columns: the numpy columns in
        place, new level and template names appended to its lists, the (immutable) texts replaced."""
        rows = np.zeros(self.n, dtype=bool)
        order = sorted(self.fallback)
        rows[order] = True
        got = [self.fallback[i] for i in order]
        batch.ts[order] = [np.nan if x.ts is None else x.ts for x in got]
        ts_text = pc.replace_with_mask(batch.ts_text, pa.array(rows), _binaries([x.ts_text for x in got]))
        batch.level_codes[order] = _add_names(batch.level_names, [x.level for x in got])
        batch.template_codes[order] = _add_names(batch.template_names, [x.template for x in got])
        batch.alert[order] = [x.alert for x in got]
        batch.blank[order] = [not x.text.strip() for x in got]
        batch.fallback[order] = True
        return replace(batch, ts_text=ts_text)

    def _yearless(self, values: np.ndarray) -> int | None:
        """Walk the yearless state over the own-format lines' ``values``: None when nothing but
        ``_last_yearless`` changes (updated here), else the index of the first line where the year count
        changes or a line is put in the year before (``_last_yearless`` updated up to it)."""
        p = self.p
        valid = np.flatnonzero(~np.isnan(values))
        if not len(valid):
            return None
        v = values[valid]
        prev = np.empty_like(v)
        prev[0] = np.nan if p._last_yearless is None else p._last_yearless
        prev[1:] = v[:-1]
        event = (v < prev - NEW_YEAR_GAP_S) | ((v > prev + NEW_YEAR_GAP_S) & (p._years != 0))
        hits = np.flatnonzero(event)
        if not len(hits):
            p._last_yearless = float(v[-1])
            return None
        k = int(hits[0])
        if k:
            p._last_yearless = float(v[k - 1])
        return int(valid[k])

    def _columns(
        self, state_of: np.ndarray, passes: dict[int | None, _StatePass]
    ) -> tuple[pa.Array, pa.Array, np.ndarray, np.ndarray]:
        """Level, template, alert and blank of every line (the per-line code's lines: anything; they
        are replaced)."""
        p, n = self.p, self.n
        header, message, matched = self._match_format()
        level = pa.nulls(n, pa.large_string())
        source = pa.nulls(n, pa.large_string())
        alert = np.zeros(n, dtype=bool)
        custom_levels = None
        if p._custom_level:
            custom_levels = _strings(
                [p.level(line) if not b else "" for line, b in zip(self.lines, self.bad)]
            )
        if header is not None and matched.any():
            assert message is not None
            level, source, alert = self._format_columns(header, message, matched, custom_levels)
        generic = ~matched
        if generic.any():
            glevel, gsource, galert = self._generic_columns(generic, custom_levels, state_of, passes)
            gmask = pa.array(generic)
            level = pc.replace_with_mask(level, gmask, glevel)
            source = pc.replace_with_mask(source, gmask, gsource)
            alert[generic] = galert
        if p._alert is not None:  # a user's alert regex decides for every line
            search = p._alert.search
            alert = np.array([search(line) is not None for line in self.lines], dtype=bool)
        blank = _np_bool(pc.match_substring_regex(self.arr, r"^[ \t]*$"))
        return level, source, alert, blank

    def _match_format(self) -> tuple[pa.Array | None, pa.Array | None, np.ndarray]:
        """The format's line regex over the batch: (its groups, the message, which lines match); no
        groups and no line matched when the format has none."""
        p, arr = self.p, self.arr
        if p._line is None:
            return None, None, np.zeros(self.n, dtype=bool)
        pattern = p._line.pattern
        if pattern.endswith(_MESSAGE) and "(?P<" in pattern[: -len(_MESSAGE)]:
            # the message is the rest of the line: capture the head only (RE2's capturing engine is
            # slow over long text) and split the line after it (the same place: ".*$" matches any
            # rest of a printable line)
            prefix = pattern[: -len(_MESSAGE)]
            header = pc.extract_regex(arr, prefix)
            message = _last_piece(pc.split_pattern_regex(arr, _unnamed(prefix), max_splits=1))
        else:
            header = pc.extract_regex(arr, pattern)
            message = header.field("message")
        return header, message, _np_bool(header.is_valid())

    def _format_columns(
        self, header: pa.Array, message: pa.Array, matched: np.ndarray, custom_levels: pa.Array | None
    ) -> tuple[pa.Array, pa.Array, np.ndarray]:
        """Level, source text and alert of the lines the format's regex matched (the others: anything;
        the generic rules replace them)."""
        n, fmt = self.n, self.p.format
        names = set(header.type.names)
        own = _normalized(header.field("level")) if "level" in names else pa.nulls(n, pa.large_string())
        if custom_levels is not None:
            level = custom_levels
        elif fmt.has_level:
            level = own
        else:
            level = pa.array(["NONE"] * n, pa.large_string())
        message = pc.ascii_trim_whitespace(message)
        if "component" in names:
            component = pc.ascii_trim_whitespace(header.field("component"))
            joined = pc.binary_join_element_wise(component, message, pa.scalar(": ", pa.large_string()))
            source = pc.if_else(pc.equal(component, ""), message, joined)
        else:
            source = message
        alert = self._format_alert(header, names, message, own)
        alert &= matched
        return level, source, alert

    def _format_alert(
        self, header: pa.Array, names: set[str], message: pa.Array, own: pa.Array
    ) -> np.ndarray:
        """Which lines alert by the format's rule: a label other than ``-``, a keyword in the (trimmed)
        message, or one of the format's alert levels (``own``: the normalized levels)."""
        fmt = self.p.format
        if fmt.alert_rule == "label":
            if "label" in names:
                return _np_bool(pc.not_equal(header.field("label"), "-"))
            return np.zeros(self.n, dtype=bool)
        if fmt.alert_rule == "keywords":
            assert fmt.keywords is not None
            return _np_bool(pc.match_substring_regex(message, fmt.keywords.pattern, ignore_case=True))
        levels = pc.dictionary_encode(own)
        hit = [v in fmt.alert_levels for v in levels.dictionary.to_pylist()]
        return np.array(hit, dtype=bool)[levels.indices.to_numpy(zero_copy_only=False)]

    def _generic_columns(
        self,
        generic: np.ndarray,
        custom_levels: pa.Array | None,
        state_of: np.ndarray,
        passes: dict[int | None, _StatePass],
    ) -> tuple[pa.Array, pa.Array, np.ndarray]:
        """Level, source text and alert of the ``generic`` lines (the format's regex did not match
        them): an Android level or a level word near the start, the line without its timestamp, an
        alert level."""
        rows = np.flatnonzero(generic)
        take = pa.array(rows)
        sub = self.arr.take(take) if len(rows) < self.n else self.arr
        if custom_levels is not None:
            glevel = custom_levels.take(take)
        else:
            android = pc.extract_regex(sub, _ANDROID_LEVEL.pattern).field("level")
            word = pc.extract_regex(_head(sub, 0, LEVEL_CHARS), "(?i)" + DEFAULT_LEVEL_PATTERN).field("level")
            glevel = _normalized(pc.if_else(pc.equal(android, ""), word, android))
        gsource = self._generic_source(sub, rows, state_of, passes)
        encoded = pc.dictionary_encode(glevel)
        alerting = np.array([v in ALERT_LEVELS for v in encoded.dictionary.to_pylist()], dtype=bool)
        return glevel, gsource, alerting[encoded.indices.to_numpy(zero_copy_only=False)]

    def _generic_source(
        self, sub: pa.Array, rows: np.ndarray, state_of: np.ndarray, passes: dict[int | None, _StatePass]
    ) -> pa.Array:
        """The generic lines without their timestamp (``line[:start] + " " + line[end:]``)."""
        if self.p._custom is not None:
            spans = self.custom_spans
            return _strings(
                [
                    line[: spans[i][0]] + " " + line[spans[i][1] :] if i in spans else line
                    for i, line in ((i, self.lines[i] if not self.bad[i] else "") for i in rows.tolist())
                ]
            )
        head = _head(sub, 0, SEARCH_CHARS)
        tail = pc.utf8_slice_codeunits(sub, SEARCH_CHARS)
        states = state_of[rows]
        out = sub
        for state in np.unique(states).tolist():
            if state == -2:
                continue
            sp = passes[None if state == -1 else state]
            pick = states == state
            pieces = pc.split_pattern_regex(head, sp.regex, max_splits=1)
            cut = pc.binary_join(pieces, pa.scalar(" ", pa.large_string()))
            joined = pc.binary_join_element_wise(cut, tail, pa.scalar("", pa.large_string()))
            out = joined if pick.all() else pc.if_else(pa.array(pick), joined, out)
        return out


def _codes(encoded: pa.DictionaryArray) -> tuple[np.ndarray, list[str]]:
    """(int32 codes, names) of a dictionary-encoded string array without nulls."""
    codes = np.array(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int32)
    return codes, [x or "" for x in encoded.dictionary.to_pylist()]


def _template_codes(source: pa.Array) -> tuple[np.ndarray, list[str]]:
    """(int32 codes, names) of the templates of the lines' ``source`` texts."""
    # a message that comes back (often, in logs) is masked once: mask the distinct sources
    sources = pc.dictionary_encode(source)
    codes, names = _codes(pc.dictionary_encode(_mask(sources.dictionary)))
    return codes[sources.indices.to_numpy(zero_copy_only=False)], names


def _add_names(names: list[str], values: list[str]) -> list[int]:
    """The codes of ``values`` in ``names``, appending the new ones."""
    index = {name: i for i, name in enumerate(names)}
    out = []
    for v in values:
        if v not in index:
            index[v] = len(names)
            names.append(v)
        out.append(index[v])
    return out


def _encodable(line: str) -> str:
    try:
        line.encode("utf-8")
        return line
    except UnicodeEncodeError:
        return "\x00"  # not eligible: parsed by the per-line code


def _head(arr: pa.Array, start: int, stop: int) -> pa.Array:
    """Characters ``start:stop`` of printable-ASCII strings (bytes are characters: a binary slice)."""
    return pc.binary_slice(arr.cast(pa.large_binary()), start, stop).cast(pa.large_string())


def _last_piece(pieces: pa.ListArray) -> pa.Array:
    """The last string of each list (``split_pattern_regex``'s text after the match)."""
    offsets = np.asarray(pieces.offsets.to_numpy(zero_copy_only=False))
    return pieces.values.take(pa.array(offsets[1:] - 1))


def _next(rows: np.ndarray, pos: int, n: int) -> int:
    """The first of the sorted ``rows`` at or after ``pos`` (``n`` if none)."""
    k = int(np.searchsorted(rows, pos))
    return int(rows[k]) if k < len(rows) else n


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


def _first_order(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(distinct codes, their first row, their count, each row's position among them), the distinct codes
    in the order of their first row."""
    uniq, first, inverse, counts = np.unique(
        codes, return_index=True, return_inverse=True, return_counts=True
    )
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return uniq[order], first[order], counts[order], rank[inverse.reshape(-1)]


def _batch_rows(
    batch: ParsedBatch, start: int, stop: int | None, skip_blank: bool
) -> slice | np.ndarray | None:
    """The rows ``start:stop`` of ``batch`` (with ``skip_blank``: those with text) as a slice, or as
    indices when some are skipped; None when there are none."""
    start, stop, _ = slice(start, stop).indices(len(batch))
    if stop <= start:
        return None
    rows: slice | np.ndarray = slice(start, stop)
    if skip_blank and batch.blank[rows].any():
        rows = np.flatnonzero(~batch.blank[rows]) + start
        if not len(rows):
            return None
    return rows


def _first_last(which: np.ndarray, stamped: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """The first and the last of the ``stamped`` positions in each of ``groups`` groups (``which``: each
    position's group; -1 for a group without one)."""
    first = np.full(groups, -1, dtype=np.int64)
    last = np.full(groups, -1, dtype=np.int64)
    if len(stamped):
        w = which[stamped]
        seen, at = np.unique(w, return_index=True)
        first[seen] = stamped[at]
        seen, at = np.unique(w[::-1], return_index=True)
        last[seen] = stamped[::-1][at]
    return first, last


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

    def add_batch(
        self, batch: ParsedBatch, start: int = 0, stop: int | None = None, *, skip_blank: bool = False
    ) -> None:
        """``add`` each of ``batch``'s rows ``start:stop`` in order (with ``skip_blank``: those with text,
        as the logs task counts lines); the same statistics, dictionaries in the same order."""
        rows = _batch_rows(batch, start, stop, skip_blank)
        if rows is None:
            return
        ts = batch.ts[rows]
        alert = batch.alert[rows]
        self.lines += len(ts)
        self.alerts += int(np.count_nonzero(alert))
        codes, _, counts, _ = _first_order(batch.level_codes[rows])
        names = batch.level_names
        for code, count in zip(codes.tolist(), counts.tolist()):
            self.levels[names[code]] += count
        stamped = np.flatnonzero(~np.isnan(ts))
        absolute = np.arange(rows.start, rows.stop) if isinstance(rows, slice) else rows
        self._add_templates(batch, rows, absolute, alert, stamped)
        if len(stamped):
            self._add_times(batch, ts[stamped], alert[stamped], absolute[stamped])

    def _add_templates(
        self,
        batch: ParsedBatch,
        rows: slice | np.ndarray,
        absolute: np.ndarray,
        alert: np.ndarray,
        stamped: np.ndarray,
    ) -> None:
        """Each template's count, alerts, the level of its first line, and the timestamp texts of its
        first and last timestamped lines (``stamped``: positions in ``rows``; ``absolute``: the rows)."""
        level_codes = batch.level_codes[rows]
        codes, first, counts, which = _first_order(batch.template_codes[rows])
        alerts = np.bincount(which, weights=alert, minlength=len(codes)).astype(np.int64)
        first_ts, last_ts = _first_last(which, stamped, len(codes))
        # only the texts that are kept are decoded
        wanted = np.unique(np.concatenate([first_ts[first_ts >= 0], last_ts[last_ts >= 0]]))
        texts = dict(zip(wanted.tolist(), _texts(batch.ts_text.take(pa.array(absolute[wanted])))))
        template_names, level_names = batch.template_names, batch.level_names
        counter, table = self.templates, self.template_stats
        for j, (code, count) in enumerate(zip(codes.tolist(), counts.tolist())):
            template = template_names[code]
            counter[template] += count
            t = table.get(template)
            if t is None:
                t = table[template] = TemplateStats(level=level_names[level_codes[first[j]]])
            t.count += count
            t.alerts += int(alerts[j])
            f = int(first_ts[j])
            if f >= 0:
                if t.first is None:
                    t.first = texts[f]
                t.last = texts[int(last_ts[j])]

    def _add_times(self, batch: ParsedBatch, tv: np.ndarray, alert: np.ndarray, rows: np.ndarray) -> None:
        """The timestamped lines' share: out-of-order count, first and last time, and lines, alerts and
        first stamp text per second (``tv``, ``alert``: theirs, in order; ``rows``: their rows)."""
        before = np.empty_like(tv)
        before[0] = np.nan if self.last_ts is None else self.last_ts
        before[1:] = tv[:-1]
        self.out_of_order += int(np.count_nonzero(tv < before))
        ends = _texts(batch.ts_text.take(pa.array(rows[[0, -1]])))
        if self.first_ts is None:
            self.first_ts, self.first_ts_text = float(tv[0]), ends[0]
        self.last_ts, self.last_ts_text = float(tv[-1]), ends[1]
        seconds, first, counts, which = _first_order(np.floor(tv).astype(np.int64))
        salerts = np.bincount(which, weights=alert, minlength=len(seconds)).astype(np.int64)
        keys = seconds.tolist()
        stamps = _texts(batch.ts_text.take(pa.array(rows[first])))
        _add_counts(self.per_second, keys, counts.tolist())
        _add_counts(self.alerts_per_second, keys, salerts.tolist())
        text = self.second_text
        if text.keys().isdisjoint(keys):  # a C-speed update when no second is there yet
            text.update(zip(keys, [s or "" for s in stamps]))
        else:
            for key, stamp in zip(keys, stamps):
                text.setdefault(key, stamp or "")

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
        for b, e in hot_runs(hot):
            start, end = first[b], last[e]
            assert start is not None and end is not None  # hot buckets hold lines
            n = sum(lines[b : e + 1])
            stamped = sum(self.per_second.values())  # the same lines the buckets count
            ratio = (n / ((e - b + 1) * width)) / (stamped / span) if stamped else 0.0
            found.append(
                Burst(self.second_text[start], self.second_text[end], n, sum(alerts[b : e + 1]), ratio)
            )
        largest = sorted(found, key=lambda x: -x.lines)[:k]
        return [x for x in found if x in largest]


def hot_runs(hot: list[bool]) -> list[tuple[int, int]]:
    """The runs of adjacent true buckets, as ``(first, last)`` indices: adjacent burst buckets merge."""
    runs: list[tuple[int, int]] = []
    for i, is_hot in enumerate(hot):
        if not is_hot:
            continue
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def _add_counts(counter: Counter[int], keys: list[int], counts: list[int]) -> None:
    """``counter[key] += count`` for each pair, in order (a C-speed update when no key is there yet)."""
    if counter.keys().isdisjoint(keys):
        dict.update(counter, zip(keys, counts))
    else:
        for key, count in zip(keys, counts):
            counter[key] += count


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
