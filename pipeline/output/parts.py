"""An actor's rows, committed as they are made: rolling Parquet parts that many streams share.

Contract:

* ``PartRoller`` collects the rows of every stream one actor runs and commits them as one Parquet part,
  ``part-<writer>-<seq>.parquet``, when the rows waiting reach ``max_rows`` rows, ``max_bytes`` bytes (an
  estimate of their text), when the oldest row of a stream still running waited ``max_age_s`` seconds,
  when the oldest of all (rows and ends of streams that ended) waited ``max_done_age_s``, or when a
  caller asks (``flush``: a call's last stream ended). A commit is one atomic write
  (``PartWriter.put_part``): its rows are in the output once, or not at all. A long stream's rows are
  readable within ``max_age_s`` of being made; many small streams, each ended within moments, share a
  part of up to ``max_done_age_s`` (a hundred thousand records make tens of parts, not thousands).
* The part's footer carries its manifest (``pipeline.output.manifest``): the rows of each stream it holds,
  which streams ended in it and how, and the files whose records were all read and ended.
* A stream is done exactly when the part holding its end is committed: ``end`` returns a Future resolved
  with the part's URI then. ``after(key, rows, fn)`` runs ``fn`` once the stream's first ``rows`` rows are
  committed (right away if they are): a checkpoint is written only when every row made before it is in
  the output, so a resumed stream never misses a row, and skips (by ``row_index``) those it makes again.
* Commits run in one thread, in order, so whatever was added before a ``flush`` is committed by it. A
  commit that fails (``OutputError``) fails every Future waiting on it and every later one: the output
  cannot be written, and the actor stops (nothing it could not write is reported done).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from pipeline.output.manifest import (
    COMMIT_BYTES,
    COMMIT_DONE_SECONDS,
    COMMIT_ROWS,
    COMMIT_SECONDS,
    ERROR,
    OK,
    PartManifest,
    stream_key,
)
from pipeline.output.writer import OutputError, PartWriter

log = logging.getLogger(__name__)


Row = dict[str, Any]


def row_bytes(row: Row) -> int:
    """About what a row weighs in a part: its text, plus a fixed cost for the rest."""
    return 256 + sum(len(v) for v in row.values() if isinstance(v, str))


#: Parts sealed but not yet committed, at most (then ``add`` waits: memory stays bounded if the output is
#: slower than the streams).
MAX_SEALED = 2


@dataclass(eq=False)
class _Pending:
    """What one part will hold."""

    rows: list[Row] = field(default_factory=list)
    bytes: int = 0
    since: float | None = None  # when its oldest row (or end) was added (monotonic)
    #: streams that have rows here and had not ended: when the first of those rows was added
    running: dict[str, float] = field(default_factory=dict)
    streams: dict[str, list[Any]] = field(default_factory=dict)  # key -> [lo, hi, end]
    files: dict[str, int] = field(default_factory=dict)
    waiters: list[Future[str]] = field(default_factory=list)  # ends and flushes it resolves
    #: per stream, the callback to run once this part is committed (a newer one replaces an older: a
    #: newer checkpoint is as safe to write once this part is in, and makes the older useless)
    after: dict[str, Callable[[], None]] = field(default_factory=dict)
    committed: bool = False

    @property
    def empty(self) -> bool:
        return not self.rows and not self.streams and not self.files

    def touch(self, lock: threading.Condition) -> None:
        """Something was added: the part's age starts with its first addition (the commit thread, which
        may be waiting without a timeout, learns when it is due)."""
        if self.since is None:
            self.since = time.monotonic()
            lock.notify_all()

    def due(self, max_age_s: float, max_done_age_s: float) -> float | None:
        """When the part is to be committed by age (monotonic; None: nothing waits)."""
        if self.since is None:
            return None
        done = self.since + max_done_age_s
        return min(done, min(self.running.values()) + max_age_s) if self.running else done


class PartRoller:
    def __init__(
        self,
        store: PartWriter,
        writer: str,
        *,
        job: str = "",
        max_rows: int = COMMIT_ROWS,
        max_bytes: int = COMMIT_BYTES,
        max_age_s: float = COMMIT_SECONDS,
        max_done_age_s: float = COMMIT_DONE_SECONDS,
    ) -> None:
        self.store, self.writer, self.job = store, writer, job
        self.max_rows, self.max_bytes, self.max_age_s = max_rows, max_bytes, max_age_s
        self.max_done_age_s = max(max_age_s, max_done_age_s)
        self.seq = 0
        self.committed_rows = 0
        self._pending = _Pending()
        self._sealed: deque[tuple[int, _Pending]] = deque()
        #: per stream key: the last part that holds rows of it (its checkpoints wait for that one)
        self._holding: dict[str, _Pending] = {}
        self._lock = threading.Condition()
        self._failed: OutputError | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="longread-commit", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ what streams hand in
    def add(self, key: str, row: Row) -> None:
        """One row of stream ``key``; its ``row_index`` is the stream's next (rows come in order)."""
        with self._lock:
            self._check()
            p = self._pending
            index = int(row["row_index"])
            span = p.streams.get(key)
            if span is None:
                p.streams[key] = [index, index + 1, None]
            else:
                span[1] = index + 1
            p.rows.append(row)
            p.bytes += row_bytes(row)
            p.touch(self._lock)
            if key not in p.running:
                p.running[key] = time.monotonic()
                self._lock.notify_all()  # the commit thread's next due time may be sooner now
            self._holding[key] = p
            if len(p.rows) >= self.max_rows or p.bytes >= self.max_bytes:
                self._seal()
                while len(self._sealed) > MAX_SEALED and self._failed is None:
                    self._lock.wait()  # the output is slower than the streams: wait for it
                self._check()

    def end(self, key: str, ok: bool, error_row: Row | None = None, rows: int = 0) -> Future[str]:
        """Stream ``key`` ended (``ok``, or with ``error_row``, its last row); ``rows``: the rows it made
        (its ``row_index`` range). The Future resolves with the part's URI once the end is committed."""
        future: Future[str] = Future()
        with self._lock:
            self._check()
            p = self._pending
            span = p.streams.setdefault(key, [rows, rows, None])
            span[2] = OK if ok else ERROR
            p.running.pop(key, None)  # its rows wait no longer than the ended streams' now
            if error_row is not None:
                p.rows.append(error_row)
                p.bytes += row_bytes(error_row)
            p.touch(self._lock)
            p.waiters.append(future)
            self._holding.pop(key, None)
        return future

    def file_done(self, spec: str, errors: int) -> None:
        """Every record of ``spec`` was read and its stream ended (``errors`` of them in an error): the
        mark goes into the part that commits the last of those ends, or a later one."""
        with self._lock:
            self._check()
            self._pending.files[spec] = errors
            self._pending.touch(self._lock)

    def after(self, key: str, rows: int, fn: Callable[[], None]) -> None:
        """Run ``fn`` (in the commit thread, or here) once the first ``rows`` rows of stream ``key`` are
        committed: they are in the last part holding rows of it, or committed already."""
        with self._lock:
            self._check()
            holder = self._holding.get(key)
            if rows > 0 and holder is not None and not holder.committed:
                holder.after[key] = fn
                return
        fn()

    def flush(self) -> Future[str]:
        """Commit what waits now; the Future resolves once it is committed (at once if nothing waits)."""
        future: Future[str] = Future()
        with self._lock:
            self._check()
            if self._pending.empty and not self._sealed:
                future.set_result("")
                return future
            if self._pending.empty:  # the last sealed part resolves it
                self._sealed[-1][1].waiters.append(future)
            else:
                self._pending.waiters.append(future)
                self._seal()
        return future

    def close(self) -> None:
        """Commit what waits and stop the commit thread."""
        with self._lock:
            if not self._pending.empty:
                self._seal()
            self._closed = True
            self._lock.notify_all()
        self._thread.join()

    @property
    def waiting_rows(self) -> int:
        with self._lock:
            return len(self._pending.rows) + sum(len(p.rows) for _, p in self._sealed)

    def _check(self) -> None:
        if self._failed is not None:
            raise self._failed
        if self._closed:
            raise RuntimeError("the part roller is closed")

    # ------------------------------------------------------------------ committing
    def _seal(self) -> None:
        """The pending part is complete: queue it for the commit thread (under the lock)."""
        self.seq += 1
        self._sealed.append((self.seq, self._pending))
        self._pending = _Pending()
        self._lock.notify_all()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._sealed:
                    p = self._pending
                    due = None if p.empty else p.due(self.max_age_s, self.max_done_age_s)
                    if due is not None and time.monotonic() >= due:
                        self._seal()  # its oldest row waited long enough: readable now
                        break
                    if self._closed:
                        return
                    self._lock.wait(timeout=None if due is None else max(0.0, due - time.monotonic()))
                seq, part = self._sealed[0]
            self._commit(part, seq)
            with self._lock:
                self._sealed.popleft()
                self._lock.notify_all()

    def _commit(self, part: _Pending, seq: int) -> None:
        name = f"part-{self.writer}-{seq:06d}.parquet"
        manifest = PartManifest(self.writer, seq, time.time(), self.job, part.streams, part.files)
        try:
            uri = self.store.put_part(name, part.rows, manifest)
        except Exception as exc:  # OutputError: the output cannot be written; else a bug (a bad row)
            with self._lock:
                if isinstance(exc, OutputError):
                    self._failed = exc
                waiting = [f for _, p in self._sealed for f in p.waiters] + self._pending.waiters
            for future in waiting if isinstance(exc, OutputError) else part.waiters:
                if not future.done():
                    future.set_exception(exc)
            log.log(logging.DEBUG if isinstance(exc, OutputError) else logging.ERROR,
                    "commit of %s failed", name, exc_info=exc)  # fmt: skip
            return
        with self._lock:
            part.committed = True
            self.committed_rows += len(part.rows)
        for fn in part.after.values():
            try:
                fn()
            except Exception as exc:  # a checkpoint that cannot be written: the stream's next one retries
                log.warning("after committing %s: %s", name, exc)
        for future in part.waiters:
            future.set_result(uri)


