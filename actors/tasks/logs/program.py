"""The logs task's stream program: a log's lines through the bounded cache, cut into windows, reported.

Contract: lines come in order (``LogsRun.read``); every line with text is parsed (``LogParser``) into the
open window's exact statistics (``WindowStats``) and the stream's skimming memory (``Skim``), whatever the
feed. Windows close by time (``window_seconds`` buckets of the parsed timestamps; a line without one
belongs to the window of the line before, and a line that goes back in time stays in the current window),
by tokens of the raw feed (``window_tokens``) or by lines (``window_lines``). What the model reads:

* ``condensed`` (the default): at each window's end, the window as an operator would skim it
  (``Skim.window_text``), a few lines whatever the window's size; the lines themselves are never
  tokenized, so the cost is parsing, and the stream's length grows with the log's distinct content.
* ``raw``: every line, as it is read (``stride``-sized chunks; the rest when a window closes).

At each window's end the model writes a short report from a copy of the stream's state, given the
window's statistics (reports never enter the stream): one ``window`` row. At the stream's end one
``summary`` row: the night in numbers (lines, alerts, every template with its count, the templates and
the host new against earlier nights, the busiest windows, silences) and the model's summary of it.

Everything the program knows lives in one ``LogsState``: a checkpoint before each batch of lines holds it
(every ``output.checkpoint_every_tokens`` tokens of work: the raw feed's tokens; for the condensed one the
model's tokens plus one per KiB of input parsed, so a checkpoint -- the whole bounded cache -- comes every
64 MiB of a quiet log at the default, not every batch), and a resumed stream reads on from that batch --
in a file, in a file's records, in the lines a shuffle gathered, or, for files merged in time order, in
each file at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np

from actors.checkpoint import allow
from actors.context import TaskContext
from actors.tasks.logs.formats import detect_format, get_format
from actors.tasks.logs.grouping import LineOpener
from actors.tasks.logs.history import History
from actors.tasks.logs.report import burst_rows, duration_text, render_report, statistics_text, template_rows
from actors.tasks.logs.settings import LogsSettings
from actors.tasks.logs.skim import MAX_SEEN, Silence, Skim, alert_bursts
from actors.tasks.logs.stats import LogLine, LogParser, ParsedBatch, TemplateStats, WindowStats
from longread.scheduler import Program
from pipeline.inputs.readers import Position
from pipeline.inputs.sources import InputError

#: Lines per batch (a checkpoint may come between two batches): the raw feed tokenizes a batch at once.
BATCH_LINES = {"raw": 128, "condensed": 4096}
#: The condensed feed's work between checkpoints: the model's tokens plus one per this many input bytes.
#: Parsing a KiB costs far less than a model token on a CPU (BENCHMARKS.md: ~160,000 lines/s per core
#: parsed, tens of tokens/s per actor), so this overstates parsing: a resumed stream re-reads at most
#: ``checkpoint_every_tokens`` KiB. (Counting 4 bytes a token, as the raw feed's text has, wrote the whole
#: cache after every batch of lines: ~2,400 checkpoints of 47 MB for a 1 GB night, embedded model.)
CONDENSED_BYTES_PER_TOKEN = 1024
#: Silences and new templates listed in the summary row, at most.
MAX_LISTED = 200

allow(WindowStats)
allow(TemplateStats)  # per-template first/last occurrence, inside WindowStats
allow(Silence)


@allow
@dataclass
class Window:
    index: int = 0
    start: int = 0  # document token where it starts
    tokens: int = 0
    stats: WindowStats = field(default_factory=WindowStats)
    feed_seconds: float = 0.0


@allow
@dataclass
class LogsState:
    """All a logs stream knows (what its checkpoints hold)."""

    position: Position = None  # where the next batch of lines starts (None: the start)
    window: Window = field(default_factory=Window)
    pending: list[int] = field(default_factory=list)  # raw feed: tokens not fed yet (less than a stride)
    bucket: int | None = None  # the open window's time bucket (window_seconds)
    last_ts: float | None = None
    has_text: bool = False
    parser_memory: Any = None  # the parser's memory(): the format it tries first, yearless timestamps' year
    log_format: str | None = None  # detected from the first lines (format: auto); a resumed stream keeps it
    skim: Skim = field(default_factory=Skim)
    lines: int = 0  # lines with text read
    alerts: int = 0
    read_bytes: int = 0  # input bytes read (the condensed feed's checkpoints count them too)
    capped: str | None = None  # why reading stopped early (logs.max_lines), for the reports
    silences: list[Silence] = field(default_factory=list)  # of the whole stream, for the summary
    new_tonight: list[str] = field(default_factory=list)  # templates new against the earlier nights


class LogsRun:
    """One stream's program (see the module docstring): ``yield from LogsRun(...).run(lines)``."""

    def __init__(
        self, ctx: TaskContext, settings: LogsSettings, source: str, host: str, history: History
    ) -> None:
        self.ctx, self.s, self.source, self.host, self.history = ctx, settings, source, host, history
        self.parser: LogParser = settings.parser()
        self.st: LogsState = ctx.restored() or LogsState()
        if ctx.restored() is None:
            self.st.skim = Skim(settings.silence_seconds, settings.rate_change)
        self.parser.remember(self.st.parser_memory)
        if self.st.log_format is not None:
            self.parser.format = get_format(self.st.log_format)
        self.detect = settings.format == "auto" and self.st.log_format is None
        self.stop = False
        self.ending = False  # the last window is closing (a partial one)

    # ------------------------------------------------------------------ reading
    def run(self, lines: LineOpener) -> Program[None]:
        st = self.st
        iterator = lines(st.position, self.ctx.damage)
        while not self.stop:
            batch = list(islice(iterator, BATCH_LINES[self.s.feed]))
            if not batch:
                break
            yield from self._batch(batch)
        if not st.has_text:
            raise InputError(
                "empty", f"{self.source}: empty log (no lines with text); remove it or check the path."
            )
        self.ending = True
        yield from self._close()
        yield from self._summary()

    def _batch(self, batch: list[tuple[Position, str]]) -> Program[None]:
        st, ctx = self.st, self.ctx
        text_lines = [line for _, line in batch if line.strip()]
        if self.detect and text_lines:  # the stream's format, from its first lines with text
            self.parser.format = detect_format(text_lines)
            st.log_format, self.detect = self.parser.format.name, False
        st.position, st.parser_memory = batch[0][0], self.parser.memory()
        # All before this batch is done: a resumed stream reads from here.
        parsed = 0 if self.s.feed == "raw" else st.read_bytes // CONDENSED_BYTES_PER_TOKEN
        yield from ctx.checkpoint(st, progress=ctx.tokens + parsed)
        if self.s.feed == "raw":
            yield from self._raw_batch(batch)
        else:
            yield from self._condensed_batch([line for _, line in batch])

    def _condensed_batch(self, texts: list[str]) -> Program[None]:
        """A batch of lines parsed at once (``parse_batch``: columns, in RE2), then added window by window:
        nothing per line in Python but the windows' cuts."""
        st = self.st
        parsed = self.parser.parse_batch(texts)
        filled = parsed.ts_filled(st.last_ts)
        has_text = ~parsed.blank
        at, n = 0, len(texts)
        while at < n and not self.stop:
            end = self._window_end(filled, has_text, at)
            end = self._cap(has_text, at, end)
            if end > at:
                self._add_rows(parsed, filled, at, end)
            if end < n and not self.stop:
                yield from self._close()
                if self.s.window_seconds and not np.isnan(filled[end]):  # the next window's bucket
                    bucket = math.floor(filled[end] / self.s.window_seconds)
                    st.bucket = bucket if st.bucket is None else max(st.bucket, bucket)
            at = end
        st.read_bytes += sum(len(line) + 1 for line in texts[:at])

    def _window_end(self, filled: np.ndarray, has_text: np.ndarray, at: int) -> int:
        """Where the open window ends in the batch (its length if it goes on): the first line of a later
        time bucket (lines that go back in time stay), or the line past ``window_lines``."""
        s, st, end = self.s, self.st, len(filled)
        if s.window_seconds:
            buckets = np.floor(filled[at:] / s.window_seconds)
            known = ~np.isnan(buckets)
            if st.bucket is None and known.any():
                st.bucket = int(buckets[known][0])
            if st.bucket is not None:
                later = np.flatnonzero(known & (buckets > st.bucket))
                end = at + int(later[0]) if len(later) else end
        if s.window_lines:
            room = s.window_lines - st.window.stats.lines
            counted = np.cumsum(has_text[at:end])
            over = np.flatnonzero(counted > room)
            end = at + int(over[0]) if len(over) and room >= 0 else end
        return end

    def _cap(self, has_text: np.ndarray, at: int, end: int) -> int:
        """``logs.max_lines``: the batch stops at the line past the cap (the stream stops there)."""
        limit = self.s.max_lines
        if limit is None:
            return end
        over = np.flatnonzero(np.cumsum(has_text[at:end]) > limit - self.st.lines)
        if len(over):
            self.st.capped = f"capped at {limit:,} lines (logs.max_lines)"
            self.ctx.truncated = self.stop = True
            return at + int(over[0])
        return end

    def _add_rows(self, parsed: ParsedBatch, filled: np.ndarray, at: int, end: int) -> None:
        """Rows ``at:end`` of a parsed batch, all of the open window: its statistics and the skim."""
        st = self.st
        st.window.stats.add_batch(parsed, at, end, skip_blank=True)
        st.skim.add_batch(parsed, at, end, st.window.index)
        text = int(np.count_nonzero(~parsed.blank[at:end]))
        st.lines += text
        st.alerts += int(np.count_nonzero(parsed.alert[at:end] & ~parsed.blank[at:end]))
        st.has_text = st.has_text or text > 0
        times = filled[at:end]
        if len(times) and not np.isnan(times[-1]):
            st.last_ts = float(times[-1])
            if self.s.window_seconds:
                last = np.floor(times[~np.isnan(times)] / self.s.window_seconds).max()
                st.bucket = int(last) if st.bucket is None else max(st.bucket, int(last))

    def _raw_batch(self, batch: list[tuple[Position, str]]) -> Program[None]:
        st, ctx = self.st, self.ctx
        encoded = ctx.encode_batch([line + "\n" for _, line in batch], max_tokens=ctx.left(len(st.pending)))
        for (_, line), ids in zip(batch, encoded):
            st.read_bytes += len(line) + 1
            if self._capped():
                return
            parsed = self.parser.parse(line) if line.strip() else None
            fit, full = ctx.fit(ids, pending=len(st.pending))
            if full and not fit:  # the token limit: the model read all it may, and the stream stops
                ctx.truncated = self.stop = True
                return
            yield from self._line(parsed)
            if len(fit) < len(ids):
                ids, ctx.truncated, self.stop = fit, True, True
            st.pending.extend(ids)
            st.window.tokens += len(ids)
            yield from self._flush(whole_chunks=True)
            if self.s.window_tokens and st.window.tokens >= self.s.window_tokens:
                yield from self._close()
            if self.stop:
                return

    def _capped(self) -> bool:
        limit = self.s.max_lines
        if limit is not None and self.st.lines >= limit:
            self.st.capped = f"capped at {limit:,} lines (logs.max_lines)"
            self.ctx.truncated = self.stop = True
        return self.stop

    def _line(self, parsed: LogLine | None) -> Program[None]:
        """One line: the window it belongs to (closing the open one when time or lines say so), then its
        statistics."""
        st, s = self.st, self.s
        ts = parsed.ts if parsed is not None and parsed.ts is not None else st.last_ts
        if s.window_seconds and ts is not None:
            bucket = math.floor(ts / s.window_seconds)
            if st.bucket is not None and bucket > st.bucket:
                yield from self._close()
            st.bucket = bucket if st.bucket is None else max(st.bucket, bucket)
        if s.window_lines and st.window.stats.lines >= s.window_lines:
            yield from self._close()
        st.last_ts = ts
        if parsed is None:  # a blank line is read (and, raw, fed) but is no log line
            return
        st.has_text = True
        st.lines += 1
        st.alerts += parsed.alert
        st.window.stats.add(parsed)
        st.skim.add(parsed, st.window.index)

    # ------------------------------------------------------------------ windows
    def _flush(self, whole_chunks: bool) -> Program[None]:
        """Raw feed: whole stride-sized chunks as lines arrive; the remainder only when a window closes."""
        st, stride = self.st, self.ctx.stride
        n = len(st.pending) // stride * stride if whole_chunks else len(st.pending)
        if n:
            st.window.feed_seconds += yield from self.ctx.feed(st.pending[:n])
            del st.pending[:n]

    def _close(self) -> Program[None]:
        """The open window ends: feed what the model reads of it, report, write its row, open the next."""
        st = self.st
        window, stats = st.window, st.window.stats
        if self.s.feed == "raw":
            yield from self._flush(whole_chunks=False)
        if stats.lines == 0:
            return
        ratio = self._rate_ratio(window)
        new = self._new_tonight([t for t, _ in st.skim.new])
        if self.s.feed == "condensed":
            yield from self._feed_text(
                st.skim.window_text(stats, self.source, self.parser.format.name, ratio)
            )
        facts = self._facts(stats, ratio)
        yield from self._report(window, facts, new, ratio)
        st.silences = (st.silences + st.skim.silences)[:MAX_LISTED]
        st.skim.close(stats, window.index)
        st.window = Window(window.index + 1, self.ctx.tokens)

    def _rate_ratio(self, window: Window) -> float | None:
        """The window's lines per second against the stream's previous windows (None without time)."""
        stats = window.stats
        if stats.first_ts is None or stats.last_ts is None:
            return None
        w = self.s.window_seconds
        seconds = w or (stats.last_ts - stats.first_ts)
        if w and (window.index == 0 or self.ending):  # a partial window: its own span
            seconds = max(60.0, stats.last_ts - stats.first_ts)
        day = None if not w or self.st.bucket is None else (self.st.bucket * w) % 86400
        earlier = None if day is None else self.history.rate(self.host, day)
        return self.st.skim.rate(stats, seconds, day, earlier)

    def _new_tonight(self, templates: list[str]) -> list[str]:
        """Of the window's first-seen templates, those the host never logged in the earlier nights."""
        new = self.history.new_templates(self.host, templates)
        room = MAX_LISTED - len(self.st.new_tonight)
        self.st.new_tonight += new[: max(0, room)]
        return new

    def _feed_text(self, text: str) -> Program[None]:
        ctx = self.ctx
        ids = ctx.encode(text, max_tokens=ctx.room)
        fit, full = ctx.fit(ids)
        if full:
            ctx.truncated = True  # the model read up to the token limit; statistics go on
        self.st.window.feed_seconds += yield from ctx.feed(fit)
        self.st.window.tokens += len(fit)

    def _facts(self, stats: WindowStats, ratio: float | None) -> str:
        facts = statistics_text(
            stats, self.s.alert_rule or self.parser.format.alert_text, self.s.top_templates
        )
        extra = [f"Silence: {x.start} .. {x.end} ({duration_text(x.seconds)} without a line)"
                 for x in self.st.skim.silences]  # fmt: skip
        if self.st.skim.is_rate_change(ratio):
            extra.append(f"Rate change: {ratio:.1f}x the lines per second of the previous windows")
        if self.st.capped:
            extra.append(f"Input {self.st.capped}")
        return "\n".join([facts, *extra])

    def _report(self, window: Window, facts: str, new: list[str], ratio: float | None) -> Program[None]:
        s, stats = self.s, window.stats
        top = stats.top_templates(s.top_templates)
        fmt = self.parser.format.name
        assert s.report_prompt is not None  # set by LogsSettings' validator
        prompt = _prompt(s.report_prompt, window, self.source, top, fmt, facts)
        result = yield from self.ctx.ask(prompt, s.generation)
        title = f"Incident report: {self.source}, window {window.index + 1} ({fmt} log)"
        yield from self.ctx.write(
            "window",
            segment_index=window.index,
            segment_title=f"{stats.first_ts_text} .. {stats.last_ts_text}" if stats.first_ts_text else None,
            token_start=window.start,
            token_end=window.start + window.tokens,
            output_text=result.text,
            stop_reason=result.stop_reason,
            log_host=self.host,
            log_lines=stats.lines,
            log_levels=stats.level_counts(),
            log_top_templates=[{"template": t, "count": n} for t, n in top],
            log_first_timestamp=stats.first_ts_text,
            log_last_timestamp=stats.last_ts_text,
            log_alert_lines=stats.alerts,
            log_out_of_order_lines=stats.out_of_order,
            log_format=fmt,
            log_notable_templates=template_rows(stats.notable_templates(s.top_templates)),
            log_bursts=burst_rows(stats.bursts()),
            log_alert_bursts=burst_rows(alert_bursts(stats)),
            log_new_templates=new,
            log_silences=[x.__dict__ for x in self.st.skim.silences],
            log_rate_ratio=ratio,
            log_report=render_report(title, facts, result.text, str(self.ctx.env.columns["model"])),
            feed_seconds=window.feed_seconds,
            generate_seconds=result.seconds,
        )

    # ------------------------------------------------------------------ the night
    def _summary(self) -> Program[None]:
        """The stream's summary row: the night in numbers and the model's summary of it."""
        st, skim = self.st, self.st.skim
        templates = sorted(skim.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        new_host = self.history.is_new_host(self.host) if self.history.nights else None
        facts = self._night_facts(len(templates), new_host)
        prompt = self.s.summary_prompt.format(source=self.source, statistics=facts)
        result = yield from self.ctx.ask(prompt, self.s.generation)
        yield from self.ctx.write(
            "summary",
            segment_index=st.window.index,
            segment_title=f"{self.host}: the whole stream",
            token_start=0,
            token_end=self.ctx.tokens,
            output_text=result.text,
            stop_reason=result.stop_reason,
            log_host=self.host,
            log_lines=st.lines,
            log_alert_lines=st.alerts,
            log_format=self.parser.format.name,
            log_templates=[{"template": t, "count": n} for t, n in templates],
            log_new_templates=st.new_tonight,
            log_new_host=new_host,
            log_busiest_windows=[index for _, index, _ in skim.busiest],
            log_window_lines=[{"start": d, "lines": n, "seconds": s} for d, n, s in skim.windows],
            log_silences=[x.__dict__ for x in st.silences],
            log_report=render_report(
                f"Summary: {self.source}", facts, result.text, str(self.ctx.env.columns["model"])
            ),
            generate_seconds=result.seconds,
        )

    def _night_facts(self, templates: int, new_host: bool | None) -> str:
        st, skim = self.st, self.st.skim
        lines = [f"Lines: {st.lines:,}; alert lines: {st.alerts:,}; message templates: {templates:,}"]
        if self.history.nights:
            what = (
                "a host not seen in the earlier nights"
                if new_host
                else f"{len(st.new_tonight)} new templates"
            )
            lines.append(f"Against the {len(self.history.nights)} earlier nights: {what}")
            lines += [f"  - new: {t}" for t in st.new_tonight[:10]]
        if skim.overflowed:
            lines.append(f"More than {MAX_SEEN:,} templates: later ones were not told apart as new")
        busiest = ", ".join(f"{span} ({n:,} lines)" for n, _, span in skim.busiest[:3])
        lines.append(f"Busiest windows: {busiest}")
        lines += [f"Silence: {x.start} .. {x.end} ({duration_text(x.seconds)})" for x in st.silences[:10]]
        if st.capped:
            lines.append(f"Input {st.capped}")
        return "\n".join(lines)


def _prompt(
    template: str, window: Window, source: str, top: list[tuple[str, int]], fmt: str, statistics: str
) -> str:
    st = window.stats
    return template.format(
        format=fmt,
        statistics=statistics,
        source=source,
        window=window.index + 1,
        lines=st.lines,
        first=st.first_ts_text or "unknown",
        last=st.last_ts_text or "unknown",
        levels=", ".join(f"{level} {n}" for level, n in st.level_counts()) or "none",
        alerts=st.alerts,
        templates="\n".join(f"- ({n}x) {t}" for t, n in top) or "- (none)",
    )
