"""What every task shares: one engine per actor, prompt construction, feeding with a token limit, row fields.

Contract:

* ``TaskContext`` wraps the actor's ``StreamingEngine`` for one stream at a time: ``start`` resets the
  engine, ``feed`` streams document tokens (and counts them, honouring ``max_tokens_per_stream``),
  ``ask`` generates from a *snapshot* and restores it, so an instruction and its answer never enter the
  stream that continues afterwards.
* Prompts follow the tokenizer's chat template: the stream opens a user message (system prompt included),
  the document flows inside it, and each instruction ends that message and opens the assistant's turn
  (``chat_frame``); models without a template get a plain "instruction / Answer:" suffix.
* ``row`` builds an output row with the identity, model, policy, cache and timing columns filled in; tasks
  add their own columns (see ``pipeline.schema``).
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from longread.engine import GenerationResult, StreamingEngine

#: Stop strings besides EOS: chat models sometimes open a new turn instead of ending theirs.
STOP_STRINGS = ("<|im_end|>", "<|im_start|>", "<|endoftext|>", "</s>")


_MARK = "\u2063LONGREAD-CONTENT\u2063"


def chat_frame(tokenizer: Any, system_prompt: str | None = None) -> tuple[str, str]:
    """``(prefix, suffix)`` that put a streamed document inside one user message of the chat template.

    The prefix (system prompt, start of the user turn) is fed before the document; every instruction is
    appended to the user message and followed by the suffix (end of turn, start of the assistant's), so
    the model answers about text it was given as the user's. Models without a chat template get
    ``("", "\n\nAnswer:")``.
    """
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": _MARK})
    template = getattr(tokenizer, "chat_template", None)
    if template:
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # a template that rejects this message list: fall back to plain text
            text = ""
        if isinstance(text, str) and text.count(_MARK) == 1:
            prefix, suffix = text.split(_MARK)
            return prefix, suffix
    return (f"{system_prompt}\n\n" if system_prompt else ""), "\n\nAnswer:"


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def drop_repeated_sentences(text: str) -> str:
    """Drop verbatim repeats of an earlier sentence: small models under greedy decoding loop on one."""
    seen: set[str] = set()
    kept = []
    for sentence in _SENTENCE_END.split(text):
        key = " ".join(sentence.lower().split())
        if key and key in seen:
            continue
        seen.add(key)
        kept.append(sentence)
    return " ".join(kept)


@dataclass
class StreamInfo:
    """Identity of the stream being processed (goes into every row)."""

    stream_id: str
    source_uri: str
    part_index: int = 0
    part_count: int = 1
    record_id: str | None = None


class TaskContext:
    def __init__(self, engine: StreamingEngine, cfg: Any, job_id: str, model_name: str) -> None:
        self.engine = engine
        self.cfg = cfg
        self.job_id = job_id
        self.model_name = model_name
        self.tokenizer = engine.tokenizer
        self.limit: int | None = cfg.input.max_tokens_per_stream
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{engine.device}"
        self.info = StreamInfo("", "")
        self.tokens = 0
        self.truncated = False
        self.feed_seconds = 0.0
        self.started = time.perf_counter()
        self.prefix, self.suffix = chat_frame(self.tokenizer, cfg.generation.system_prompt)
        self.prefix_ids = self.encode(self.prefix) if self.prefix else []

    # ------------------------------------------------------------------ stream
    def start(self, info: StreamInfo) -> None:
        """Begin a stream: empty cache, then the chat frame's prefix (not counted as document tokens)."""
        self.engine.reset()
        self.info = info
        self.tokens = 0
        self.truncated = False
        self.feed_seconds = 0.0
        self.started = time.perf_counter()
        if self.prefix_ids:
            self.engine.feed(self.prefix_ids)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    @property
    def room(self) -> int | None:
        """Tokens left before ``max_tokens_per_stream`` (None: no limit)."""
        return None if self.limit is None else max(0, self.limit - self.tokens)

    def feed(self, ids: list[int]) -> float:
        """Stream ``ids`` (the caller has cut them to ``room``); returns the seconds it took."""
        if not ids:
            return 0.0
        t0 = time.perf_counter()
        self.engine.feed(ids)
        dt = time.perf_counter() - t0
        self.tokens += len(ids)
        self.feed_seconds += dt
        return dt

    # ------------------------------------------------------------------ model
    def prompt(self, instruction: str) -> str:
        """The instruction closing the user's message, up to where the assistant's answer starts."""
        return f"\n\n{instruction}{self.suffix}"

    def ask(self, instruction: str, max_new_tokens: int, restore: bool = True) -> GenerationResult:
        """Answer ``instruction`` about what was streamed, leaving the stream as it was (``restore``)."""
        gen = self.cfg.generation
        snap = self.engine.snapshot() if restore else None
        try:
            result = self.engine.generate(
                self.prompt(instruction),
                max_new_tokens=max_new_tokens,
                temperature=gen.temperature,
                top_p=gen.top_p,
                top_k=gen.top_k,
                stop=STOP_STRINGS,
                seed=gen.seed,
            )
        finally:
            if snap is not None:
                self.engine.restore(snap)
        result.text = result.text.strip()
        if gen.drop_repeated_sentences:
            result.text = drop_repeated_sentences(result.text)
        return result

    # ------------------------------------------------------------------ rows
    def cache_fields(self) -> dict[str, Any]:
        engine = self.engine
        layers = engine.cache.layer_stats(engine.policy.sink)
        oldest = [layer["oldest_pos"] for layer in layers if layer["oldest_pos"] >= 0]
        return {
            "cache_tokens": engine.cache.length,
            "cache_bytes": engine.cache.nbytes(),
            "cache_oldest_position": min(oldest) if oldest else None,
            "policy_stats": json.dumps(engine.policy.stats(), default=str, sort_keys=True),
        }

    def row(self, row_kind: str, **fields: Any) -> dict[str, Any]:
        policy = self.engine.policy
        elapsed = time.perf_counter() - self.started
        row: dict[str, Any] = {
            "job_id": self.job_id,
            "stream_id": self.info.stream_id,
            "source_uri": self.info.source_uri,
            "task": self.cfg.task,
            "row_kind": row_kind,
            "part_index": self.info.part_index,
            "part_count": self.info.part_count,
            "record_id": self.info.record_id,
            "model": self.model_name,
            "policy": policy.name,
            "policy_params": json.dumps(policy.params(), sort_keys=True),
            "budget": policy.budget,
            "stride": self.engine.stride,
            "tokens_streamed": self.tokens,
            "truncated": self.truncated,
            "stream_seconds": elapsed,
            "tokens_per_second": self.tokens / self.feed_seconds if self.feed_seconds > 0 else None,
            "worker": self.worker,
            "created_at": datetime.now(UTC),
        }
        if row_kind != "error":
            row.update(self.cache_fields())
        row.update(fields)
        return row

    def error_row(self, kind: str, message: str) -> dict[str, Any]:
        return self.row("error", error_kind=kind, error=message, tokens_streamed=self.tokens)
