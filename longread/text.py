"""Text utilities for programs that stream documents and ask about them: the chat frame around a streamed
document, sentences, the repeated-sentence cleanup of small models' answers, and chapter-aware pieces.

Contract:

* ``chat_frame(tokenizer)`` -> ``(prefix, suffix)``: the document flows inside one user message of the
  tokenizer's chat template; every instruction closes that message and opens the assistant's turn.
* ``sentences`` / ``drop_repeated_sentences``: sentence splitting that knows abbreviations, initials and
  list numbers, and removes verbatim repeats (greedy decoding loops), keeping the text's own separators.
* ``ChapterSplitter`` turns lines into pieces of about ``piece_chars`` characters, starting a new piece at
  every chapter heading; a piece depends only on the lines from its first on (a resumed reader gets the
  same pieces again from a piece's ``start``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

#: Stop strings besides EOS: chat models sometimes open a new turn instead of ending theirs.
STOP_STRINGS = ("<|im_end|>", "<|im_start|>", "<|endoftext|>", "</s>")

_MARK = "\u2063LONGREAD-CONTENT\u2063"


def chat_frame(
    tokenizer: Any, system_prompt: str | None = None, use_template: bool = True
) -> tuple[str, str]:
    """``(prefix, suffix)`` that put a streamed document inside one user message of the chat template.

    The prefix (system prompt, start of the user turn) is fed before the document; every instruction is
    appended to the user message and followed by the suffix (end of turn, start of the assistant's), so
    the model answers about text it was given as the user's. Models without a chat template (or
    ``use_template=False``) get ``("", "\n\nAnswer:")``, after the system prompt if one is given.
    """
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": _MARK})
    template = getattr(tokenizer, "chat_template", None) if use_template else None
    if template:
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # a template that rejects this message list: fall back to plain text
            text = ""
        if isinstance(text, str) and text.count(_MARK) == 1:
            prefix, suffix = text.split(_MARK)
            return prefix, suffix
    return (f"{system_prompt}\n\n" if system_prompt else ""), "\n\nAnswer:"


#: ., ! or ? (and closing quotes or brackets), then the whitespace that may end a sentence there.
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(\s+)")
#: Words whose period does not end a sentence (besides initials, "U.S." and list numbers: see below).
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "no", "fig", "mt", "gen", "col", "lt"}
    | {"sgt", "capt", "rev"}
)
#: Shorter sentences are never dropped ("No. No." may be meant; a loop repeats a longer one).
MIN_REPEAT_WORDS = 3


def sentences(text: str) -> list[tuple[str, str]]:
    """``text`` as (sentence, the whitespace after it) pairs, which join back to ``text``. A sentence ends
    at ., ! or ? followed by whitespace -- not after an abbreviation (Mr.), an initial or a list number
    (J., 1.) or a dotted word (U.S., e.g.)."""
    out: list[tuple[str, str]] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        words = text[start : m.start()].split()
        word = words[-1].lower() if words else ""
        if text[m.start()] == "." and (word in _ABBREVIATIONS or len(word) == 1 or "." in word):
            continue
        out.append((text[start : m.start(1)], m.group(1)))
        start = m.end()
    out.append((text[start:], ""))
    return out


def drop_repeated_sentences(text: str) -> str:
    """Drop verbatim repeats of an earlier sentence of at least ``MIN_REPEAT_WORDS`` words: small models
    under greedy decoding loop on one. Everything else, line breaks included, stays as it was."""
    seen: set[str] = set()
    kept: list[str] = []
    dropped = False
    for sentence, gap in sentences(text):
        key = " ".join(sentence.lower().split())
        if key in seen and len(key.split()) >= MIN_REPEAT_WORDS:
            dropped = True
            continue
        seen.add(key)
        kept.append(sentence + gap)
    out = "".join(kept)
    return out.rstrip() if dropped and not text[-1:].isspace() else out


# A heading line: a keyword followed by a numeral or a capitalized word ("ACT I.", "Chapter 12",
# "STAVE ONE", "Part the First"), or a bare Roman numeral ("XII."). Prose rarely fits in <= 100 characters
# starting like that; plays and novels from Project Gutenberg do.
DEFAULT_CHAPTER_PATTERN = (
    r"^\s{0,4}(?:(?:CHAPTER|Chapter|BOOK|Book|PART|Part|ACT|Act|SCENE|Scene|STAVE|Stave|CANTO|Canto)"
    r"\s+(?:[IVXLCDM]+\b|\d+\b|(?:the\s+)?[A-Z][a-z]+\b|[A-Z]+\b).*|[IVXLC]{1,7}\.?\s*|"
    r"(?:PROLOGUE|Prologue|EPILOGUE|Epilogue)\b.*)$"
)
HEADING_MAX_CHARS = 100


@dataclass
class Piece:
    """A run of whole lines; ``heading`` is set when the piece starts with a chapter heading; ``start`` is
    the position of its first line (``pieces_at``), where a resumed reader starts to get it again."""

    text: str
    heading: str | None = None
    start: Any = None


class ChapterSplitter:
    """Groups lines into pieces of about ``piece_chars``, starting a new piece at every chapter heading.

    Pieces end before a non-blank line, so runs of blank lines stay in one piece and the tokenizer sees the
    same whitespace it would see in the whole text.
    """

    def __init__(self, pattern: str | None = DEFAULT_CHAPTER_PATTERN, piece_chars: int = 2000) -> None:
        self.pattern = re.compile(pattern) if pattern else None
        self.piece_chars = piece_chars

    def is_heading(self, line: str) -> bool:
        return bool(
            self.pattern and line.strip() and len(line) <= HEADING_MAX_CHARS and self.pattern.match(line)
        )

    def pieces(self, lines: Iterable[str]) -> Iterator[Piece]:
        return self.pieces_at((None, line) for line in lines)

    def pieces_at(self, lines: Iterable[tuple[Any, str]]) -> Iterator[Piece]:
        """``pieces`` of ``(position, line)`` pairs; each piece knows its first line's position. A piece
        depends only on the lines from its first on, so pieces read again from a piece's ``start`` are the
        same pieces (what a resumed stream relies on)."""
        buf: list[str] = []
        size = 0
        heading: str | None = None
        start: Any = None
        for position, line in lines:
            if self.is_heading(line):
                if buf:
                    yield Piece("".join(buf), heading, start)
                buf, size, heading = [], 0, line.strip()
            elif size >= self.piece_chars and line.strip():
                yield Piece("".join(buf), heading, start)
                buf, size, heading = [], 0, None
            if not buf:
                start = position
            buf.append(line + "\n")
            size += len(line) + 1
        if buf:
            yield Piece("".join(buf), heading, start)
