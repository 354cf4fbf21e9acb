"""Task ``summarize``: progressive summaries of each book (``python -m jobs.summarize_books``).

Contract: the document is streamed once, in order, through the bounded cache. A segment ends at a chapter
heading (once it holds ``min_segment_tokens``; shorter chapters merge into the next) or after exactly
``segment_tokens`` tokens. At the end of every segment the model summarizes "the passage above" from a
copy of the stream's state, so the summary never enters the stream. At the end of the stream the model
writes a summary of the whole text from what the cache still holds plus the segment summaries (fed as part
of the instruction). Rows: one ``segment`` row per segment, then one ``final`` row. An input with no text
at all raises ``InputError('empty')``. Without ``input.paths`` the job reads the sample books.

Everything the program knows lives in one ``SummarizeState`` (where the next piece of text starts, the open
segment, the segment summaries the final prompt lists): a checkpoint before each piece holds it, and a
resumed stream reads on from that piece. Rows are handed over as they are made, never kept. The listed
summaries are bounded (``MAX_LISTED``): past that, every other one of the older half is dropped, so a
50 MB book's final prompt and checkpoints stay small and still cover the whole book, denser near its end
(numbered by segment, so the model sees where each comes from).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator

from actors.checkpoint import allow
from actors.tasks.base import Stream, Task, check_regex, check_template, max_new_tokens_shorthand
from longread.text import DEFAULT_CHAPTER_PATTERN, ChapterSplitter, Piece
from pipeline.config import Decoding, Section
from pipeline.inputs.readers import Document, Meter
from pipeline.inputs.sources import InputError
from pipeline.job.plan import StreamTask

if TYPE_CHECKING:  # the stream programs' side (torch) is imported by the worker, not with the settings
    from actors.context import TaskContext
    from longread.scheduler import Program

MAX_TITLES = 3


class SegmentGeneration(Decoding):
    """A segment's summary: two sentences."""

    max_new_tokens: int = Field(default=96, ge=1, description="length cap of a segment's summary")


class FinalGeneration(Decoding):
    """The whole text's summary: three to five sentences, more room to end the last one."""

    max_new_tokens: int = Field(default=192, ge=1, description="length cap of the whole text's summary")
    finish_sentence: int = Field(
        default=48,
        ge=0,
        description="extra tokens allowed to end a sentence cut at max_new_tokens (else cut back to the "
        "last sentence end); 0 = off",
    )


class SummarizeSettings(Section):
    """Progressive summaries: one per chapter or segment, then the whole text."""

    chapters: bool = Field(default=True, description="start segments at chapter headings")
    chapter_pattern: str | None = Field(
        default=None, description="regex of a heading line; None: the built-in one"
    )
    segment_tokens: int = Field(
        default=1024, ge=8, description="a segment ends at a chapter or after this many tokens"
    )
    min_segment_tokens: int = Field(default=256, ge=0, description="shorter chapters merge with the next")
    segment_prompt: str = Field(
        default="Summarize the passage above in 2 sentences.", description="instruction after each segment"
    )
    final_prompt: str = Field(
        default=(
            "Summaries of the parts of the text above, in order:\n{summaries}\n\n"
            "Now summarize the whole text in 3 to 5 sentences."
        ),
        description="instruction at the end; {summaries} = the numbered segment summaries",
    )
    segment_generation: SegmentGeneration = Field(
        default_factory=lambda: SegmentGeneration(), description="length and repetition controls of a segment"
    )
    final_generation: FinalGeneration = Field(
        default_factory=lambda: FinalGeneration(), description="the same for the final summary"
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return max_new_tokens_shorthand(
            data,
            {
                "segment_max_new_tokens": "segment_generation",
                "final_max_new_tokens": "final_generation",
            },
        )

    @model_validator(mode="after")
    def _check(self) -> SummarizeSettings:
        if self.min_segment_tokens > self.segment_tokens:
            raise ValueError(
                f"min_segment_tokens={self.min_segment_tokens} > segment_tokens={self.segment_tokens}"
            )
        check_regex(self.chapter_pattern, "chapter_pattern")
        check_template(self.final_prompt, {"summaries"}, "final_prompt")
        return self


@allow
@dataclass
class Segment:
    index: int = 0
    start: int = 0  # document token where it starts
    tokens: int = 0
    titles: list[str] = field(default_factory=list)
    feed_seconds: float = 0.0


#: At most this many segment summaries are listed in the final prompt (see the module docstring).
MAX_LISTED = 64


@allow
@dataclass
class SummarizeState:
    """All a summarize stream knows (what its checkpoints hold)."""

    position: Any = None  # where the next piece of text starts (None: the document's start)
    segment: Segment = field(default_factory=Segment)
    summaries: list[str] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)  # the segment of each listed summary
    has_text: bool = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A checkpoint of format 2 listed every summary, numbered by its place.
        state.setdefault("numbers", list(range(len(state.get("summaries", [])))))
        self.__dict__.update(state)

    def listed(self, index: int, text: str) -> None:
        """Keep segment ``index``'s summary for the final prompt (thinning the older ones past
        ``MAX_LISTED``)."""
        self.summaries.append(text)
        self.numbers.append(index)
        if len(self.summaries) > MAX_LISTED:
            half = len(self.summaries) // 2
            keep = [i for i in range(len(self.summaries)) if i >= half or i % 2 == 0]
            self.summaries = [self.summaries[i] for i in keep]
            self.numbers = [self.numbers[i] for i in keep]


