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
  becomes one descriptor per actor, each taking every ``n``-th record (``every = (n, j)``), so
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
from dataclasses import replace
from typing import Any, Protocol

from pydantic import TypeAdapter
from pydantic.dataclasses import dataclass as pydantic_dataclass

from pipeline.config import BaseJobConfig
from pipeline.inputs.sources import ReadOptions, SourceFile, file_size
from pipeline.output.manifest import OutputState, file_spec, stream_key
from pipeline.storage import Storage

log = logging.getLogger(__name__)

#: At most this many Ray Data blocks for a list of descriptors (or of files to shuffle).
MAX_BLOCKS = 20_000


@pydantic_dataclass
class StreamTask:
    """One unit of work for an actor: one stream, or one file of records (each record a stream); typed and
    validated (a pydantic dataclass), carried to actors as JSON."""

    task: str
    sources: list[SourceFile]
    stream_id: str | None = None
    byte_range: tuple[int, int] | None = None
    part: int = 0
    parts: int = 1
    key: str | None = None
    #: this reader's share of a file's records: every ``n``-th record from ``j`` (``spread_records``)
    every: tuple[int, int] | None = None
    #: row groups ``[a, b)`` of a Parquet file (a split file of records)
    row_groups: tuple[int, int] | None = None
    #: (kind, message): the stream's input is known to be bad (a shuffle's unreadable file)
    error: tuple[str, str] | None = None

    @property
    def single_stream(self) -> bool:
        return self.stream_id is not None

    @property
    def input_bytes(self) -> int:
        """What reading this unit means in bytes of its files as stored (for progress): its byte range,
        else its files' sizes (a share of a file's records reads the whole file)."""
        if self.byte_range is not None:
            return self.byte_range[1] - self.byte_range[0]
        return sum(s.size or 0 for s in self.sources)

    @property
    def whole_file(self) -> bool:
        """The unit reads a whole file (no byte range, no row groups; a share still reads all of it)."""
        return self.byte_range is None and self.row_groups is None

    @property
    def reports_file(self) -> bool:
        """Whether a failure of the whole file is this unit's to report (of the readers sharing a file's
        records, the first: the others fail the same way)."""
        return self.every is None or self.every[1] == 0

    def records_spec(self, limit: int | None) -> str | None:
        """The ``file_spec`` of this unit's reading of a file of records (None: the unit is one stream).
        ``limit``: ``input.max_records_per_file``, which decides which records the reading holds."""
        if self.single_stream:
            return None
        src = self.sources[0]
        return file_spec(
            src.uri,
            src.size,
            every=self.every,
            byte_range=self.byte_range,
            row_groups=self.row_groups,
            limit=limit,
        )

    def to_json(self) -> str:
        return _TASK.dump_json(self).decode()

    @classmethod
    def from_json(cls, text: str) -> StreamTask:
        return _TASK.validate_json(text)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamTask:
        return _TASK.validate_python(data)


_TASK = TypeAdapter(StreamTask)


class GroupedInput(Protocol):
    """Streams a task gathers from all its inputs by a key in each line (see the module docstring)."""

    def dataset(self, sources: list[SourceFile], storage: Storage | None, opts: ReadOptions) -> Any:
        """A materialized Ray dataset with one row per stream: columns ``task`` (a ``StreamTask``'s JSON)
        and ``lines``."""
        ...


def pending_units(
    units: list[StreamTask], state: OutputState, cfg: BaseJobConfig
) -> tuple[list[StreamTask], int, int]:
    """The units the output does not hold yet -- a stream not ended (or ended in an error, with
    ``output.retry_errors``), a file of records not marked done -- and how many streams and files of
    records it holds already."""
    retry, limit = cfg.output.retry_errors, cfg.input.max_records_per_file
    pending, streams, files = [], 0, 0
    for unit in units:
        spec = unit.records_spec(limit)
        if spec is None and state.is_done(stream_key(str(unit.stream_id)), retry):
            streams += 1
        elif spec is not None and state.reading_done(spec, unit.whole_file, retry):
            files += 1
        else:
            pending.append(unit)
    return pending, streams, files


def units_to_json(units: list[StreamTask]) -> str:
    """One unit of work as Ray Data carries it: a descriptor, or a bundle of small ones (a JSON list)."""
    if len(units) == 1:
        return units[0].to_json()
    return "[" + ",".join(u.to_json() for u in units) + "]"


def units_from_json(text: str) -> list[StreamTask]:
    if text.lstrip().startswith("["):
        return [StreamTask.from_dict(d) for d in json.loads(text)]
    return [StreamTask.from_json(text)]


#: A descriptor of one stream whose input is smaller than this is bundled with others (``bundle_small``).
BUNDLE_BELOW_BYTES = 4 << 20
#: Bundles per stream slot of the actor pool, at least (for balance: the last ones end close together).
BUNDLES_PER_SLOT = 4


def bundle_small(units: list[StreamTask], slots: int) -> list[list[StreamTask]]:
    """Units of work: each small one-stream descriptor (under ``BUNDLE_BELOW_BYTES``) goes into a bundle
    with others, at least ``BUNDLES_PER_SLOT`` bundles per stream slot while there are enough; the rest
    stay alone. An actor commits its rows at the end of each unit (``pipeline.output.parts``): a hundred
    thousand small files make a few hundred parts, not a hundred thousand."""
    small = [u for u in units if u.single_stream and u.input_bytes < BUNDLE_BELOW_BYTES]
    if len(small) <= slots * BUNDLES_PER_SLOT:
        return [[u] for u in units]
    count = slots * BUNDLES_PER_SLOT
    size = math.ceil(len(small) / count)
    bundles = [small[i : i + size] for i in range(0, len(small), size)]
    ids = {id(u) for u in small}
    return [[u] for u in units if id(u) not in ids] + bundles


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


def split_for_actors(
    units: list[StreamTask], actors: int, storage: Storage | None = None, min_bytes: int = 1 << 20
) -> list[StreamTask]:
    """``input.split_parts: auto`` for a task that splits by default (logs): with fewer units than actors,
    each large uncompressed text file that is one stream becomes parts in proportion to its share of the
    input (one per actor for a single file), so every actor reads; gzip files cannot be cut and stay whole."""
    if len(units) >= actors:
        return units
    total = sum(u.input_bytes for u in units) or 1
    out: list[StreamTask] = []
    for unit in units:
        src = unit.sources[0]
        parts = max(1, round(actors * unit.input_bytes / total))
        whole_text = (
            unit.single_stream and len(unit.sources) == 1 and unit.whole_file and src.format == "text"
        )
        split = _split(unit.task, src, storage, parts, min_bytes, True) if parts > 1 and whole_text else []
        out += split or [unit]
    return out


def largest_first(units: list[list[StreamTask]]) -> list[list[StreamTask]]:
    """Units by their input, largest first (Ray Data hands them out in order): the longest ones start at
    once and the last to end are small, so actors finish close together."""
    return sorted(units, key=lambda unit: -sum(u.input_bytes for u in unit))


def spread_records(tasks: list[StreamTask], ways: int) -> list[StreamTask]:
    """Each unsplit file of records as ``ways`` descriptors sharing its records (see the module docstring)."""
    if ways < 2:
        return tasks
    out: list[StreamTask] = []
    for t in tasks:
        whole_record_file = not t.single_stream and t.whole_file
        if not whole_record_file or t.every is not None:
            out.append(t)
            continue
        for phase in range(ways):
            out.append(replace(t, every=(ways, phase)))
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
            StreamTask(task, [src], None, part=i, parts=len(bounds), row_groups=b)
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
