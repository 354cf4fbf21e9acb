"""Atomic per-stream Parquet parts and the resume check.

Contract:

* Every stream's rows go to one file named after a hash of its stream id: ``part-<hash>.parquet`` when the
  stream succeeded, ``err-<hash>.parquet`` when it ended in an error row. A stream therefore has at most one
  file, whichever run wrote it, and a rewrite replaces it instead of adding a second.
* Writes are atomic. Locally the file is written under a hidden temporary name in the same folder, fsynced,
  then renamed over the final name. On S3 the object is uploaded in one request (PUT, or a multipart upload
  that only becomes visible when it completes). A crash leaves at most a hidden ``.tmp-*.partial`` file,
  which no reader takes for a result (its name does not end in ``.parquet``: DuckDB's ``*.parquet`` glob
  would read a hidden one) and a later run deletes once it is older than ``TMP_STALE_S`` (a younger one
  may belong to a run still writing to the same output).
* Resume: ``done()`` lists the folder once; a stream whose hash is there is skipped. Error streams count as
  done unless ``retry_errors``; when a retried stream then succeeds its ``err-`` file is removed after the
  ``part-`` file is in place.
* ``_jobs/<job_id>.json`` records each run's task and settings (never credentials); a run refuses an output
  folder that holds another task's results.
* ``_checkpoints/<hash>.ckpt`` holds a long stream's latest checkpoint (``actors.checkpoint``), written
  atomically like a part and removed once the stream's part is written.
* A write that fails (a full disk, a read-only or unwritable folder, S3 refusing the credentials) raises
  ``OutputError``: one message naming the output, the file, the cause and the fix. It leaves no temporary
  file behind (removed on the spot; after a kill, the next run deletes them).
* Reading back (``read``, ``read_results``, ``read_parquet``) goes through ``pyarrow.dataset`` with the
  output schema, so columns come in schema order whatever the files. The driver's preview, read just
  before the process exits, uses ``read_part``: synchronous, in the calling thread, from an Arrow-owned
  copy of the bytes. A scan can leave work on pyarrow's threads after it returned (apache/arrow#33975),
  and work that touches Python memory needs the GIL; if the interpreter is exiting by then, that thread
  aborts the process (``terminate called without an active exception``, exit 134: the driver's abort
  after writing all its results). ``benchmarks/bench_parquet_exit.py`` counts it (BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import posixpath
import time
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.storage import Storage, display_uri, get_fs, normalize_uri, protocol_of
from pipeline.output.schema import SCHEMA, rows_to_table
from pipeline.inputs.sources import (
    ACCESS_ERRORS,
    CONNECTION_ERRORS,
    CREDENTIAL_CODES,
    is_credential_error,
    s3_error_code,
)

log = logging.getLogger(__name__)

PART, ERR, TMP = "part-", "err-", ".tmp-"
#: A temporary file lives for one write (seconds); one older than this was left by a crash.
TMP_STALE_S = 600
JOBS_DIR = "_jobs"
CHECKPOINTS_DIR = "_checkpoints"
#: What writing to (or listing) the output may raise, besides our own errors.
WRITE_ERRORS = ACCESS_ERRORS

_CAUSES = {
    errno.ENOSPC: ("no space left on device", "free space there or set output.path to a volume with room"),
    errno.EDQUOT: ("disk quota exceeded", "free space there or set output.path to a volume with room"),
    errno.EROFS: ("read-only file system", "set output.path (--output) to a writable folder"),
    errno.EACCES: (
        "permission denied",
        "make the folder writable for the job's user or set output.path (--output) elsewhere",
    ),
    errno.EPERM: (
        "operation not permitted",
        "make the folder writable for the job's user or set output.path (--output) elsewhere",
    ),
    errno.EFBIG: ("file too large for this file system or limit", "set output.path to another volume"),
}


class OutputError(RuntimeError):
    """The output cannot be written (or listed): the job stops with this one message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def output_error(output: str, path: str | None, exc: BaseException, doing: str = "write") -> OutputError:
    """An ``OutputError`` saying which output, which file, why (from the errno or S3's code) and the fix."""
    where = display_uri(output)
    if is_credential_error(exc):
        cause = "no valid S3 credentials"
        fix = "set AWS credentials (or storage.key/secret) where the job runs"
    elif isinstance(exc, PermissionError) and protocol_of(output) != "file":
        cause = "access denied by S3"
        fix = "grant s3:PutObject, GetObject, ListBucket and DeleteObject on it, or use another output"
    elif isinstance(exc, CONNECTION_ERRORS):  # refused, unreachable, timed out: after botocore's retries
        cause = f"the S3 endpoint cannot be reached ({' '.join(str(exc).split())[:200]})"
        fix = "check storage.endpoint_url (or AWS_ENDPOINT_URL) and the network, or raise storage.retries"
    elif isinstance(exc, OSError) and exc.errno in _CAUSES:
        cause, fix = _CAUSES[exc.errno]
    else:
        cause, fix = " ".join(str(exc).split())[:300] or type(exc).__name__, "check the output location"
    name = f" ({posixpath.basename(path)})" if path else ""
    fix = fix[:1].upper() + fix[1:]
    return OutputError(
        f"cannot {doing} the output {where}{name}: {cause}. {fix}; streams already written are kept, and a "
        "re-run resumes from them."
    )