class Summarize(Task):
    name = "summarize"
    job_name = "summarize_books"
    Settings = SummarizeSettings
    row_kinds = ("segment", "final")
    preview_kind = "final"
    default_config = "summarize_books.yaml"
    needs_input_paths = False

    @property
    def settings(self) -> SummarizeSettings:
        return self.cfg.summarize  # type: ignore[attr-defined]

    @classmethod
    def add_flags(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--segment-tokens", type=int, dest="summarize.segment_tokens", metavar="N")

    def streams(
        self, unit: StreamTask, lines: list[str] | None = None, meter: Meter | None = None
    ) -> Iterator[Stream]:
        for info, doc in self.documents(unit, meter):
            yield Stream(info, partial(self.program, doc=doc))

    def program(self, ctx: TaskContext, doc: Document) -> Program[None]:
        if doc.error is not None:
            raise doc.error
        st: SummarizeState = ctx.restored() or SummarizeState()
        yield from self._read(ctx, doc, st)
        if not st.has_text:
            raise InputError(
                "empty", f"{doc.source_uri}: empty document (no text); remove it or fix the export."
            )
        if st.segment.tokens > 0:
            yield from self._close(ctx, st)
        yield from self._final(ctx, st)

    def _read(self, ctx: TaskContext, doc: Document, st: SummarizeState) -> Program[None]:
        """Feed the text piece by piece from where the state says, closing a segment at a chapter heading
        (once it holds ``min_segment_tokens``) or at ``segment_tokens``; stop when the model has no room."""
        s = self.settings
        splitter = ChapterSplitter((s.chapter_pattern or DEFAULT_CHAPTER_PATTERN) if s.chapters else None)
        pieces: Iterator[Piece] = splitter.pieces_at(doc.lines_at(st.position, ctx.damage))
        for piece in pieces:
            st.position = piece.start
            yield from ctx.checkpoint(st)  # all before this piece is done: a resumed stream reads from here
            st.has_text = st.has_text or bool(piece.text.strip())
            if piece.heading and st.segment.tokens >= max(1, s.min_segment_tokens):
                yield from self._close(ctx, st)
            if piece.heading and len(st.segment.titles) < MAX_TITLES:
                st.segment.titles.append(piece.heading)
            encoded = ctx.encode(piece.text, max_tokens=ctx.room)
            ids = yield from self._feed(ctx, st, encoded)
            if ctx.room == 0:
                # Stop reading (a 10 GB file is not read to its end); flag the stream if text was left over.
                fed = encoded[: len(encoded) - len(ids)]
                ctx.truncated = (bool(ids) and ctx.left_over(piece.text, fed)) or any(
                    p.text.strip() for p in pieces
                )
                break

    def _feed(self, ctx: TaskContext, st: SummarizeState, ids: list[int]) -> Program[list[int]]:
        """Feed ``ids`` into the open segment, closing it each time it is full; what did not fit is
        returned."""
        s = self.settings
        while ids:
            fit, _ = ctx.fit(ids)
            if not fit:
                break
            seg = st.segment
            n = min(len(fit), s.segment_tokens - seg.tokens)
            seg.feed_seconds += yield from ctx.feed(ids[:n])
            seg.tokens += n
            ids = ids[n:]
            if seg.tokens >= s.segment_tokens:
                yield from self._close(ctx, st)
        return ids

    def _close(self, ctx: TaskContext, st: SummarizeState) -> Program[None]:
        """The open segment's summary row; the next segment starts at the tokens read so far."""
        s = self.settings
        seg = st.segment
        result = yield from ctx.ask(s.segment_prompt, s.segment_generation)
        yield from ctx.write(
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
        st.listed(seg.index, result.text)
        st.segment = Segment(seg.index + 1, ctx.tokens)

    def _final(self, ctx: TaskContext, st: SummarizeState) -> Program[None]:
        """The whole text's summary, from the numbered segment summaries."""
        s = self.settings
        t0 = time.perf_counter()
        listing = "\n".join(f"{n + 1}. {text}" for n, text in zip(st.numbers, st.summaries))
        result = yield from ctx.ask(s.final_prompt.format(summaries=listing), s.final_generation)
        yield from ctx.write(
            "final",
            segment_index=st.segment.index,
            segment_title="whole text" + (" (truncated)" if ctx.truncated else ""),
            token_start=0,
            token_end=ctx.tokens,
            output_text=result.text,
            stop_reason=result.stop_reason,
            feed_seconds=ctx.feed_seconds,
            generate_seconds=time.perf_counter() - t0,
        )