def commit_streams(
    store: PartWriter, writer: str, seq: int, streams: dict[str, list[Row]], job: str = ""
) -> str:
    """Commit whole streams as one part: each stream's rows in order (numbered ``row_index`` 0, 1, ...; an
    error row, which ends a stream that failed, last) with its end. For tools that have complete streams
    at hand (``migrate_layout``, tests, benchmarks); running actors roll their rows with ``PartRoller``."""
    rows: list[Row] = []
    spans: dict[str, list[Any]] = {}
    for stream_id, stream_rows in streams.items():
        made = [r for r in stream_rows if r.get("row_kind") != "error"]
        errors = [r for r in stream_rows if r.get("row_kind") == "error"]
        for index, row in enumerate(made + errors[-1:]):
            rows.append({**row, "row_index": index})
        spans[stream_key(stream_id)] = [0, len(made), ERROR if errors else OK]
    manifest = PartManifest(writer, seq, time.time(), job, spans)
    return store.put_part(f"part-{writer}-{seq:06d}.parquet", rows, manifest)


def migrate_layout(store: PartWriter, rows_per_part: int = COMMIT_ROWS) -> tuple[int, int]:
    """Rewrite a folder of the earlier layout (one ``part-<key>`` / ``err-<key>`` file per stream) into
    parts of about ``rows_per_part`` rows, each file deleted once the part holding its stream is committed.
    Run it while no job writes to the folder. Interrupted, it leaves a stream in both layouts at most (its
    rows twice) until run again, which finishes: a file whose stream a part holds is only deleted.
    Returns (files rewritten, parts written)."""
    state = store.state()
    writer = "m" + uuid.uuid4().hex[:11]
    batch: dict[str, list[Row]] = {}
    names: list[str] = []
    files = parts = 0

    def commit() -> None:
        nonlocal parts
        if batch:
            parts += 1
            commit_streams(store, writer, parts, dict(batch))
        for name in names:
            store.remove_part(name)
        batch.clear()
        names.clear()

    for name, key in sorted(state.legacy.items()):
        names.append(name)
        files += 1
        if state.in_parts(key):  # a part of this layout holds it already (an interrupted migration)
            continue
        table = store.read_legacy(name)
        rows = table.to_pylist()
        if rows:
            batch[str(rows[0]["stream_id"])] = rows
        if sum(len(r) for r in batch.values()) >= rows_per_part:
            commit()
    commit()
    return files, parts
