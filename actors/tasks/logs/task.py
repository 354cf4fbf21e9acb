"""Task ``logs``: windows of a log stream with an incident report and exact statistics
(``python -m jobs.analyze_logs``).

Contract: a stream is a file (``group_by: file``), the files whose paths share a key (``path``: merged in
time order while read incrementally, see ``merge_in_time_order``), or the lines that share a key
(``line``: gathered and time-sorted by the driver's shuffle). Lines are streamed in order through the
bounded cache and cut into windows, either by tokens (a window closes once it holds ``window_tokens``) or
by time (``window_seconds`` buckets of the parsed timestamps; lines without a timestamp belong to the
window of the line before, and a line that goes back in time stays in the current window). At each
window's end an incident report is written: the window's exact statistics, computed without the model
(``actors.tasks.logs.stats``: counts by level, alert lines by the log format's rule
(``actors.tasks.logs.formats``, detected from the stream's first lines unless ``logs.format`` names one),
notable and most frequent message templates with their first and last occurrence, bursts in time), rendered as
text (``actors.tasks.logs.report``), then the model's short summary of them, written from a copy of the
stream's state given those statistics (summaries never enter the stream). One ``window`` row per window.

Everything the program knows lives in one ``LogsState`` (where the next batch of lines starts, the open
window and its statistics, tokens not fed yet, the detected format, the rows so far): a checkpoint before
each batch of lines holds it, and a resumed stream reads on from that batch -- in a file, in a file's
records, in the lines a shuffle gathered, or, for files merged in time order, in each file at once.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from actors.checkpoint import allow
from actors.tasks.base import Stream, Task, check_regex, check_template, max_new_tokens_shorthand
from actors.tasks.logs.formats import FORMAT_NAMES, GENERIC, detect_format, get_format
from actors.tasks.logs.grouping import LineOpener, group_by_path_key, merge_in_time_order
from actors.tasks.logs.report import burst_rows, render_report, statistics_text, template_rows
from actors.tasks.logs.shuffle import LineGrouping
from actors.tasks.logs.stats import LogParser, TemplateStats, WindowStats
from pipeline.config import Decoding, Section
from pipeline.inputs.readers import Damage, Position, PositionedLines, iter_log_lines_at
from pipeline.inputs.sources import InputError, SourceFile
from pipeline.job.plan import StreamTask

if TYPE_CHECKING:  # the stream programs' side (torch) is imported by the worker, not with the settings
    from actors.context import Row, TaskContext
    from longread.scheduler import Program

BATCH_LINES = 128
LOG_PROMPT_FIELDS = {
    "source",
    "window",
    "lines",
    "first",
    "last",
    "levels",
    "templates",
    "alerts",
    "format",
    "statistics",
}


class ReportGeneration(Decoding):
    """A window's summary: a few sentences; log loops are short ("A: A: A:"), so a 3-gram ban."""

    max_new_tokens: int = Field(default=128, ge=1, description="length cap of a window's summary")
    no_repeat_ngram_size: int = Field(default=3, ge=0, description="never repeat an n-gram; 0 = off")


