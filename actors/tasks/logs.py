"""Task ``logs``: windows of a log stream with an incident report and exact statistics
(``python -m jobs.analyze_logs``).

Contract: a stream is a file (``group_by: file``), the files whose paths share a key (``path``: merged in
time order while read incrementally, see ``merge_in_time_order``), or the lines that share a key
(``line``: gathered and time-sorted by the driver's shuffle). Lines are streamed in order through the
bounded cache and cut into windows, either by tokens (a window closes once it holds ``window_tokens``) or
by time (``window_seconds`` buckets of the parsed timestamps; lines without a timestamp belong to the
window of the line before, and a line that goes back in time stays in the current window). At each
window's end an incident report is written: the window's exact statistics, computed without the model
(``pipeline.logstats``: counts by level, alert lines by the log format's rule (``pipeline.logformats``,
detected from the stream's first lines unless ``logs.format`` names one), notable and most frequent
message templates with their first and last occurrence, bursts in time), rendered as text
(``pipeline.logreport``), then the model's short summary of them, written from a copy of the stream's state
given those statistics (summaries never enter the stream). One ``window`` row per window.
"""

from __future__ import annotations

import argparse
import heapq
import math
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any, Literal

from pydantic import Field, model_validator

from actors.context import Row, StreamInfo, TaskContext
from actors.tasks.base import Stream, Task, check_regex, check_template, max_new_tokens_shorthand
from longread.scheduler import Program
from pipeline.config import Decoding, Section
from pipeline.logformats import FORMAT_NAMES, GENERIC, detect_format, get_format
from pipeline.logreport import burst_rows, render_report, statistics_text, template_rows
from pipeline.logstats import LogParser, WindowStats
from pipeline.readers import iter_log_lines
from pipeline.sharding import StreamTask, group_by_path_key
from pipeline.shuffle import LineGrouping
from pipeline.sources import InputError, SourceFile

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

    max_new_tokens: int = Field(default=128, ge=1)
    no_repeat_ngram_size: int = Field(default=3, ge=0)


