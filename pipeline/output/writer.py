"""The output folder: committed Parquet parts, the state they describe, checkpoints and job records.

Contract:

* Rows live in parts, ``part-<writer>-<seq>.parquet``, each written by one actor's ``PartRoller``
  (``pipeline.output.parts``) and holding the rows of any number of streams, with its manifest in the
  footer (``pipeline.output.manifest``). ``state()`` reads the manifests back (once per part: a state
  given to it is brought up to date by the parts added since) into an ``OutputState``: which streams
  ended, how many rows of each are committed, which files of records are done. A folder of the earlier
  layout (``part-<key>.parquet`` / ``err-<key>.parquet``, one per stream) reads as ended streams.
* Writes are atomic. Locally a file is written under a hidden temporary name in the same folder, fsynced,
  then renamed over the final name. On S3 the object is uploaded in one request (PUT, or a multipart upload
  that only becomes visible when it completes). A crash leaves at most a hidden ``.tmp-*.partial`` file,
  which no reader takes for a result (its name does not end in ``.parquet``: DuckDB's ``*.parquet`` glob
  would read a hidden one) and a later run deletes once it is older than ``TMP_STALE_S`` (a younger one
  may belong to a run still writing to the same output).
* An error row that is no longer true -- its stream was retried (``output.retry_errors``) and ended
  again, or a file that failed as a whole read to its end later -- is removed by ``drop_superseded``: the
  part is rewritten without it (atomically, same name). Only the driver calls it, before and after a run,
  so no two writers rewrite one part.
* ``_jobs/<job_id>.json`` records each run's task and settings (never credentials); a run refuses an output
  folder that holds another task's results.
* ``_checkpoints/<key>.ckpt`` holds a long stream's latest checkpoint (``actors.checkpoint``), written
  atomically like a part once the rows made before it are committed, and removed once its end is.
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
import json
import logging
import os
import posixpath
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.inputs.sources import (
    ACCESS_ERRORS,
    CONNECTION_ERRORS,
    CREDENTIAL_CODES,
    is_credential_error,
    s3_error_code,
)
from pipeline.output.manifest import (
    LEGACY_NAME,
    MANIFEST_KEY,
    PART_NAME,
    OutputState,
    PartManifest,
    stream_key,
)
from pipeline.output.schema import SCHEMA, rows_to_table
from pipeline.storage import Storage, display_uri, get_fs, normalize_uri, protocol_of

log = logging.getLogger(__name__)

PART, ERR, TMP = "part-", "err-", ".tmp-"
#: Manifests read at once when a state is brought up to date (footer reads: I/O bound, on S3 too).
MANIFEST_READERS = 16
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

    def part_names(self) -> list[str]:
        """Names of the committed parts (and of files of the earlier layout), one listing."""
        return sorted(n for n in self._names() if PART_NAME.match(n) or LEGACY_NAME.match(n))

    def read_manifest(self, name: str) -> PartManifest | None:
        """A part's manifest, from its footer (None: a file of the earlier layout, or no manifest)."""
        if not PART_NAME.match(name):
            return None
        path = f"{self.root}/{name}"
        try:
            with self.fs.open(path, "rb", block_size=1 << 18) as fh:
                meta = pq.read_metadata(fh).metadata or {}
        except FileNotFoundError:
            return None
        except WRITE_ERRORS as exc:
            raise output_error(self.output, path, exc, "read") from None
        data = meta.get(MANIFEST_KEY)
        return PartManifest.from_bytes(data) if data else None

    def state(self, known: OutputState | None = None) -> OutputState:
        """The output's ``OutputState``; ``known`` (an earlier one) is updated with the parts added since."""
        state = known if known is not None else OutputState()
        new = [n for n in self.part_names() if n not in state.parts]
        if len(new) > 1:
            with ThreadPoolExecutor(min(MANIFEST_READERS, len(new))) as pool:
                manifests = list(pool.map(self.read_manifest, new))
        else:
            manifests = [self.read_manifest(n) for n in new]
        for name, manifest in zip(new, manifests):
            state.add(name, manifest)
        return state

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

    def _remove(self, path: str) -> None:
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass
        except WRITE_ERRORS as exc:
            raise output_error(self.output, path, exc, "delete in") from None

    def put_part(self, name: str, rows: list[dict[str, Any]], manifest: PartManifest) -> str:
        """Commit one part: ``rows`` with ``manifest`` in its footer, atomically; returns its URI."""
        path = f"{self.root}/{name}"
        self._put(path, _parquet_bytes(_with_manifest(rows_to_table(rows), manifest)))
        return self.uri_for(path)

    def read_legacy(self, name: str) -> pa.Table:
        """A file of the earlier layout (one stream's rows)."""
        path = f"{self.root}/{name}"
        try:
            with self.fs.open(path, "rb") as fh:
                return read_part(fh.read())
        except WRITE_ERRORS as exc:
            raise output_error(self.output, path, exc, "read") from None

    def remove_part(self, name: str) -> None:
        self._remove(f"{self.root}/{name}")

    def drop_superseded(self, state: OutputState) -> int:
        """Remove the error rows that later ends superseded (see the module docstring); returns how many
        rows went. A part left with no rows is deleted; a file of the earlier layout too."""
        dropped = 0
        for name, keys in state.superseded().items():
            path = f"{self.root}/{name}"
            if name in state.legacy:
                self._remove(path)
                dropped += 1
                continue
            try:
                with self.fs.open(path, "rb") as fh:
                    table = read_part(fh.read())
            except FileNotFoundError:
                continue
            except WRITE_ERRORS as exc:
                raise output_error(self.output, path, exc, "read") from None
            manifest = PartManifest.from_bytes((table.schema.metadata or {})[MANIFEST_KEY])
            hashes = [stream_key(s) for s in table.column("stream_id").to_pylist()]
            kinds = table.column("row_kind").to_pylist()
            keep = [not (h in keys and kind == "error") for h, kind in zip(hashes, kinds)]
            dropped += len(keep) - sum(keep)
            for key in keys:
                lo, hi, _ = manifest.streams[key]
                if lo == hi:
                    del manifest.streams[key]
                else:
                    manifest.streams[key] = [lo, hi, None]
            if not any(keep) and not manifest.streams and not manifest.files:
                self._remove(path)
            else:
                rows = table.filter(pa.array(keep)).to_pylist()
                self._put(path, _parquet_bytes(_with_manifest(rows_to_table(rows), manifest)))
            state.error_ends.pop(name, None)
        if dropped:
            log.info("removed %d error rows that later runs superseded", dropped)
        return dropped

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
        """Delete the checkpoints of streams that ended (a crash between a part and its cleanup)."""
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


def _with_manifest(table: pa.Table, manifest: PartManifest) -> pa.Table:
    return table.replace_schema_metadata({**(table.schema.metadata or {}), MANIFEST_KEY: manifest.to_bytes()})


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return bytes(sink.getvalue().to_pybytes())


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
