"""Progressive summarization of one book stream.

Contract: the document is streamed once, in order, through the bounded cache. A segment ends at a chapter
heading (once it holds ``min_segment_tokens``; shorter chapters merge into the next) or after exactly
``segment_tokens`` tokens. At the end of every segment the model summarizes "the passage above" from a
snapshot of the state, which is then restored, so the summary never enters the stream. At the end of the
stream the model writes a summary of the whole text from what the cache still holds plus the segment
summaries (fed as part of the instruction). Rows: one ``segment`` row per segment, then one ``final`` row.
An input with no text at all raises ``InputError('empty')``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from actors.common import TaskContext
from pipeline.sharding import DEFAULT_CHAPTER_PATTERN, ChapterSplitter, Piece
from pipeline.sources import Document, InputError

MAX_TITLES = 3


class _Segment:
    def __init__(self, index: int, start: int) -> None:
        self.index = index
        self.start = start
        self.tokens = 0
        self.titles: list[str] = []
        self.feed_seconds = 0.0


def summarize_document(ctx: TaskContext, doc: Document) -> list[dict[str, Any]]:
    s = ctx.cfg.summarize
    splitter = ChapterSplitter((s.chapter_pattern or DEFAULT_CHAPTER_PATTERN) if s.chapters else None)
    rows: list[dict[str, Any]] = []
    summaries: list[str] = []
    seg = _Segment(0, 0)
    has_text = False

    def close() -> None:
        nonlocal seg
        result = ctx.ask(s.segment_prompt, s.segment_max_new_tokens)
        rows.append(
            ctx.row(
                "segment",
                segment_index=seg.index,
                segment_title=" / ".join(seg.titles) or None,
                token_start=seg.start,
                token_end=seg.start + seg.tokens,
                output_text=result.text,
                stop_reason=result.stop_reason,
                feed_seconds=seg.feed_seconds,
                generate_seconds=result.seconds,
            )
        )
        summaries.append(result.text)
        seg = _Segment(seg.index + 1, ctx.tokens)

    pieces: Iterator[Piece] = splitter.pieces(doc.iter_lines())
    for piece in pieces:
        has_text = has_text or bool(piece.text.strip())
        if piece.heading and seg.tokens >= max(1, s.min_segment_tokens):
            close()
        if piece.heading and len(seg.titles) < MAX_TITLES:
            seg.titles.append(piece.heading)
        ids = ctx.encode(piece.text)
        while ids:
            room = ctx.room
            if room == 0:
                break
            n = min(len(ids), s.segment_tokens - seg.tokens, room if room is not None else len(ids))
            seg.feed_seconds += ctx.feed(ids[:n])
            seg.tokens += n
            ids = ids[n:]
            if seg.tokens >= s.segment_tokens:
                close()
        if ctx.room == 0:
            # Stop reading (a 10 GB file is not read to its end); flag the stream if text was left over.
            ctx.truncated = bool(ids) or any(p.text.strip() for p in pieces)
            break
    if not has_text:
        raise InputError("empty", f"{doc.source_uri}: empty document (no text); remove it or fix the export.")
    if seg.tokens > 0:
        close()
    t0 = time.perf_counter()
    listing = "\n".join(f"{i + 1}. {text}" for i, text in enumerate(summaries))
    result = ctx.ask(s.final_prompt.format(summaries=listing), s.final_max_new_tokens)
    rows.append(
        ctx.row(
            "final",
            segment_index=len(summaries),
            segment_title="whole text" + (" (truncated)" if ctx.truncated else ""),
            token_start=0,
            token_end=ctx.tokens,
            output_text=result.text,
            stop_reason=result.stop_reason,
            feed_seconds=ctx.feed_seconds,
            generate_seconds=time.perf_counter() - t0,
        )
    )
    return rows
