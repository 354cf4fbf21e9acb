"""Log analysis of one log stream: windows with an incident report and exact statistics.

Contract: lines are streamed in order through the bounded cache and cut into windows, either by tokens (a
window closes once it holds ``window_tokens``) or by time (``window_seconds`` buckets of the parsed
timestamps; lines without a timestamp belong to the window of the line before, and a line that goes back
in time stays in the current window). At each window's end the model writes an incident report from a
snapshot (restored afterwards, so reports never enter the stream) given the window's exact statistics,
which are computed without the model (``pipeline.logstats``). One ``window`` row per window.

``merge_in_time_order`` merges several files of one source (``group_by="path"``) by timestamp while
reading them incrementally, assuming each file is itself in time order (the usual case for log files).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

from actors.common import TaskContext
from pipeline.logstats import LogParser, WindowStats
from pipeline.sources import InputError

BATCH_LINES = 128


def make_parser(cfg: Any) -> LogParser:
    logs = cfg.logs
    return LogParser(
        timestamp_pattern=logs.timestamp_pattern,
        timestamp_format=logs.timestamp_format,
        level_pattern=logs.level_pattern,
        alert_pattern=logs.alert_pattern,
    )


def merge_in_time_order(sources: list[Iterator[str]], cfg: Any) -> Iterator[str]:
    """Lines of several time-ordered files, merged by timestamp, read lazily."""

    def keyed(index: int, lines: Iterator[str]) -> Iterator[tuple[float, int, int, str]]:
        parser = make_parser(cfg)
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


def analyze_lines(ctx: TaskContext, lines: Iterable[str], source: str) -> list[dict[str, Any]]:
    cfg = ctx.cfg.logs
    parser = make_parser(ctx.cfg)
    stride = ctx.engine.stride
    rows: list[dict[str, Any]] = []
    window = _Window(0, 0)
    pending: list[int] = []
    bucket: int | None = None
    last_ts: float | None = None
    has_text = False

    def flush(whole_chunks: bool) -> None:
        # Feed whole stride-sized chunks as lines arrive; the remainder only when a window closes.
        n = len(pending) // stride * stride if whole_chunks else len(pending)
        if n:
            window.feed_seconds += ctx.feed(pending[:n])
            del pending[:n]

    def close() -> None:
        nonlocal window
        flush(whole_chunks=False)
        if window.stats.lines == 0:
            return
        st = window.stats
        top = st.top_templates(cfg.top_templates)
        result = ctx.ask(_prompt(cfg.report_prompt, window, source, top), cfg.max_new_tokens)
        span = f"{st.first_ts_text} .. {st.last_ts_text}" if st.first_ts_text else None
        rows.append(
            ctx.row(
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
        )
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
            if cfg.window_seconds and ts is not None:
                b = math.floor(ts / cfg.window_seconds)
                if bucket is not None and b > bucket:
                    close()
                bucket = b if bucket is None else max(bucket, b)
            if ctx.limit is not None:
                left = ctx.limit - ctx.tokens - len(pending)
                if left <= 0:
                    ctx.truncated = stop = True
                    break
                if len(ids) > left:
                    ids = ids[:left]
                    ctx.truncated = stop = True
            has_text = has_text or bool(line.strip())
            window.stats.add(parsed)
            pending.extend(ids)
            window.tokens += len(ids)
            last_ts = ts
            flush(whole_chunks=True)
            if cfg.window_tokens and window.tokens >= cfg.window_tokens:
                close()
            if stop:
                break
    if not has_text:
        raise InputError("empty", f"{source}: empty log (no lines with text); remove it or check the path.")
    close()
    return rows
