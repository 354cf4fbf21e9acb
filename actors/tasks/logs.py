"""Task ``logs``: windows of a log stream with an incident report and exact statistics
(``python -m jobs.analyze_logs``).

Contract: a stream is a file (``group_by: file``), the files whose paths share a key (``path``: merged in
time order while read incrementally, see ``merge_in_time_order``), or the lines that share a key
(``line``: gathered and time-sorted by the driver's shuffle). Lines are streamed in order through the
bounded cache and cut into windows, either by tokens (a window closes once it holds ``window_tokens``) or
by time (``window_seconds`` buckets of the parsed timestamps; lines without a timestamp belong to the
window of the line before, and a line that goes back in time stays in the current window). At each
window's end the model writes an incident report from a copy of the stream's state (reports never enter
the stream) given the window's exact statistics, which are computed without the model
(``pipeline.logstats``). One ``window`` row per window.
"""

from __future__ import annotations

import argparse
import heapq
import math
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Literal

from pydantic import Field, model_validator

from actors.context import Row, StreamInfo, TaskContext
from actors.tasks.base import Stream, Task, check_regex, check_template
from longread.scheduler import Program
from pipeline.config import Section
from pipeline.logstats import LogParser, WindowStats
from pipeline.readers import iter_log_lines
from pipeline.sharding import StreamTask, group_by_path_key
from pipeline.shuffle import LineGrouping
from pipeline.sources import InputError, SourceFile

BATCH_LINES = 128
LOG_PROMPT_FIELDS = {"source", "window", "lines", "first", "last", "levels", "templates", "alerts"}


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
    level_pattern: str | None = Field(default=None, description="regex with (?P<level>...)")
    alert_pattern: str | None = Field(default=None, description="regex: matching lines count as alerts")
    top_templates: int = Field(default=5, ge=1)
    report_prompt: str = (
        "The log lines above come from {source}. Window {window}: {lines} lines from {first} to {last}; "
        "levels: {levels}; alert lines: {alerts}. Most frequent messages:\n{templates}\n\n"
        "Write a short incident report for this window: what went wrong, which components are affected, "
        "and how severe it is. If nothing looks wrong, say so."
    )
    max_new_tokens: int = Field(default=96, ge=1)

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
        return self

    def parser(self) -> LogParser:
        return LogParser(
            timestamp_pattern=self.timestamp_pattern,
            timestamp_format=self.timestamp_format,
            level_pattern=self.level_pattern,
            alert_pattern=self.alert_pattern,
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


def _prompt(template: str, window: _Window, source: str, top: list[tuple[str, int]]) -> str:
    st = window.stats
    return template.format(
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
            result = yield from ctx.ask(_prompt(s.report_prompt, window, source, top), s.max_new_tokens)
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
                feed_seconds=window.feed_seconds,
                generate_seconds=result.seconds,
            )
            rows.append(row)
            window = _Window(window.index + 1, ctx.tokens)

        iterator = iter(lines)
        stop = False
        while not stop:
            batch = list(islice(iterator, BATCH_LINES))
            if not batch:
                break
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
