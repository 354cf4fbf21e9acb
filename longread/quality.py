"""Degenerate output, defined once: the rule every evaluation and report uses to count bad generations.

Contract: ``degeneracy(text)`` names what is wrong with one generated text, as a tuple of reasons (empty
when the text is fine):

* ``"empty"``      no word character at all;
* ``"repetition"`` more than ``REPEAT_SHARE`` (0.2) of its word 4-grams repeat an earlier 4-gram of the
  same text (words and single punctuation marks are tokens, lowercased, so "A: A: A:" and "<<<<<<<"
  loop too);
* ``"unfinished"`` it does not end a sentence (``longread.generation.ends_sentence``): cut at the token
  limit mid-sentence.

``is_degenerate(text)`` is true when any reason applies; ``degenerate_rate(texts)`` is the share of such
texts. The rule looks at the text only, so it scores any system's outputs (longread's, kvpress's, a job's
Parquet rows) the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

from longread.generation import ends_sentence

Reason = Literal["empty", "repetition", "unfinished"]
REASONS: tuple[Reason, ...] = ("empty", "repetition", "unfinished")

REPEAT_N = 4
REPEAT_SHARE = 0.2

# Han characters and kana are tokens one by one: those scripts write words without spaces between them.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(f"[{_CJK}]|[^\\W{_CJK}]+|[^\\w\\s]")


def tokens(text: str) -> list[str]:
    """Lowercased words (single Han characters and kana), and single punctuation marks."""
    return _TOKEN.findall(text.lower())


def repeated_ngram_share(text: str, n: int = REPEAT_N) -> float:
    """Share of the text's ``n``-grams that already occurred earlier in it (0 when it has none)."""
    toks = tokens(text)
    grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def degeneracy(text: str) -> tuple[Reason, ...]:
    """What makes ``text`` a degenerate generation (empty tuple: nothing)."""
    if not re.search(r"\w", text):
        return ("empty",)
    reasons: list[Reason] = []
    if repeated_ngram_share(text) > REPEAT_SHARE:
        reasons.append("repetition")
    if not ends_sentence(text.strip()):
        reasons.append("unfinished")
    return tuple(reasons)


def is_degenerate(text: str) -> bool:
    return bool(degeneracy(text))


def degenerate_rate(texts: Iterable[str]) -> float:
    """Share of degenerate texts (nan for none)."""
    flags = [is_degenerate(t) for t in texts]
    return sum(flags) / len(flags) if flags else float("nan")
