"""Streams keyed by a regex match in each line, gathered and time-sorted by a Ray Data shuffle.

Contract: ``line_grouped_dataset(grouping, sources)`` (``LineGrouping.dataset``, what the driver calls) reads
every source file incrementally in Ray Data tasks, tags each line with its key (``grouping.key_pattern``;
lines without one get ``_unmatched``) and its timestamp (a line without one takes the timestamp of the line
before), then ``groupby(key)`` gathers each key's lines sorted by (time, file, line number). Every key becomes
one row: a ``StreamTask`` (JSON, column ``task``) plus its lines (column ``lines``), what the stream worker
takes. A file that cannot be read becomes a group of its own carrying its ``InputError``, so it ends up as
that file's error row. The dataset is materialized before the model actors start, so the two stages never
compete for the same CPUs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from actors.tasks.logs.stats import LogParser, compile_key_pattern, extract_key
from pipeline.inputs.readers import iter_log_lines
from pipeline.inputs.sources import InputError, ReadOptions, SourceFile
from pipeline.job.plan import MAX_BLOCKS, StreamTask
from pipeline.storage import Storage

BATCH_LINES = 4096
ERROR_KEY = "\x00error:"


@dataclass(frozen=True)
class LineGrouping:
    """How a task wants its lines grouped (a task returns one from ``line_grouping()``)."""

    task: str
    key_pattern: str
    timestamp_pattern: str | None = None
    timestamp_format: str | None = None

    def dataset(self, sources: list[SourceFile], storage: Storage | None, opts: ReadOptions) -> Any:
        """``pipeline.job.plan.GroupedInput``: the shuffled dataset, one row per key."""
        return line_grouped_dataset(self, sources, storage, opts)


def _read_keyed_lines(
    batch: dict[str, Any], grouping: LineGrouping, storage: Storage | None, opts: ReadOptions
) -> Iterator[dict[str, list[Any]]]:
    """Ray Data UDF: one source file -> batches of (key, ts, file, line_no, line), read incrementally."""
    pattern = compile_key_pattern(grouping.key_pattern)
    for raw, index in zip(batch["source"], batch["index"]):
        src = SourceFile.from_dict(json.loads(str(raw)))
        parser = LogParser(
            timestamp_pattern=grouping.timestamp_pattern, timestamp_format=grouping.timestamp_format
        )
        out: dict[str, list[Any]] = {"key": [], "ts": [], "file": [], "line_no": [], "line": [], "uri": []}
        last = -math.inf
        try:
            for number, line in enumerate(iter_log_lines(src, storage, opts)):
                ts = parser.timestamp(line)[0]
                last = ts if ts is not None else last
                key = extract_key(pattern, line)
                for col, value in zip(out, (key or "_unmatched", last, int(index), number, line, src.uri)):
                    out[col].append(value)
                if len(out["line"]) >= BATCH_LINES:
                    yield out
                    out = {c: [] for c in out}
        except InputError as exc:
            # The file's error travels as a group of its own and becomes that file's error row.
            message = json.dumps([exc.kind, exc.message])
            for col, value in zip(out, (ERROR_KEY + src.uri, 0.0, int(index), -1, message, src.uri)):
                out[col].append(value)
        if out["line"]:
            yield out


def _pack_group(group: Any, task_name: str, sizes: dict[str, int | None] | None = None) -> Any:
    """Ray Data UDF: all lines of one key, sorted in time order, as one row (a ``StreamTask`` + lines)."""
    import pyarrow as pa

    table = group.sort_by([("ts", "ascending"), ("file", "ascending"), ("line_no", "ascending")])
    key = table.column("key")[0].as_py()
    uris = sorted(set(table.column("uri").to_pylist()))
    sources = [SourceFile(u, size=(sizes or {}).get(u)) for u in uris]  # sizes: what checkpoints compare
    if key.startswith(ERROR_KEY):
        uri = key[len(ERROR_KEY) :]
        error = json.loads(table.column("line")[0].as_py())
        task = StreamTask(task_name, [SourceFile(uri)], stream_id=uri, error=(error[0], error[1]))
        lines: list[str] = []
    else:
        task = StreamTask(task_name, sources, stream_id=f"{task_name}:key={key}", key=key)
        lines = table.column("line").to_pylist()
    return pa.table({"task": [task.to_json()], "lines": pa.array([lines], pa.list_(pa.string()))})


def line_grouped_dataset(
    grouping: LineGrouping, sources: list[SourceFile], storage: Storage | None, opts: ReadOptions
) -> Any:
    """A materialized Ray dataset with one row per key (columns ``task`` and ``lines``)."""
    import ray.data

    items = [{"source": json.dumps(s.to_dict()), "index": i} for i, s in enumerate(sources)]
    ds: Any = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), MAX_BLOCKS)))
    reader: Any = _read_keyed_lines  # a generator UDF: Ray Data's annotations only admit plain functions
    kwargs = {"grouping": grouping, "storage": storage, "opts": opts}
    ds = ds.map_batches(reader, fn_kwargs=kwargs, batch_size=1, batch_format="numpy")
    packer: Any = _pack_group
    grouped = ds.groupby("key").map_groups(
        packer,
        fn_kwargs={"task_name": grouping.task, "sizes": {s.uri: s.size for s in sources}},
        batch_format="pyarrow",
    )
    # Shuffle fully before the model actors start, so the two stages never compete for the same CPUs.
    return grouped.materialize()
