"""Streams made of several files: one per key found in the paths, their lines merged in time order.

Contract:

* ``group_by_path_key``: one stream per key that a regex finds in the file paths (e.g. a host's rotated
  logs); a path without a key is a stream of its own. (Grouping by a key in each line needs the shuffle
  instead: ``actors.tasks.logs.shuffle``.)
* ``merge_in_time_order``: the lines of a key's files merged by timestamp, read lazily, each with the
  position that resumes the merge there (what a checkpoint holds).
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable
from typing import Any

from actors.tasks.logs.stats import LogParser, compile_key_pattern, extract_key
from pipeline.inputs.readers import Damage, Position, PositionedLines
from pipeline.inputs.sources import SourceFile
from pipeline.job.plan import StreamTask

log = logging.getLogger(__name__)


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


#: Opens a line source from a position it yielded (None: its start), reporting input damage to a ``Damage``.
LineOpener = Callable[[Position, Damage | None], PositionedLines]


def merge_in_time_order(
    sources: list[LineOpener],
    make_parser: Callable[[], LogParser],
    start: Position = None,
    damage: Damage | None = None,
) -> PositionedLines:
    """Lines of several time-ordered files, merged by timestamp, read lazily.

    Each line comes with the position that resumes the merge at that line: per file, where its next line
    starts (None once it is used up), the timestamp its continuation lines carry, and the format its
    parser tries first -- the state each file's reader had when it read that next line.
    """
    heap: list[tuple[float, int, int, Any, str]] = []
    heads: list[list[Any] | None] = [None] * len(sources)  # per file: [position, last_ts, memory]
    iterators: list[PositionedLines] = []
    parsers = [make_parser() for _ in sources]
    lasts: list[float] = []
    numbers = [0] * len(sources)

    def pull(i: int) -> None:
        try:
            position, line = next(iterators[i])
        except StopIteration:
            heads[i] = None
            return
        heads[i] = [position, lasts[i], parsers[i].memory()]
        ts = parsers[i].timestamp(line)[0]
        lasts[i] = ts if ts is not None else lasts[i]  # continuation lines travel with the line before
        heapq.heappush(heap, (lasts[i], i, numbers[i], position, line))
        numbers[i] += 1

    for i, opener in enumerate(sources):
        head: list[Any] | None = start[i] if start is not None else [None, -math.inf, None]
        if head is None:  # used up before the checkpoint
            lasts.append(-math.inf)
            iterators.append(iter(()))
            continue
        lasts.append(float(head[1]))
        parsers[i].remember(head[2])
        iterators.append(opener(head[0], damage))
        pull(i)
    while heap:
        _, i, _, _, line = heapq.heappop(heap)
        yield list(heads), line  # a snapshot: pull replaces a file's head, never changes it in place
        pull(i)