class LogsSettings(Section):
    group_by: Literal["file", "path", "line"] = "file"
    key_pattern: str | None = Field(
        default=None, description="regex with (?P<key>...) on the path or on each line"
    )
    window_tokens: int | None = Field(
        default=None, ge=8, description="default 1024 when window_seconds is unset"
    )
    window_seconds: float | None = Field(default=None, gt=0)
    timestamp_pattern: str | None = Field(
        default=None, description="regex with (?P<ts>...); default: common formats"
    )
    timestamp_format: str | None = Field(
        default=None, description="strptime format of ts; unset: epoch seconds"
    )
    format: str = Field(
        default="auto",
        description="the log's format (pipeline.logformats: level, message, alert rule); auto: detected",
    )
    level_pattern: str | None = Field(default=None, description="regex with (?P<level>...)")
    alert_pattern: str | None = Field(
        default=None, description="regex: matching lines count as alerts; unset: the format's rule"
    )
    top_templates: int = Field(default=5, ge=1)
    report_prompt: str = (
        "Statistics of the log lines above ({source}, window {window}, {format} log):\n{statistics}\n\n"
        "In two or three sentences, tell an on-call engineer what happened in this window and whether "
        "anything needs attention."
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


def merge_in_time_order(sources: list[Iterator[str]], settings: LogsSettings) -> Iterator[str]:
    """Lines of several time-ordered files, merged by timestamp, read lazily."""

    def keyed(index: int, lines: Iterator[str]) -> Iterator[tuple[float, int, int, str]]:
        parser = settings.parser()
        last = -math.inf
        for number, line in enumerate(lines):
            ts = parser.timestamp(line)[0]
            last = ts if ts is not None else last  # continuation lines travel with the line before
            yield last, index, number, line

    for _, _, _, line in heapq.merge(*(keyed(i, it) for i, it in enumerate(sources))):
        yield line


class _Window:
    def __init__(self, index: int, start: int) -> None:
        self.index = index
        self.start = start
        self.tokens = 0
        self.stats = WindowStats()
        self.feed_seconds = 0.0


def _prompt(
    template: str, window: _Window, source: str, top: list[tuple[str, int]], fmt: str, statistics: str
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
        add("--window-tokens", type=int, dest="logs.window_tokens")
        add("--window-seconds", type=float, dest="logs.window_seconds")
        add("--group-by", dest="logs.group_by", choices=["file", "path", "line"])
        add("--key-pattern", dest="logs.key_pattern")

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
        src = unit.sources[0]
        info = StreamInfo(unit.stream_id or src.uri, src.display, unit.part, unit.parts)
        label = f"{unit.key} ({len(unit.sources)} files)" if unit.key else src.display
        if unit.key:
            info.source_uri = ", ".join(s.display for s in unit.sources)[:2000]

        def program(ctx: TaskContext) -> Program[list[Row]]:
            return self.program(ctx, self._lines(unit, lines), label)

        yield Stream(info, program)

    def _lines(self, unit: StreamTask, lines: list[str] | None) -> Iterable[str]:
        if lines is not None:  # grouped by a key in each line: the driver's shuffle sorted them already
            if unit.extra.get("error"):
                raise InputError(*unit.extra["error"])
            return lines
        opts = self.read_options()
        if len(unit.sources) == 1:
            return iter_log_lines(unit.sources[0], self.storage, opts, unit.byte_range)
        return merge_in_time_order(
            [iter_log_lines(s, self.storage, opts) for s in unit.sources], self.settings
        )

    def program(self, ctx: TaskContext, lines: Iterable[str], source: str) -> Program[list[Row]]:
        s = self.settings
        parser = s.parser()
        stride = ctx.stride
        rows: list[Row] = []
        window = _Window(0, 0)
        pending: list[int] = []
        bucket: int | None = None
        last_ts: float | None = None
        has_text = False

        def flush(whole_chunks: bool) -> Program[None]:
            # Feed whole stride-sized chunks as lines arrive; the remainder only when a window closes.
            n = len(pending) // stride * stride if whole_chunks else len(pending)
            if n:
                window.feed_seconds += yield from ctx.feed(pending[:n])
                del pending[:n]

        def close() -> Program[None]:
            nonlocal window
            yield from flush(whole_chunks=False)
            if window.stats.lines == 0:
                return
            st = window.stats
            top = st.top_templates(s.top_templates)
            fmt = parser.format.name
            facts = statistics_text(st, s.alert_rule or parser.format.alert_text, s.top_templates)
            prompt = _prompt(s.report_prompt, window, source, top, fmt, facts)
            result = yield from ctx.ask(prompt, s.generation)
            title = f"Incident report: {source}, window {window.index + 1} ({fmt} log)"
            span = f"{st.first_ts_text} .. {st.last_ts_text}" if st.first_ts_text else None
            row = yield from ctx.row(
                "window",
                segment_index=window.index,
                segment_title=span,
                token_start=window.start,
                token_end=window.start + window.tokens,
                output_text=result.text,
                stop_reason=result.stop_reason,
                log_lines=st.lines,
                log_levels=st.level_counts(),
                log_top_templates=[{"template": t, "count": n} for t, n in top],
                log_first_timestamp=st.first_ts_text,
                log_last_timestamp=st.last_ts_text,
                log_alert_lines=st.alerts,
                log_out_of_order_lines=st.out_of_order,
                log_format=fmt,
                log_notable_templates=template_rows(st.notable_templates(s.top_templates)),
                log_bursts=burst_rows(st.bursts()),
                log_report=render_report(title, facts, result.text, str(ctx.env.columns["model"])),
                feed_seconds=window.feed_seconds,
                generate_seconds=result.seconds,
            )
            rows.append(row)
            window = _Window(window.index + 1, ctx.tokens)

        iterator = iter(lines)
        stop = False
        detect = s.format == "auto"
        while not stop:
            batch = list(islice(iterator, BATCH_LINES))
            if not batch:
                break
            if detect:  # the stream's format, from its first lines
                parser.format = detect_format(batch)
                detect = False
            encoded = ctx.encode_batch([line + "\n" for line in batch])
            for line, ids in zip(batch, encoded):
                parsed = parser.parse(line)
                ts = parsed.ts if parsed.ts is not None else last_ts
                if s.window_seconds and ts is not None:
                    b = math.floor(ts / s.window_seconds)
                    if bucket is not None and b > bucket:
                        yield from close()
                    bucket = b if bucket is None else max(bucket, b)
                fit, full = ctx.fit(ids, pending=len(pending))
                if full and not fit:
                    ctx.truncated = stop = True
                    break
                if len(fit) < len(ids):
                    ids = fit
                    ctx.truncated = stop = True
                has_text = has_text or bool(line.strip())
                window.stats.add(parsed)
                pending.extend(ids)
                window.tokens += len(ids)
                last_ts = ts
                yield from flush(whole_chunks=True)
                if s.window_tokens and window.tokens >= s.window_tokens:
                    yield from close()
                if stop:
                    break
        if not has_text:
            raise InputError(
                "empty", f"{source}: empty log (no lines with text); remove it or check the path."
            )
        yield from close()
        return rows