class LogsSettings(Section):
    """Incident reports per window of each log stream: statistics first, then the model's summary."""

    group_by: Literal["file", "path", "line"] = Field(
        default="file", description="one stream per file, per key in the path, or per key in each line"
    )
    key_pattern: str | None = Field(
        default=None, description="regex with (?P<key>...) on the path or on each line"
    )
    window_tokens: int | None = Field(
        default=None, ge=8, description="default 1024 when window_seconds is unset"
    )
    window_seconds: float | None = Field(
        default=None, gt=0, description="window size in seconds of log time instead of tokens"
    )
    timestamp_pattern: str | None = Field(
        default=None, description="regex with (?P<ts>...); default: common formats"
    )
    timestamp_format: str | None = Field(
        default=None, description="strptime format of ts; unset: epoch seconds"
    )
    format: str = Field(
        default="auto",
        description="the log's format (actors.tasks.logs.formats: level, message, alert rule); "
        "auto: detected",
    )
    level_pattern: str | None = Field(default=None, description="regex with (?P<level>...)")
    alert_pattern: str | None = Field(
        default=None, description="regex: matching lines count as alerts; unset: the format's rule"
    )
    top_templates: int = Field(default=5, ge=1, description="templates kept per window")
    report_prompt: str = Field(
        default=(
            "Statistics of the log lines above ({source}, window {window}, {format} log):\n{statistics}\n\n"
            "In two or three sentences, tell an on-call engineer what happened in this window and whether "
            "anything needs attention."
        ),
        description="what the model is asked after a window; {statistics} and the window's facts",
    )
    generation: ReportGeneration = Field(
        default_factory=lambda: ReportGeneration(), description="the summary's controls"
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return max_new_tokens_shorthand(data, {"max_new_tokens": "generation"})

    @model_validator(mode="after")
    def _check(self) -> LogsSettings:
        if self.window_tokens is not None and self.window_seconds is not None:
            raise ValueError("set either window_tokens or window_seconds, not both")
        if self.window_tokens is None and self.window_seconds is None:
            self.window_tokens = 1024
        if self.group_by in ("path", "line") and not self.key_pattern:
            raise ValueError(f"group_by={self.group_by!r} needs key_pattern, e.g. '(?P<key>host-\\w+)'")
        for name in ("key_pattern", "timestamp_pattern", "level_pattern", "alert_pattern"):
            check_regex(getattr(self, name), name)
        if self.timestamp_pattern and "(?P<ts>" not in self.timestamp_pattern:
            raise ValueError("timestamp_pattern needs a named group (?P<ts>...)")
        if self.level_pattern and "(?P<level>" not in self.level_pattern:
            raise ValueError("level_pattern needs a named group (?P<level>...)")
        check_template(self.report_prompt, LOG_PROMPT_FIELDS, "report_prompt")
        if self.format not in FORMAT_NAMES:
            raise ValueError(f"unknown log format {self.format!r}; choose one of {list(FORMAT_NAMES)}")
        return self

    @property
    def alert_rule(self) -> str | None:
        """How alerts are counted when ``alert_pattern`` overrides the format's rule (else None)."""
        return f"lines matching alert_pattern {self.alert_pattern!r}" if self.alert_pattern else None

    def parser(self) -> LogParser:
        """A parser of this stream's lines (``format: auto``: generic until the format is detected)."""
        return LogParser(
            timestamp_pattern=self.timestamp_pattern,
            timestamp_format=self.timestamp_format,
            level_pattern=self.level_pattern,
            alert_pattern=self.alert_pattern,
            log_format=get_format(self.format) if self.format != "auto" else GENERIC,
        )


@allow
@dataclass
class Window:
    index: int = 0
    start: int = 0  # document token where it starts
    tokens: int = 0
    stats: WindowStats = field(default_factory=WindowStats)
    feed_seconds: float = 0.0


allow(WindowStats)
allow(TemplateStats)  # per-template first/last occurrence, inside WindowStats


@allow
@dataclass
class LogsState:
    """All a logs stream knows (what its checkpoints hold)."""

    position: Position = None  # where the next batch of lines starts (None: the start)
    window: Window = field(default_factory=Window)
    pending: list[int] = field(default_factory=list)  # tokens not fed yet (less than a stride)
    bucket: int | None = None  # the open window's time bucket (window_seconds)
    last_ts: float | None = None
    has_text: bool = False
    rows: list[Row] = field(default_factory=list)
    parser_memory: Any = None  # the parser's memory(): the format it tries first, yearless timestamps' year
    log_format: str | None = None  # detected from the first lines (format: auto); a resumed stream keeps it


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


class Logs(Task):
    name = "logs"
    job_name = "analyze_logs"
    Settings = LogsSettings
    row_kinds = ("window",)
    preview_kind = "window"
    records_are_streams = False  # a log in JSONL/Parquet is one stream of its records' lines

    @property
    def settings(self) -> LogsSettings:
        return self.cfg.logs  # type: ignore[attr-defined]

    @classmethod
    def add_flags(cls, parser: argparse.ArgumentParser) -> None:
        add = parser.add_argument
        add("--window-tokens", type=int, dest="logs.window_tokens", metavar="N")
        add("--window-seconds", type=float, dest="logs.window_seconds", metavar="S")
        add("--group-by", dest="logs.group_by", choices=["file", "path", "line"])
        add("--key-pattern", dest="logs.key_pattern", metavar="REGEX")

    # ------------------------------------------------------------------ planning
    def plan(self, sources: list[SourceFile]) -> list[StreamTask]:
        s = self.settings
        if s.group_by == "path":
            assert s.key_pattern is not None  # the settings check it
            return group_by_path_key(self.name, sources, s.key_pattern)
        return super().plan(sources)

    def line_grouping(self) -> LineGrouping | None:
        s = self.settings
        if s.group_by != "line":
            return None
        assert s.key_pattern is not None  # the settings check it
        return LineGrouping(self.name, s.key_pattern, s.timestamp_pattern, s.timestamp_format)

    # ------------------------------------------------------------------ streams
    def streams(self, unit: StreamTask, lines: list[str] | None = None) -> Iterator[Stream]:
        from actors.context import StreamInfo

        src = unit.sources[0]
        info = StreamInfo(unit.stream_id or src.uri, src.display, unit.part, unit.parts)
        info.inputs = tuple((s.uri, s.size) for s in unit.sources)
        label = f"{unit.key} ({len(unit.sources)} files)" if unit.key else src.display
        if unit.key:
            info.source_uri = ", ".join(s.display for s in unit.sources)[:2000]

        def program(ctx: TaskContext) -> Program[list[Row]]:
            return self.program(ctx, self._lines(unit, lines), label)

        yield Stream(info, program)

    def _lines(self, unit: StreamTask, lines: list[str] | None) -> LineOpener:
        """The stream's lines, as a source that opens at a position (see ``LineOpener``)."""
        if lines is not None:  # grouped by a key in each line: the driver's shuffle sorted them already
            if unit.extra.get("error"):
                raise InputError(*unit.extra["error"])
            grouped = lines

            def from_list(start: Position, damage: Damage | None) -> PositionedLines:
                return ((i, grouped[i]) for i in range(int(start or 0), len(grouped)))

            return from_list
        opts = self.read_options()

        def opener(src: SourceFile, byte_range: tuple[int, int] | None = None) -> LineOpener:
            def read(start: Position, damage: Damage | None) -> PositionedLines:
                return iter_log_lines_at(src, self.storage, opts, byte_range, start=start, damage=damage)

            return read

        if len(unit.sources) == 1:
            return opener(unit.sources[0], unit.byte_range)
        openers = [opener(s) for s in unit.sources]

        def merged(start: Position, damage: Damage | None) -> PositionedLines:
            return merge_in_time_order(openers, self.settings.parser, start, damage)

        return merged

    def program(self, ctx: TaskContext, lines: LineOpener, source: str) -> Program[list[Row]]:
        s = self.settings
        parser = s.parser()
        stride = ctx.stride
        st: LogsState = ctx.restored() or LogsState()
        parser.remember(st.parser_memory)

        def flush(whole_chunks: bool) -> Program[None]:
            # Feed whole stride-sized chunks as lines arrive; the remainder only when a window closes.
            n = len(st.pending) // stride * stride if whole_chunks else len(st.pending)
            if n:
                st.window.feed_seconds += yield from ctx.feed(st.pending[:n])
                del st.pending[:n]

        def close() -> Program[None]:
            yield from flush(whole_chunks=False)
            window = st.window
            if window.stats.lines == 0:
                return
            stats = window.stats
            top = stats.top_templates(s.top_templates)
            fmt = parser.format.name
            facts = statistics_text(stats, s.alert_rule or parser.format.alert_text, s.top_templates)
            prompt = _prompt(s.report_prompt, window, source, top, fmt, facts)
            result = yield from ctx.ask(prompt, s.generation)
            title = f"Incident report: {source}, window {window.index + 1} ({fmt} log)"
            span = f"{stats.first_ts_text} .. {stats.last_ts_text}" if stats.first_ts_text else None
            row = yield from ctx.row(
                "window",
                segment_index=window.index,
                segment_title=span,
                token_start=window.start,
                token_end=window.start + window.tokens,
                output_text=result.text,
                stop_reason=result.stop_reason,
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
                log_report=render_report(title, facts, result.text, str(ctx.env.columns["model"])),
                feed_seconds=window.feed_seconds,
                generate_seconds=result.seconds,
            )
            st.rows.append(row)
            st.window = Window(window.index + 1, ctx.tokens)

        iterator = lines(st.position, ctx.damage)
        stop = False
        if st.log_format is not None:
            parser.format = get_format(st.log_format)
        detect = s.format == "auto" and st.log_format is None
        while not stop:
            batch = list(islice(iterator, BATCH_LINES))
            if not batch:
                break
            text_lines = [line for _, line in batch if line.strip()]
            if detect and text_lines:  # the stream's format, from its first lines with text
                parser.format = detect_format(text_lines)
                st.log_format, detect = parser.format.name, False
            st.position, st.parser_memory = batch[0][0], parser.memory()
            yield from ctx.checkpoint(st)  # all before this batch is done: a resumed stream reads from here
            texts = [line + "\n" for _, line in batch]
            encoded = ctx.encode_batch(texts, max_tokens=ctx.left(len(st.pending)))
            for (_, line), ids in zip(batch, encoded):
                parsed = parser.parse(line)
                ts = parsed.ts if parsed.ts is not None else st.last_ts
                if s.window_seconds and ts is not None:
                    b = math.floor(ts / s.window_seconds)
                    if st.bucket is not None and b > st.bucket:
                        yield from close()
                    st.bucket = b if st.bucket is None else max(st.bucket, b)
                fit, full = ctx.fit(ids, pending=len(st.pending))
                if full and not fit:
                    ctx.truncated = stop = True
                    break
                if len(fit) < len(ids):
                    ids = fit
                    ctx.truncated = stop = True
                if line.strip():  # a blank line is read (and fed) but is no log line
                    st.has_text = True
                    st.window.stats.add(parsed)
                st.pending.extend(ids)
                st.window.tokens += len(ids)
                st.last_ts = ts
                yield from flush(whole_chunks=True)
                if s.window_tokens and st.window.tokens >= s.window_tokens:
                    yield from close()
                if stop:
                    break
        if not st.has_text:
            raise InputError(
                "empty", f"{source}: empty log (no lines with text); remove it or check the path."
            )
        yield from close()
        return st.rows
