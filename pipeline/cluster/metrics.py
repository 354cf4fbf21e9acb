"""Ray dashboard metrics (Prometheus) of the pipeline: per stream from the actors, per job from the driver.

Both are best effort: outside Ray, or where the metrics API fails, they do nothing and never fail a stream.

* ``StreamMetrics`` (actors): ``longread_streams`` (by ``status``), ``longread_tokens`` (as they stream,
  every progress tick), ``longread_input_bytes`` (input read), ``longread_stream_seconds`` and
  ``longread_tokens_per_second``, tagged with the job and the task.
* ``DriverMetrics`` (driver): ``longread_job_streams_done``, ``longread_job_tokens_per_second``,
  ``longread_job_input_bytes_done`` / ``longread_job_input_bytes_total`` and ``longread_job_eta_seconds``.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class StreamMetrics:
    """Per-stream metrics an actor records; a no-op outside Ray."""

    def __init__(self) -> None:
        self.enabled = False
        try:
            import ray

            if not ray.is_initialized():
                return
            from ray.util.metrics import Counter, Gauge, Histogram

            self.streams = Counter(
                "longread_streams", "Streams processed by status", tag_keys=("job", "task", "status")
            )
            self.tokens = Counter("longread_tokens", "Document tokens streamed", tag_keys=("job", "task"))
            self.bytes = Counter("longread_input_bytes", "Input bytes read", tag_keys=("job", "task"))
            self.seconds = Histogram(
                "longread_stream_seconds",
                "Wall time per stream",
                boundaries=[1, 5, 15, 60, 300, 1800, 7200],
                tag_keys=("job", "task"),
            )
            self.speed = Gauge(
                "longread_tokens_per_second", "Streaming speed of the last stream", tag_keys=("job", "task")
            )
            self.enabled = True
        except Exception as exc:  # metrics are best effort: never fail a stream for them
            log.debug("Ray metrics unavailable: %s", exc)

    def record(
        self, job: str, task: str, status: str, tokens: int, seconds: float, speed: float | None
    ) -> None:
        if not self.enabled:
            return
        tags = {"job": job, "task": task}
        self.streams.inc(1, tags={**tags, "status": status})
        self.progress(job, task, 0, tokens)
        self.seconds.observe(seconds, tags=tags)
        if speed:
            self.speed.set(speed, tags=tags)

    def progress(self, job: str, task: str, input_bytes: int, tokens: int) -> None:
        """Input read and tokens streamed since the last call (inside streams, as they go)."""
        if not self.enabled:
            return
        tags = {"job": job, "task": task}
        if tokens:
            self.tokens.inc(tokens, tags=tags)
        if input_bytes:
            self.bytes.inc(input_bytes, tags=tags)


class DriverMetrics:
    """Job-wide progress the driver reports while it collects status rows."""

    def __init__(self, job_id: str) -> None:
        self.tags = {"job": job_id}
        try:
            from ray.util.metrics import Gauge

            self.done = Gauge("longread_job_streams_done", "Streams finished by this job", tag_keys=("job",))
            self.speed = Gauge("longread_job_tokens_per_second", "Job-wide tokens/s", tag_keys=("job",))
            self.bytes_done = Gauge("longread_job_input_bytes_done", "Input bytes read", tag_keys=("job",))
            self.bytes_total = Gauge(
                "longread_job_input_bytes_total", "Input bytes to read", tag_keys=("job",)
            )
            self.eta = Gauge(
                "longread_job_eta_seconds", "Seconds left at the current rate", tag_keys=("job",)
            )
            self.enabled = True
        except Exception:
            self.enabled = False

    def update(
        self, done: int, speed: float, bytes_done: int = 0, bytes_total: int = 0, eta: float | None = None
    ) -> None:
        if self.enabled:
            try:
                self.done.set(done, tags=self.tags)
                self.speed.set(speed, tags=self.tags)
                self.bytes_done.set(bytes_done, tags=self.tags)
                self.bytes_total.set(bytes_total, tags=self.tags)
                if eta is not None:
                    self.eta.set(eta, tags=self.tags)
            except Exception:
                self.enabled = False