def stream_key(stream_id: str) -> str:
    return hashlib.sha1(stream_id.encode("utf-8")).hexdigest()[:24]


def read_part(data: bytes) -> pa.Table:
    """One Parquet file's table from its bytes, decoded entirely in this thread (see the contract)."""
    sink = pa.BufferOutputStream()  # an Arrow-owned copy: freeing it never needs the GIL
    sink.write(data)
    # ParquetFile.read is the synchronous reader: no dataset scan, no read-ahead, nothing left running.
    return pq.ParquetFile(pa.BufferReader(sink.getvalue())).read(use_threads=False)


class PartWriter:
    def __init__(self, output: str, storage: Storage | None = None) -> None:
        self.output = normalize_uri(output)
        self.storage = storage
        self.fs, self.root = get_fs(self.output, storage)
        self.local = protocol_of(self.output) == "file"
        self.root = self.root.rstrip("/")

    # ------------------------------------------------------------------ layout
    def prepare(self) -> None:
        """Create the folder (locally), or check that the bucket exists (S3), with a clear error."""
        if self.local:
            try:
                os.makedirs(self.root, exist_ok=True)
            except OSError as exc:
                raise output_error(self.output, None, exc, "create") from None
            return
        bucket = self.root.split("/", 1)[0]
        try:
            self.fs.ls(bucket, detail=False)  # (fs.exists would say False for missing credentials too)
            exists = True
        except FileNotFoundError:
            exists = False
        except PermissionError as exc:
            if s3_error_code(exc) in CREDENTIAL_CODES:
                raise output_error(self.output, None, exc, "reach") from None
            exists = True  # listing may be denied while writing is allowed: let the first write decide
        except WRITE_ERRORS as exc:  # no credentials, the endpoint unreachable ...
            raise output_error(self.output, None, exc, "reach") from None
        if not exists:
            raise FileNotFoundError(
                f"output bucket {bucket!r} does not exist; create it or set output.path to another location."
            )

    def path_for(self, stream_id: str, error: bool = False) -> str:
        return f"{self.root}/{ERR if error else PART}{stream_key(stream_id)}.parquet"

    def uri_for(self, path: str) -> str:
        return path if self.local else f"{protocol_of(self.output)}://{path}"

    def _names(self, folder: str | None = None) -> list[str]:
        folder = folder or self.root
        self.fs.invalidate_cache(folder)
        try:
            entries = self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return []
        except WRITE_ERRORS as exc:
            raise output_error(self.output, None, exc, "list") from None
        return [posixpath.basename(str(e).rstrip("/")) for e in entries]

    def listing(self) -> dict[str, set[str]]:
        """Hashes of streams with a ``part`` (succeeded) or ``err`` (error row) file."""
        out: dict[str, set[str]] = {"part": set(), "err": set()}
        for name in self._names():
            if name.endswith(".parquet"):
                for prefix, kind in ((PART, "part"), (ERR, "err")):
                    if name.startswith(prefix):
                        out[kind].add(name[len(prefix) : -len(".parquet")])
        return out

    def done(self, retry_errors: bool = False) -> set[str]:
        listing = self.listing()
        for key in listing["part"] & listing["err"]:  # a retry succeeded but its err- file outlived a crash
            self._remove(f"{self.root}/{ERR}{key}.parquet")
        return listing["part"] if retry_errors else listing["part"] | listing["err"]

    def cleanup_tmp(self, older_than: float = TMP_STALE_S) -> int:
        """Delete temporary files a crashed run left behind (older than ``older_than`` seconds: a younger
        one may be another live run's write in progress); returns how many."""
        if not self.local:
            return 0
        removed = 0
        now = time.time()
        for folder in (self.root, f"{self.root}/{JOBS_DIR}", f"{self.root}/{CHECKPOINTS_DIR}"):
            for name in self._names(folder):
                path = f"{folder}/{name}"
                with contextlib.suppress(OSError):
                    if name.startswith(TMP) and now - os.path.getmtime(path) >= older_than:
                        self._remove(path)
                        removed += 1
        if removed:
            log.info("removed %d temporary files left by an interrupted run in %s", removed, self.output)
        return removed

    # ------------------------------------------------------------------ writing
    def _put(self, path: str, data: bytes, fsync: bool = True) -> None:
        """Write ``path`` atomically; ``OutputError`` (and no temporary file left) if it cannot be done."""
        try:
            if self.local:
                folder = posixpath.dirname(path)
                os.makedirs(folder, exist_ok=True)
                tmp = f"{folder}/{TMP}{uuid.uuid4().hex}-{posixpath.basename(path)}.partial"
                try:
                    with open(tmp, "wb") as fh:
                        fh.write(data)
                        fh.flush()
                        if fsync:
                            os.fsync(fh.fileno())
                    os.replace(tmp, path)  # atomic on POSIX: the old name or the complete new file
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
            else:
                self.fs.pipe_file(path, data)  # one object, visible only once fully uploaded
        except WRITE_ERRORS as exc:
            raise output_error(self.output, path, exc) from None

    def remove_error(self, stream_id: str) -> bool:
        """Delete the stream's error part if it has one (its error no longer holds); True if it had."""
        path = self.path_for(stream_id, error=True)
        try:
            if not self.fs.exists(path):
                return False
        except WRITE_ERRORS as exc:
            raise output_error(self.output, path, exc, "list") from None
        self._remove(path)
        return True

    def _remove(self, path: str) -> None:
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass
        except WRITE_ERRORS as exc:
            raise output_error(self.output, path, exc, "delete in") from None

    def write(self, stream_id: str, rows: list[dict[str, Any]]) -> str:
        """Write all rows of one stream atomically; returns the file's URI."""
        if not rows:
            raise ValueError(f"no rows to write for stream {stream_id!r}")
        table = rows_to_table(rows)
        error = all(r.get("row_kind") == "error" for r in rows)
        path = self.path_for(stream_id, error)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        self._put(path, sink.getvalue().to_pybytes())
        if not error:
            self._remove(self.path_for(stream_id, error=True))
        return self.uri_for(path)

    def write_job_record(self, job_id: str, record: dict[str, Any], last: bool = False) -> None:
        """Replace the run's record atomically. ``last``: a run's final record -- on a full disk, where no
        temporary copy fits, it overwrites the old record in place (freeing its space first), and if even
        that does not fit (a failed run's record is longer: it carries the error), without the config, so
        that the state and the error are what survives."""
        path = f"{self.root}/{JOBS_DIR}/{job_id}.json"
        data = json.dumps(record, indent=2, default=str).encode()
        try:
            self._put(path, data, fsync=False)
        except OutputError:
            if not (last and self.local and os.path.exists(path)):
                raise
            compact = {**record, "config": "omitted: the output was full"}
            for attempt in (data, json.dumps(compact, default=str).encode()):
                try:
                    with open(path, "wb") as fh:
                        fh.write(attempt)
                    return
                except OSError as exc:
                    error = exc
            raise output_error(self.output, path, error) from None

    def job_records(self) -> list[dict[str, Any]]:
        folder = f"{self.root}/{JOBS_DIR}"
        records = []
        for name in sorted(self._names(folder)):
            if name.endswith(".json") and not name.startswith(TMP):
                try:
                    records.append(json.loads(self.fs.cat_file(f"{folder}/{name}")))
                except (OSError, ValueError):
                    log.warning("ignoring unreadable job record %s", name)
        return records

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_path(self, stream_id: str) -> str:
        return f"{self.root}/{CHECKPOINTS_DIR}/{stream_key(stream_id)}.ckpt"

    def write_checkpoint(self, stream_id: str, data: bytes) -> None:
        """Replace the stream's checkpoint atomically (``OutputError`` if it cannot be written)."""
        self._put(self.checkpoint_path(stream_id), data, fsync=False)

    def read_checkpoint(self, stream_id: str) -> bytes | None:
        """The stream's checkpoint, or None when it has none (or it cannot be read: then it starts over)."""
        path = self.checkpoint_path(stream_id)
        try:
            return bytes(self.fs.cat_file(path))
        except FileNotFoundError:
            return None
        except WRITE_ERRORS as exc:
            log.warning("checkpoint %s cannot be read (%s); the stream starts over", path, exc)
            return None

    def remove_checkpoint(self, stream_id: str) -> None:
        self._remove(self.checkpoint_path(stream_id))

    def checkpoint_keys(self) -> set[str]:
        """``stream_key`` of every stream that has a checkpoint (one listing)."""
        folder = f"{self.root}/{CHECKPOINTS_DIR}"
        return {n[: -len(".ckpt")] for n in self._names(folder) if n.endswith(".ckpt")}

    def remove_stale_checkpoints(self, done: set[str]) -> int:
        """Delete the checkpoints of streams that are done (a crash between a part and its cleanup)."""
        stale = self.checkpoint_keys() & done
        for key in stale:
            self._remove(f"{self.root}/{CHECKPOINTS_DIR}/{key}.ckpt")
        return len(stale)

    def check_task(self, task: str, records: list[dict[str, Any]] | None = None) -> None:
        """Refuse an output that holds another task's results (``records``: ``job_records()``, if read)."""
        for record in self.job_records() if records is None else records:
            if record.get("task") not in (None, task):
                raise ValueError(
                    f"output {display_uri(self.output)} holds results of task {record.get('task')!r}, not "
                    f"{task!r}; point output.path at another folder."
                )

    # ------------------------------------------------------------------ reading
    def files(self) -> list[str]:
        return sorted(
            f"{self.root}/{n}" for n in self._names() if n.endswith(".parquet") and n.startswith((PART, ERR))
        )

    def read(self, limit_files: int | None = None) -> pa.Table:
        """All rows written so far (or those of the first ``limit_files`` files), in schema order."""
        return _read(self.files()[:limit_files], self.fs)


def _read(paths: list[str], fs: Any) -> pa.Table:
    if not paths:
        return SCHEMA.empty_table()
    return ds.dataset(paths, schema=SCHEMA, format="parquet", filesystem=fs).to_table()


def read_parquet(uris: list[str], storage: Storage | None = None) -> pa.Table:
    """The rows of some result files (URIs on one filesystem), in schema order."""
    if not uris:
        return SCHEMA.empty_table()
    fs = get_fs(uris[0], storage)[0]
    return _read([get_fs(uri, storage)[1] for uri in uris], fs)


def read_results(output: str, storage: Storage | None = None) -> pa.Table:
    return PartWriter(output, storage).read()
