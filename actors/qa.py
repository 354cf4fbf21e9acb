"""Question answering over one document streamed once.

Contract: the document is streamed through the bounded cache (up to ``max_tokens_per_stream``), the state
is snapshotted, and every question is answered from a fresh copy of that snapshot, so an answer (or its
question) never influences the next one. One ``answer`` row per question, in order. A document without
questions raises ``InputError('no_questions')``; one without text raises ``InputError('empty')``.
"""

from __future__ import annotations

from typing import Any

from actors.common import TaskContext
from pipeline.sharding import ChapterSplitter
from pipeline.sources import Document, InputError


def stream_document(ctx: TaskContext, doc: Document) -> bool:
    """Stream the whole document (honouring the token limit); returns whether it had any text."""
    has_text = False
    pieces = ChapterSplitter(None).pieces(doc.iter_lines())
    for piece in pieces:
        has_text = has_text or bool(piece.text.strip())
        ids = ctx.encode(piece.text)
        room = ctx.room
        if room is not None and len(ids) >= room:
            ctx.feed(ids[:room])
            ctx.truncated = len(ids) > room or any(p.text.strip() for p in pieces)
            break
        ctx.feed(ids)
    return has_text


def answer_document(ctx: TaskContext, doc: Document, questions: list[str]) -> list[dict[str, Any]]:
    if not questions:
        raise InputError(
            "no_questions",
            f"{doc.source_uri}: no questions for this document; set qa.questions, qa.questions_file or "
            "qa.question_column.",
        )
    if not stream_document(ctx, doc):
        raise InputError("empty", f"{doc.source_uri}: empty document (no text); remove it or fix the export.")
    feed_seconds = ctx.feed_seconds
    rows = []
    for index, question in enumerate(questions):
        # ask() snapshots and restores: every question starts from the same streamed state.
        result = ctx.ask(ctx.cfg.qa.prompt.format(question=question), ctx.cfg.qa.max_new_tokens)
        rows.append(
            ctx.row(
                "answer",
                segment_index=index,
                token_start=0,
                token_end=ctx.tokens,
                question=question,
                output_text=result.text,
                stop_reason=result.stop_reason,
                feed_seconds=feed_seconds,
                generate_seconds=result.seconds,
            )
        )
    return rows
