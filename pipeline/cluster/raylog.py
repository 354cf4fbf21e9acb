"""The job's logs through Ray: JSON lines that say which job and which stream, and one known false alarm
in Ray's log, dealt with where it starts (and nothing else hidden).

Contract:

* ``logging_config(res)`` is what ``ray.init`` gets for ``resources.log_format: json``: Ray's
  ``LoggingConfig`` with JSON encoding, which formats every record of the driver and of every actor as one
  JSON object (with Ray's job, node, worker and actor ids, the logger's name, and a record's extra
  attributes). ``JobLogFilter`` adds this run's ``longread_job_id`` to every record of a process, and
  ``stream_id`` to those made while a stream's program runs: ``current_stream`` is set by the stream
  worker around each step of a program (programs of many streams interleave in one thread, so a context
  variable set per step, not per thread). With text logs the same attributes are there for handlers that
  want them.

* Ray Data creates the actors of an actor pool (``map_batches`` with a class, as the driver does) with
  ``max_restarts=-1`` and passes each one its ``DataContext`` and UDF as ObjectRefs (``ray.put`` by Ray
  Data itself, whatever the UDF's arguments). Ray core then logs once per process, at ERROR level,
  "Actor ... has constructor arguments in the object store and max_restarts > 0" (ray-project/ray#53727;
  for Ray Data, #57733, open). It warns that a restart would fail if those objects were lost. For Ray Data
  they are not: the driver's operator owns both refs for the whole execution and their primary copies are
  pinned on the driver's node, so a restarted actor gets them back. The restarts themselves are wanted:
  they are how a killed (e.g. out-of-memory) actor's stream is retried. Turning them off
  (``max_restarts=0``) would silence the line and lose that.
* ``absorb_actor_restart_warning()`` lets Ray emit its once-per-process line for a probe actor created
  with the same shape (restarts, an ObjectRef argument, no resources), while this process's stderr (file
  descriptor 2, where Ray's C++ log writes) goes to a temporary file for the duration of that one call.
  Everything else written meanwhile is written back to stderr; the probe is killed at once. Later actor
  pools then start without the line. If Ray stops emitting it (or changes it), nothing is hidden: the
  captured output is written back unchanged. It never fails a job (any error: the line stays).
  Idempotent per process.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The stream whose program is running in this thread right now (set by the stream worker).
current_stream: contextvars.ContextVar[str | None] = contextvars.ContextVar("longread_stream", default=None)


class JobLogFilter(logging.Filter):
    """Stamps every record with the run's job id and, during a stream's program, its stream id."""

    def __init__(self, job_id: str) -> None:
        super().__init__()
        self.job_id = job_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.longread_job_id = self.job_id
        stream = current_stream.get()
        if stream is not None and not hasattr(record, "stream_id"):
            record.stream_id = stream
        return True


def install_log_filter(job_id: str) -> None:
    """Stamp this process's records (every handler of the root logger and of ``ray``), once per job id."""
    for logger in (logging.getLogger(), logging.getLogger("ray")):
        for handler in logger.handlers:
            if not any(isinstance(f, JobLogFilter) and f.job_id == job_id for f in handler.filters):
                handler.addFilter(JobLogFilter(job_id))


def logging_config(log_format: str) -> Any:
    """``ray.init``'s ``logging_config`` for ``resources.log_format`` (None: Ray's text default)."""
    if log_format != "json":
        return None
    import ray

    return ray.LoggingConfig(encoding="JSON", log_level="INFO", additional_log_standard_attrs=["name"])


#: The one line this module absorbs (Ray's C++ log format: "[time E pid tid] core_worker.cc:N: Actor ...").
RESTART_WARNING = re.compile(
    rb"^[^\n]*core_worker\.cc:\d+: Actor [^\n]*has constructor arguments in the object store and "
    rb"max_restarts > 0\.[^\n]*(?:\n|$)",
    re.MULTILINE,
)

_attempted = False


def capture_stderr_fd(fn: Callable[[], T]) -> tuple[T, bytes]:
    """Run ``fn`` with file descriptor 2 redirected to a temporary file; return its result and the bytes."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            result = fn()
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            tmp.seek(0)
            os.write(2, tmp.read())  # what was written before the failure still reaches stderr
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        return result, tmp.read()


def absorb_actor_restart_warning() -> bool:
    """See the contract; True if Ray's line was absorbed by this call (one probe per process at most)."""
    global _attempted
    if _attempted:
        return False
    _attempted = True
    import ray

    @ray.remote(num_cpus=0, max_restarts=1)
    class _RestartProbe:
        def __init__(self, arg: Any) -> None:
            pass

    captured = b""
    try:
        arg = ray.put(None)  # by reference, like Ray Data's DataContext and UDF
        probe, captured = capture_stderr_fd(lambda: _RestartProbe.remote(arg))  # type: ignore[attr-defined]
        # Killed only once it exists: killing an actor whose creation is in flight makes the GCS log
        # "Failed to kill actor NIL_ID" at ERROR level, a false alarm of its own.
        try:
            ray.get(probe.__ray_ready__.remote(), timeout=60)
        finally:
            ray.kill(probe, no_restart=True)
    except Exception as exc:  # cosmetic only: never let it stop a job, nor swallow what Ray said
        if captured:
            os.write(2, captured)
        log.debug("could not absorb Ray's actor-restart warning: %s", exc)
        return False
    rest, found = RESTART_WARNING.subn(b"", captured)
    if rest:
        os.write(2, rest)
    log.debug("Ray's actor-restart warning %s", "absorbed" if found else "not emitted")
    return found > 0
