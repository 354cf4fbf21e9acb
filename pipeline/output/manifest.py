"""What the output holds: each committed part's manifest, and the output's state read back from them.

Contract:

* A part (``part-<writer>-<seq>.parquet``, ``pipeline.output.parts``) carries its ``PartManifest`` in its
  Parquet footer (key ``longread.manifest``): per stream key the rows the part holds, ``[lo, hi)`` of the
  stream's ``row_index``, and ``end`` when the stream ended in this part (``ok``, or ``error``: the stream's
  error row, then outside ``[lo, hi)``); and the input files (``FileSpec``) whose records were all read
  and ended by then, with how many of them ended in an error. Part and manifest are one atomic object: no
  state lives anywhere else.
* ``OutputState`` folds manifests together: which streams ended (the latest end wins: a retried error
  that succeeded is ``ok``), how many rows of each stream are committed (a resumed or retried stream
  skips them), which files are done. It also reads a folder of the earlier layout (one ``part-<key>`` or
  ``err-<key>`` file per stream): those streams are ended. Folding is incremental: ``add`` a part once.
* A stream key is ``stream_key(stream_id)``: a hash that names the stream in manifests and checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

#: Parquet footer key of a part's manifest.
MANIFEST_KEY = b"longread.manifest"
MANIFEST_VERSION = 1
#: Names of the parts this layout commits, and of the earlier one-file-per-stream layout.
PART_NAME = re.compile(r"^part-(?P<writer>[0-9a-z]+)-(?P<seq>\d{6,})\.parquet$")
LEGACY_NAME = re.compile(r"^(?P<kind>part|err)-(?P<key>[0-9a-f]{24})\.parquet$")

OK, ERROR = "ok", "error"

#: When an actor commits the rows it made (``output.commit_every_*``: rows, bytes of text, seconds since
#: the oldest row of a running stream waited, seconds since the oldest of streams that ended waited;
#: measured: BENCHMARKS.md, "Rows as they are made").
COMMIT_ROWS = 50_000
COMMIT_BYTES = 64 << 20
COMMIT_SECONDS = 30.0
COMMIT_DONE_SECONDS = 300.0


def stream_key(stream_id: str) -> str:
    return hashlib.sha1(stream_id.encode("utf-8")).hexdigest()[:24]


def file_spec(
    uri: str,
    size: int | None,
    *,
    every: tuple[int, int] | None = None,
    byte_range: tuple[int, int] | None = None,
    row_groups: tuple[int, int] | None = None,
    limit: int | None = None,
) -> str:
    """The name of one reading of a file of records (the whole file, every n-th record from j, a byte
    range or row groups), under the settings that decide which records it holds. A changed size is
    another file."""
    if every is not None:
        share = f"every {every[0]} {every[1]}"
    elif byte_range is not None:
        share = f"bytes {byte_range[0]}-{byte_range[1]}"
    elif row_groups is not None:
        share = f"rowgroups {row_groups[0]}-{row_groups[1]}"
    else:
        share = "all"
    return f"{uri}|size {size}|limit {limit}|{share}"


@dataclass
class PartManifest:
    writer: str
    seq: int
    committed_at: float
    job: str = ""  # the run that committed it
    #: stream key -> [lo, hi, end]: the part holds rows lo..hi-1 of the stream; end is None, "ok", "error"
    streams: dict[str, list[Any]] = field(default_factory=dict)
    #: file spec -> error streams among its records (see ``file_spec``)
    files: dict[str, int] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        data = {"version": MANIFEST_VERSION, **self.__dict__}
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> PartManifest:
        loaded = json.loads(data)
        if loaded.pop("version", None) != MANIFEST_VERSION:
            raise ValueError("a part manifest of another version")
        return cls(**loaded)


@dataclass
class OutputState:
    """The output's streams and files as its committed parts say (see the module docstring)."""

    #: stream key -> (end, committed_at, job) of its latest end
    ended: dict[str, tuple[str, float, str]] = field(default_factory=dict)
    #: stream key -> rows committed (the highest ``hi``: rows are committed in order)
    rows: dict[str, int] = field(default_factory=dict)
    #: file spec -> (error streams, committed_at) of its latest mark
    files: dict[str, tuple[int, float]] = field(default_factory=dict)
    #: part name -> its manifest's stream keys with an error end (what a cleanup may supersede)
    error_ends: dict[str, set[str]] = field(default_factory=dict)
    #: part name -> when it was committed
    parts: dict[str, float] = field(default_factory=dict)
    legacy: dict[str, str] = field(default_factory=dict)  # legacy file name -> stream key

    def add(self, name: str, manifest: PartManifest | None) -> None:
        """Fold in one part (``manifest`` None: a file of the earlier layout, known by its name)."""
        self.parts[name] = manifest.committed_at if manifest is not None else 0.0
        if manifest is None:
            m = LEGACY_NAME.match(name)
            if m is None:
                return
            key = m.group("key")
            self.legacy[name] = key
            end = OK if m.group("kind") == "part" else ERROR
            self._end(key, end, 0.0 if end == ERROR else 0.5, "")  # an old part wins over an old error
            return
        at = manifest.committed_at
        for key, (_, hi, end) in manifest.streams.items():
            if hi > self.rows.get(key, 0):
                self.rows[key] = int(hi)
            if end is not None:
                self._end(key, str(end), at, manifest.job)
                if end == ERROR:
                    self.error_ends.setdefault(name, set()).add(key)
        for spec, errors in manifest.files.items():
            if spec not in self.files or at >= self.files[spec][1]:
                self.files[spec] = (int(errors), at)

    def _end(self, key: str, end: str, at: float, job: str) -> None:
        if key not in self.ended or at >= self.ended[key][1]:
            self.ended[key] = (end, at, job)

    def in_parts(self, key: str) -> bool:
        """Whether a part of this layout holds the stream's end (not only a file of the earlier one)."""
        return self.ended.get(key, ("", 0.0, ""))[1] >= 1.0  # the earlier layout's ends are dated 0 and 0.5

    def is_done(self, key: str, retry_errors: bool = False) -> bool:
        end = self.ended.get(key)
        return end is not None and (end[0] == OK or not retry_errors)

    def done_keys(self, retry_errors: bool = False) -> set[str]:
        return {k for k, (end, _, _) in self.ended.items() if end == OK or not retry_errors}

    def ended_by(self, job: str) -> tuple[int, int]:
        """Streams whose (latest) end run ``job`` committed: (ok, error)."""
        ends = [end for end, _, by in self.ended.values() if by == job]
        return ends.count(OK), ends.count(ERROR)

    def file_done(self, spec: str, retry_errors: bool = False) -> bool:
        mark = self.files.get(spec)
        return mark is not None and (mark[0] == 0 or not retry_errors)

    def reading_done(self, spec: str, whole_file: bool, retry_errors: bool = False) -> bool:
        """Whether a reading of a file of records (``file_spec``) is done: itself, or for a whole file,
        all shares of it too (``shares_done``)."""
        if whole_file:
            return self.shares_done(spec, retry_errors)
        return self.file_done(spec, retry_errors)

    def shares_done(self, whole: str, retry_errors: bool = False) -> bool:
        """A whole file's records done: the file read whole, or all ``n`` shares of one ``every n``."""
        if self.file_done(whole, retry_errors):
            return True
        base = whole.rsplit("|", 1)[0]
        shares: dict[int, set[int]] = {}
        for spec in self.files:
            if spec.startswith(base + "|every ") and self.file_done(spec, retry_errors):
                n, j = (int(x) for x in spec.rsplit("|every ", 1)[1].split())
                shares.setdefault(n, set()).add(j)
        return any(len(js) == n for n, js in shares.items())

    def superseded(self) -> dict[str, set[str]]:
        """Part name -> stream keys whose error row there is no longer true: the stream ended later
        (retried: ``ok``, or another error) -- what ``PartWriter.drop_superseded`` removes."""
        out: dict[str, set[str]] = {}
        for name, keys in self.error_ends.items():
            # The error end in `name` is stale when the stream's latest end is newer than that part.
            stale = {k for k in keys if self.ended[k][1] > self.parts[name]}
            if stale:
                out[name] = stale
        for name, key in self.legacy.items():
            if name.startswith("err-") and self.ended.get(key, (ERROR, 0.0, ""))[0] == OK:
                out[name] = {key}
        return out
