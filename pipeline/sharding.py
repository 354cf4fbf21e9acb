"""Sharding a corpus into continuous streams, and streams into segments.

Contract:

* ``StreamTask`` is what travels to an actor: a small JSON-able descriptor (source URIs, an optional byte
  range, a log group key), never the data; the actor reads the data itself, incrementally.
* ``plan_files``: a text file is one stream; a JSONL/Parquet file is one task whose records are streams
  when ``records_are_streams`` (their ids are only known once read, so the actor checks each against the
  output before processing it), else the whole file is one stream (logs). With ``split_parts > 1`` an
  uncompressed text file of at least ``min_split_bytes`` becomes that many contiguous byte ranges (aligned
  to lines by the reader), processed in parallel as separate streams; a JSONL file of records is split the
  same way between records (named by byte offset then), a Parquet file by row groups.
* ``spread_records``: when there are fewer descriptors than stream slots, each unsplit file of records
  becomes one descriptor per actor, each taking every ``n``-th record (``extra['every'] = [n, j]``), so
  one JSONL/Parquet file's records run on all actors at once; every reader reads the file, parsing only
  its own records, and records keep their names (``#record=N``, ``#id=X``).
* ``group_by_path_key``: one stream per key found by a regex in the file paths (e.g. a host's rotated
  logs); the actor merges the files of a key. Grouping by a key in each line needs a shuffle instead
  (``pipeline.shuffle``).
* ``ChapterSplitter`` turns lines into text pieces and marks chapter headings, where the text has them.

Which of these a task uses is the task's choice (``actors.tasks``): nothing here knows the tasks.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.fs import Storage
from pipeline.logstats import compile_key_pattern, extract_key
from pipeline.sources import SourceFile, file_size

log = logging.getLogger(__name__)

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
class StreamTask:
    """One unit of work for an actor: one stream, or one file of records (each record a stream)."""

    task: str
    sources: list[SourceFile]
    stream_id: str | None = None
    byte_range: tuple[int, int] | None = None
    part: int = 0
    parts: int = 1
    key: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def single_stream(self) -> bool:
        return self.stream_id is not None

    def to_json(self) -> str:
        return json.dumps(
            {
                "task": self.task,
                "sources": [s.to_dict() for s in self.sources],
                "stream_id": self.stream_id,
                "byte_range": list(self.byte_range) if self.byte_range else None,
                "part": self.part,
                "parts": self.parts,
                "key": self.key,
                "extra": self.extra,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> StreamTask:
        data = json.loads(text)
        byte_range = data.get("byte_range")
        return cls(
            task=data["task"],
            sources=[SourceFile.from_dict(s) for s in data["sources"]],
            stream_id=data.get("stream_id"),
            byte_range=(int(byte_range[0]), int(byte_range[1])) if byte_range else None,
            part=int(data.get("part", 0)),
            parts=int(data.get("parts", 1)),
            key=data.get("key"),
            extra=data.get("extra") or {},
        )


def split_ranges(size: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous byte ranges covering ``[0, size)``."""
    step = max(1, math.ceil(size / max(1, parts)))
    return [(start, min(size, start + step)) for start in range(0, size, step)]


def plan_files(
    task: str,
    sources: list[SourceFile],
    *,
    storage: Storage | None = None,
    split_parts: int = 1,
    min_split_bytes: int = 1 << 20,
    records_are_streams: bool = True,
) -> list[StreamTask]:
    """One descriptor per file (or per part of a split file); see the module docstring."""
    tasks: list[StreamTask] = []
    for src in sources:
        if src.error:
            tasks.append(StreamTask(task, [src], stream_id=src.uri))
            continue
        single = src.format == "text" or not records_are_streams
        if split_parts > 1:
            parts = _split(task, src, storage, split_parts, min_split_bytes, single)
            if parts:
                tasks += parts
                continue
        tasks.append(StreamTask(task, [src], stream_id=src.uri if single else None))
    return tasks


def spread_records(tasks: list[StreamTask], ways: int) -> list[StreamTask]:
    """Each unsplit file of records as ``ways`` descriptors sharing its records (see the module docstring)."""
    if ways < 2:
        return tasks
    out: list[StreamTask] = []
    for t in tasks:
        whole_record_file = not t.single_stream and t.byte_range is None and "row_groups" not in t.extra
        if not whole_record_file or "every" in t.extra:
            out.append(t)
            continue
        for phase in range(ways):
            out.append(replace(t, extra={**t.extra, "every": [ways, phase]}))
    return out


def group_by_path_key(task: str, sources: list[SourceFile], key_pattern: str) -> list[StreamTask]:
    """One stream per key that ``key_pattern`` finds in the paths (a path without one is its own stream)."""
    pattern = compile_key_pattern(key_pattern)
    tasks: list[StreamTask] = []
    groups: dict[str, list[SourceFile]] = {}
    for src in sources:
        if src.error:
            tasks.append(StreamTask(task, [src], stream_id=src.uri))
            continue
        key = extract_key(pattern, src.uri)
        if key is None:
            log.warning(
                "no key in %s for key_pattern %r: it forms a stream of its own", src.display, key_pattern
            )
            key = src.uri
        groups.setdefault(key, []).append(src)
    for key, group in groups.items():
        tasks.append(StreamTask(task, group, stream_id=f"{task}:key={key}", key=key))
    return tasks


def _split(
    task: str, src: SourceFile, storage: Storage | None, parts: int, min_bytes: int, single: bool
) -> list[StreamTask]:
    """Parts of one file: byte ranges of text/JSONL, row-group ranges of Parquet ([] = keep it whole).

    A text file (or a log) split this way is one stream cut into contiguous parts; a JSONL or Parquet
    file is split between its records, so each record still is one whole stream.
    """
    if src.format == "parquet" and not single:
        from pipeline.readers import parquet_row_groups
        from pipeline.sources import InputError

        try:
            rows = parquet_row_groups(src, storage)
        except InputError:
            return []  # the actor reading it whole reports the error
        n = min(parts, len(rows))
        if n < 2:
            return []
        edges = [i * len(rows) // n for i in range(n + 1)]
        bounds = list(itertools.pairwise(edges))
        return [
            StreamTask(task, [src], None, part=i, parts=len(bounds), extra={"row_groups": list(b)})
            for i, b in enumerate(bounds)
        ]
    if src.format == "parquet":
        return []
    if src.compression is not None:
        log.warning("%s is compressed: it cannot be split into byte ranges, reading it whole", src.display)
        return []
    size = file_size(src, storage)
    if size is None or size < min_bytes:
        return []
    ranges = split_ranges(size, parts)
    return [
        StreamTask(
            task,
            [src],
            f"{src.uri}#bytes={r[0]}-{r[1]}" if single else None,
            r,
            part=i,
            parts=len(ranges),
        )
        for i, r in enumerate(ranges)
    ]


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
