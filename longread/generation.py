"""Generation settings and per-stream decoding state, shared by every engine.

Contract:

* ``GenerationSettings`` is one stream's request: length, sampling (greedy when ``temperature == 0``,
  else temperature / top-k / top-p with a per-stream seed), repetition control (``repetition_penalty``
  over the tokens generated so far, HF semantics: positive logits divided, negative multiplied;
  ``no_repeat_ngram_size`` bans any token that would repeat an n-gram of the output), stop strings, and
  ``finish_sentence``: when ``max_new_tokens`` runs out mid-sentence, up to that many extra tokens may end
  it; if they do not, the text is cut back to its last sentence end (when it has one).
* ``Decoder`` holds one stream's decoding state. ``process`` adjusts a batch of logits rows in place for
  their decoders (vectorized: one scatter per kind of control, whatever the batch), ``choose`` picks each
  row's token (greedy rows on the logits' device, sampled rows on the CPU with the stream's own generator,
  so a stream's tokens never depend on its batch partners), and ``push`` records a token and says whether
  the stream is done. The result is a ``GenerationResult``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from longread.cache import to_device

StopReason = Literal["eos", "stop_string", "max_new_tokens", "sentence_end", "trimmed"]

# Sentence ends: . ! ? ... and the Devanagari danda, which a space or the text's end follows; the
# full-width CJK 。！？ end a sentence wherever they are (those scripts put no space after them). Closing
# quotes, brackets and markdown emphasis may follow the mark.
_CLOSERS = "[\"'\u201d\u2019)\\]\u300d\u300f\u00bb\u203a\uff09\u3011*]*"
_SPACED, _CJK_ENDS = "[.!?\u2026\u0964]", "[\u3002\uff01\uff1f]"
SENTENCE_END = re.compile(f"(?:{_SPACED}|{_CJK_ENDS}){_CLOSERS}\\s*$")
_LAST_SENTENCE_END = re.compile(f"^(.*(?:{_SPACED}{_CLOSERS}(?=\\s|$)|{_CJK_ENDS}{_CLOSERS}))", re.S)


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    stop: tuple[str, ...] = ()
    finish_sentence: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.temperature < 0:
            problems.append(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p={self.top_p} must be in (0, 1]")
        if self.top_k < 0:
            problems.append(f"top_k={self.top_k} must be >= 0 (0 = off)")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty={self.repetition_penalty} must be > 0 (1 = off)")
        if self.no_repeat_ngram_size < 0:
            problems.append(f"no_repeat_ngram_size={self.no_repeat_ngram_size} must be >= 0 (0 = off)")
        if self.finish_sentence < 0:
            problems.append(f"finish_sentence={self.finish_sentence} must be >= 0 (0 = off)")
        if problems:
            raise ValueError("bad generation settings: " + "; ".join(problems))
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)  # "END" is one stop string
        object.__setattr__(self, "stop", stop)

    def with_(self, **changes: Any) -> GenerationSettings:
        return replace(self, **changes)


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    stop_reason: StopReason
    seconds: float = 0.0


def ends_sentence(text: str) -> bool:
    return bool(SENTENCE_END.search(text))


def cut_to_sentence(text: str) -> str | None:
    """``text`` up to and including its last sentence end, or None if it has none."""
    match = _LAST_SENTENCE_END.match(text)
    return match.group(1) if match else None


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    for source in (getattr(gen, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, Iterable):
            ids.update(int(i) for i in source)
    return ids


@dataclass
class Decoder:
    """One stream's decoding state (see the module docstring)."""

    settings: GenerationSettings
    tokenizer: Any = None
    eos: set[int] = field(default_factory=set)
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    reason: StopReason | None = None
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if self.settings.seed is not None:
            self.generator = torch.Generator(device="cpu").manual_seed(self.settings.seed)

    @property
    def done(self) -> bool:
        return self.reason is not None

    @property
    def greedy(self) -> bool:
        return self.settings.temperature == 0

    # ------------------------------------------------------------------ logits
    def banned(self) -> list[int]:
        """Tokens that would repeat an n-gram of the output (``no_repeat_ngram_size``)."""
        n = self.settings.no_repeat_ngram_size
        out = self.tokens
        if n < 1 or len(out) < n:
            return []
        if n == 1:
            return sorted(set(out))
        prefix = tuple(out[len(out) - n + 1 :])
        starts = range(len(out) - n + 1)
        return sorted({out[i + n - 1] for i in starts if tuple(out[i : i + n - 1]) == prefix})

    @staticmethod
    def process(logits: torch.Tensor, decoders: Sequence[Decoder]) -> None:
        """Apply every row's repetition controls to ``logits`` (B, V) in place."""
        rows, seen, banned = [], [], []
        for row, dec in enumerate(decoders):
            if dec.settings.repetition_penalty != 1.0 and dec.tokens:
                rows.append(row)
                seen.append(sorted(set(dec.tokens)))
            bans = dec.banned()
            if bans:
                banned.append((row, bans))
        dev = logits.device
        if rows:
            width = max(len(s) for s in seen)
            ids = to_device(torch.tensor([s + s[-1:] * (width - len(s)) for s in seen]), dev)  # (R, W)
            penalty = to_device(torch.tensor([decoders[r].settings.repetition_penalty for r in rows]), dev)[
                :, None
            ]
            index = to_device(torch.tensor(rows), dev)
            sub = logits[index].gather(1, ids)  # (R, W)
            sub = torch.where(sub > 0, sub / penalty.to(sub.dtype), sub * penalty.to(sub.dtype))
            logits[index] = logits[index].scatter(1, ids, sub)
        if banned:
            r = to_device(torch.tensor([row for row, bans in banned for _ in bans]), dev)
            c = to_device(torch.tensor([t for _, bans in banned for t in bans]), dev)
            logits[r, c] = float("-inf")

    @staticmethod
    def choose(logits: torch.Tensor, decoders: Sequence[Decoder]) -> list[int]:
        """Each row's next token: greedy rows by one argmax on the device, sampled rows on the CPU."""
        tokens = logits.argmax(dim=-1).tolist()
        for row, dec in enumerate(decoders):
            if not dec.greedy:
                tokens[row] = dec.sample(logits[row])
        return [int(t) for t in tokens]

    def sample(self, logits: torch.Tensor) -> int:
        s = self.settings
        logits = logits.float().cpu() / s.temperature
        if s.top_k:
            kth = torch.topk(logits, min(s.top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if s.top_p < 1:
            sorted_p, order = probs.sort(descending=True)
            # Drop tokens once the mass before them already reaches top_p (always keep the first).
            drop = sorted_p.cumsum(0) - sorted_p >= s.top_p
            sorted_p[drop] = 0
            probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
        return int(torch.multinomial(probs, 1, generator=self.generator))

    # ------------------------------------------------------------------ stopping
    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if self.tokenizer is not None else ""

    def push(self, token: int) -> bool:
        """Record the chosen ``token``; True when the stream is done (the token is then not to be fed)."""
        s = self.settings
        if token in self.eos:
            self.reason = "eos"
            self.text = self._decode(self.tokens)
            return True
        self.tokens.append(token)
        if s.stop or s.finish_sentence:
            self.text = self._decode(self.tokens)
        if s.stop:
            hit = min((i for i in (self.text.find(x) for x in s.stop) if i >= 0), default=-1)
            if hit >= 0:
                self.text = self.text[:hit]
                self.reason = "stop_string"
                return True
        n = len(self.tokens)
        if n >= s.max_new_tokens:
            if not s.finish_sentence:
                self.reason = "max_new_tokens"
            elif ends_sentence(self.text):
                self.reason = "max_new_tokens" if n == s.max_new_tokens else "sentence_end"
            elif n >= s.max_new_tokens + s.finish_sentence:
                cut = cut_to_sentence(self.text)
                self.reason = "max_new_tokens" if cut is None else "trimmed"
                self.text = self.text if cut is None else cut
        if self.reason is not None and not (s.stop or s.finish_sentence):
            self.text = self._decode(self.tokens)
        return self.reason is not None

    def result(self, seconds: float = 0.0) -> GenerationResult:
        if self.reason is None:
            raise RuntimeError("the stream has not finished generating")
        return GenerationResult(self.text, list(self.tokens), self.reason, seconds)
