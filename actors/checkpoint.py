"""Stream checkpoints: a long stream's whole state, saved as it goes, so another actor can resume it.

Contract:

* A stream whose program calls ``ctx.checkpoint(state)`` (``actors.context``) at its resumable points saves
  a ``Checkpoint`` there once ``output.checkpoint_every_tokens`` document tokens went by since the last one:
  the engine's bounded state (``Save()``: cache row, policy state, last logits; torch's tensor format),
  the context's counters (tokens, seconds, rows made) and the task's own state object, which holds
  everything else the program needs to continue: where its input resumes (a byte offset, line index ...),
  segment or window state. Never rows: a row is handed over when it is made (``pipeline.output.parts``),
  and the checkpoint only counts them (``rows``), so its size is bounded by the cache and the task's small
  state, whatever the stream's length.
* ``PartWriter`` stores it as ``_checkpoints/<stream key>.ckpt`` next to the results, locally or on S3,
  atomically (one rename, one PUT), once every row made before it is committed, and deletes it once the
  stream's end is. A stream that starts while its checkpoint exists resumes from it, on any actor:
  ``Load`` puts the engine state back and the program continues from the task's state; the rows it makes
  again (committed after the checkpoint) are dropped by ``row_index``, so its rows equal an uninterrupted
  run's, each once. A checkpoint of format 2 (which held the rows made so far in its state) loads too:
  its rows are handed over first (``legacy_rows``).
* Bytes: ``to_bytes`` pickles the checkpoint; ``from_bytes`` unpickles with an allowlist (like
  ``torch.load(weights_only=True)``): plain data, ``Counter``, ``datetime``, and the state classes tasks
  register with ``allow``. A checkpoint is read from the output store, so a tampered one cannot run code.
* A checkpoint is used only by the same job settings (``fingerprint``: model, policy, input decoding,
  generation and the task's section) over the same input files (``inputs``: URIs and sizes -- a log
  group that gained or lost a file, or a file replaced by another of a different size, would make its
  positions point elsewhere); anything else -- other settings or inputs, another format version, a file
  that does not load -- is ignored with a warning (and replaced), and the stream starts over.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import io
import json
import pickle
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pipeline.config import BaseJobConfig

VERSION = 3  # 2: a checkpoint names its stream's input files (inputs); 3: rows, not the rows themselves
T = TypeVar("T")

_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "Counter"): collections.Counter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "deque"): collections.deque,
    ("datetime", "datetime"): datetime.datetime,
    ("datetime", "date"): datetime.date,
    ("datetime", "timedelta"): datetime.timedelta,
    ("datetime", "timezone"): datetime.timezone,
}


def allow(cls: T) -> T:
    """Admit ``cls`` in checkpoints (a task's state class and the classes it holds). Usable as a decorator."""
    _ALLOWED[(cls.__module__, cls.__qualname__)] = cls  # type: ignore[attr-defined]
    return cls


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"a checkpoint may not hold {module}.{name} (not a registered state class)"
            ) from None


@dataclass
class Checkpoint:
    """One stream's state at a resumable point of its program (see the module docstring)."""

    stream_id: str
    fingerprint: str
    tokens: int  # document tokens streamed so far
    feed_seconds: float
    elapsed: float  # seconds the stream had run
    engine: bytes  # ``Save()``: the engine's state of the stream
    state: Any  # the task's state object
    worker: str = ""  # host:pid:device of the actor that wrote it
    #: the stream's input files as [uri, size] (see ``StreamInfo.inputs``): its positions are theirs
    inputs: list[list[Any]] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    version: int = VERSION
    rows: int = 0  # rows the stream had made (all committed when the checkpoint was written)
    #: format 2 kept the rows made so far in the task's state: they are handed over when it resumes
    legacy_rows: list[dict[str, Any]] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def from_bytes(data: bytes) -> Checkpoint:
        """Raises ``ValueError`` for anything but a checkpoint of this format version."""
        try:
            loaded = _Unpickler(io.BytesIO(data)).load()
        except Exception as exc:  # corrupt, truncated, or a class outside the allowlist
            raise ValueError(f"not a readable checkpoint ({type(exc).__name__}: {exc})") from None
        if not isinstance(loaded, Checkpoint) or loaded.version not in (2, VERSION):
            raise ValueError("a checkpoint of another format version")
        if loaded.version == 2:  # its task state holds the rows made so far: take them out of it
            held = getattr(loaded.state, "__dict__", {}).pop("rows", None)
            loaded.legacy_rows = list(held or [])
            loaded.rows, loaded.version = len(loaded.legacy_rows), VERSION
        return loaded


allow(Checkpoint)


def fingerprint(cfg: BaseJobConfig) -> str:
    """What decides a stream's rows besides its input: a checkpoint made under other settings is not used."""
    data = cfg.public_dict()
    keep = {k: data.get(k) for k in ("task", "model", "policy", "generation", data["task"])}
    keep["input"] = {k: v for k, v in (data.get("input") or {}).items() if k != "paths"}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]
