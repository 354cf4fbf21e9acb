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
* ``GroupedInput``: what a task hands the driver when its streams gather lines by a key found in each
  line (the logs task's shuffle, ``actors.tasks.logs.shuffle``): the driver asks it for the dataset.
* ``ChapterSplitter`` turns lines into text pieces and marks chapter headings, where the text has them.

Which of these a task uses is the task's choice (``actors.tasks``): nothing here knows the tasks.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from pipeline.inputs.sources import ReadOptions, SourceFile, file_size
from pipeline.storage import Storage

log = logging.getLogger(__name__)

#: At most this many Ray Data blocks for a list of descriptors (or of files to shuffle).
MAX_BLOCKS = 20_000


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


class GroupedInput(Protocol):
    """Streams a task gathers from all its inputs by a key in each line (see the module docstring)."""

    def dataset(self, sources: list[SourceFile], storage: Storage | None, opts: ReadOptions) -> Any:
        """A materialized Ray dataset with one row per stream: columns ``task`` (a ``StreamTask``'s JSON)
        and ``lines``."""
        ...


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


def _split(
    task: str, src: SourceFile, storage: Storage | None, parts: int, min_bytes: int, single: bool
) -> list[StreamTask]:
    """Parts of one file: byte ranges of text/JSONL, row-group ranges of Parquet ([] = keep it whole).

    A text file (or a log) split this way is one stream cut into contiguous parts; a JSONL or Parquet
    file is split between its records, so each record still is one whole stream.
    """
    if src.format == "parquet" and not single:
        from pipeline.inputs.readers import parquet_row_groups
        from pipeline.inputs.sources import InputError

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
