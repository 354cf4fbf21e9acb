"""Ray for the driver: join or start a cluster, size the actor pool, keep Ray Data's console quiet.

Contract:

* ``init_ray`` joins ``resources.ray_address`` / ``RAY_ADDRESS`` (``ray job submit`` sets it), else starts
  Ray in-process (or, as ``ray.init`` does, joins a head started with ``ray start`` on this machine); it
  says in one log line which cluster the job runs on (started or joined, address, nodes, CPUs, GPUs) and
  whether it started Ray, so the caller shuts down only what it started. A Ray that cannot start or be
  joined raises ``ClusterError``: one line with the cause and the fix, no traceback of Ray's internals.
* ``actor_resources`` decides how many actors and what each asks for: one GPU each when the cluster has
  GPUs (or ``model.device: cuda``), else ``threads_per_actor`` CPUs each, never more actors than units;
  ``actor_runtime_env`` what their processes start with (``pipeline.cluster.memory``'s allocator settings).
* ``StopFlag`` is a job-wide "stop now" (a key in Ray's GCS key-value store): the driver raises it when the
  output fails, every actor sees it within ``STOP_POLL_S`` and ends its calls at once, so the job ends as a
  dataset that ran out of work instead of one torn down with actors killed mid-call.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from typing import Any

from pipeline.cluster.memory import ALLOCATOR_ENV
from pipeline.cluster.raylog import logging_config
from pipeline.config import BaseJobConfig, ResourceSettings
from pipeline.storage import is_remote

log = logging.getLogger(__name__)


def cluster_address(res: ResourceSettings) -> str | None:
    return res.ray_address or os.environ.get("RAY_ADDRESS")


def is_remote_cluster(res: ResourceSettings) -> bool:
    """True when the job runs on a cluster this machine joins (its nodes may differ from this one)."""
    return cluster_address(res) not in (None, "local")


class ClusterError(RuntimeError):
    """Ray could not be started or joined: one message with the cause and the fix."""


def init_ray(res: ResourceSettings) -> bool:
    """Join ``resources.ray_address`` / ``RAY_ADDRESS``, else start Ray here. True if this call
    initialized Ray (the caller then shuts it down); False if the process already had Ray."""
    import ray

    if ray.is_initialized():
        return False
    address = cluster_address(res)
    kwargs: dict[str, Any] = {"address": address, "logging_level": logging.WARNING}
    if res.log_format == "json":
        kwargs["logging_config"] = logging_config(res.log_format)
    if address in (None, "local"):  # "local" always starts a new instance; None joins a `ray start` one
        kwargs["num_cpus"] = res.num_cpus
        if res.include_dashboard is not None:
            kwargs["include_dashboard"] = res.include_dashboard
    try:
        ray.init(**kwargs)
    except Exception as exc:  # Ray's own start-up and connection errors: many types, multi-line
        log.debug("ray.init failed", exc_info=True)
        raise ClusterError(_start_failure(address, exc)) from None
    started = _started_here()
    line = describe_cluster(started)
    if address is None and not started:  # ray.init found a head on this machine: maybe not the one meant
        log.warning("%s (a head on this machine; resources.ray_address: local starts a private one)", line)
    else:
        log.info("%s", line)
    return True


def _start_failure(address: str | None, exc: BaseException) -> str:
    cause = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    cause = cause if len(cause) <= 300 else cause[:300] + "..."
    if address not in (None, "local"):
        return (
            f"cannot join the Ray cluster at {address} ({type(exc).__name__}: {cause}); check that it runs "
            f"(`ray status --address {address}`) and resources.ray_address / RAY_ADDRESS."
        )
    return (
        f"Ray could not start on this machine ({type(exc).__name__}: {cause}). Check free memory and "
        "/dev/shm, stop Ray instances left over (scripts/ray_stop.sh, or `ray stop` for all of yours), see "
        "Ray's logs under /tmp/ray/session_latest/logs, or join a running cluster with "
        "--set resources.ray_address=ADDRESS."
    )


def _started_here() -> bool:
    """Whether this process started the Ray it is connected to: its GCS server is a child of ours (a joined
    cluster's belongs to ``ray start`` or another machine)."""
    import psutil

    try:
        return any(p.name() == "gcs_server" for p in psutil.Process().children(recursive=True))
    except psutil.Error:
        return False


def describe_cluster(started: bool) -> str:
    """One line: which Ray the job runs on, and what it has."""
    import ray

    context = ray.get_runtime_context()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    how = "started Ray in this process" if started else "joined the Ray cluster"
    return (
        f"{how} at {context.gcs_address}: {len(nodes)} node(s), {total.get('CPU', 0):g} CPUs, "
        f"{total.get('GPU', 0):g} GPUs"
    )


def _gpu_actors(cfg: BaseJobConfig, gpus: float, local: bool) -> tuple[int, dict[str, float]]:
    """GPU actors: as many as asked (an autoscaler may add nodes), or as fit; locally never more than fit."""
    res = cfg.resources
    fit = int(gpus // res.gpus_per_actor)
    n = res.actors or fit
    if n < 1:
        have = (
            "no GPU yet" if gpus == 0 else f"{gpus:g} GPU(s), fewer than one actor's {res.gpus_per_actor:g}"
        )
        raise ValueError(
            f"model.device={cfg.model.device} runs actors on GPUs, but the Ray cluster has {have}; set "
            "resources.actors so the autoscaler can start GPU nodes, lower resources.gpus_per_actor, "
            "or use model.device: cpu."
        )
    if local and n > fit:  # no autoscaler on this machine: the rest would wait for GPUs forever
        if fit < 1:
            raise ValueError(
                f"{n} actors x {res.gpus_per_actor:g} GPU(s) on a local Ray with {gpus:g} GPU(s): "
                "lower resources.gpus_per_actor, or use model.device: cpu."
            )
        log.warning(
            "%d actors x %g GPU(s) exceed the %g local GPU(s); using %d", n, res.gpus_per_actor, gpus, fit
        )
        n = fit
    return n, {"num_gpus": res.gpus_per_actor, "num_cpus": 1.0}


def _cpu_actors(cfg: BaseJobConfig, cpus: float, local: bool) -> tuple[int, dict[str, float]]:
    """CPU actors of ``threads_per_actor`` CPUs each; locally no actor asks for more than the machine has."""
    res = cfg.resources
    fit = max(1, int(cpus // res.threads_per_actor))
    n = res.actors or fit
    threads = float(res.threads_per_actor)
    if local and threads > cpus:  # an actor asking more CPUs than the machine has would never start
        log.warning(
            "resources.threads_per_actor=%d exceeds the %g local CPUs; each actor asks for %g",
            res.threads_per_actor,
            cpus,
            cpus,
        )
        threads = cpus
    if n > fit and local:
        log.warning(
            "%d actors x %d threads exceed the %d local CPUs; using %d", n, res.threads_per_actor, cpus, fit
        )
        n = fit
    return n, {"num_cpus": threads}


def actor_resources(
    cfg: BaseJobConfig, streams: int | None, cluster: dict[str, float] | None = None
) -> tuple[int, dict[str, float]]:
    """How many actors, and what each asks Ray for (one GPU, or ``threads_per_actor`` CPUs), on the
    cluster Ray is connected to, or on ``cluster`` (its resources, e.g. this machine's for a dry run)."""
    if cluster is None:
        import ray

        cluster = ray.cluster_resources()
    gpus, cpus = float(cluster.get("GPU", 0)), float(cluster.get("CPU", 1))
    use_gpu = cfg.model.device == "cuda" or (cfg.model.device == "auto" and gpus > 0)
    local = not is_remote_cluster(cfg.resources)
    n, ask = _gpu_actors(cfg, gpus, local) if use_gpu else _cpu_actors(cfg, cpus, local)
    if streams is not None:
        n = max(1, min(n, streams))
    return n, ask


def actor_runtime_env() -> dict[str, Any]:
    """The runtime_env of the stream actors: the allocator settings of ``pipeline.cluster.memory`` (Ray merges
    it with the job's own runtime_env, e.g. the working_dir of ``ray job submit``; the job's own values for
    these variables win, so a cluster can tune them)."""
    return {"env_vars": {k: os.environ.get(k, v) for k, v in ALLOCATOR_ENV.items()}}


#: Seconds between an actor's looks at the job's ``StopFlag`` while its streams run.
STOP_POLL_S = 1.0


class StopFlag:
    """See the module docstring. Best effort: outside Ray it is never raised."""

    NAMESPACE = "longread"

    def __init__(self, job_id: str) -> None:
        self.key = f"stop:{job_id}".encode()
        self._value: str | None = None
        self._asked = -math.inf  # monotonic time of the last question to the GCS

    def _kv(self) -> Any:
        import ray

        if not ray.is_initialized():
            return None
        from ray.experimental import internal_kv

        return internal_kv if internal_kv._internal_kv_initialized() else None

    def set(self, message: str) -> None:
        kv = self._kv()
        if kv is not None:
            kv._internal_kv_put(self.key, message.encode(), overwrite=True, namespace=self.NAMESPACE)

    def get(self) -> str | None:
        """The stop message once raised. Asks the GCS at most twice per ``STOP_POLL_S`` (a worker calls
        this as each stream starts, which may be thousands of times a second for short records); a raised
        flag stays raised."""
        now = time.monotonic()
        if self._value is None and now - self._asked >= STOP_POLL_S / 2:
            self._asked = now
            self._value = self._ask()
        return self._value

    def _ask(self) -> str | None:
        kv = self._kv()
        if kv is None:
            return None
        try:
            value = kv._internal_kv_get(self.key, namespace=self.NAMESPACE)
        except Exception:  # the GCS unreachable for a moment: not a reason to stop
            return None
        return value.decode() if value else None

    def clear(self) -> None:
        kv = self._kv()
        if kv is not None:
            kv._internal_kv_del(self.key, namespace=self.NAMESPACE)


#: Seconds a run waits for all its actors to load the model before it hands out streams: locally, and on a
#: cluster (where the autoscaler may first start the nodes).
ACTOR_START_TIMEOUT_S = 600
CLUSTER_ACTOR_START_TIMEOUT_S = 1800


def quiet_ray_data(local: bool = False) -> None:
    """Ray Data settings for the datasets made next (a dataset copies the context when it is made)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    # Wait for every actor before handing out work, or the first one up takes `streams_per_actor` units
    # while the others load, and on a cluster one node did 495 of 500 streams. On a cluster the autoscaler
    # may have nodes to start: it gets longer.
    ctx.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S if local else CLUSTER_ACTOR_START_TIMEOUT_S
    # Our blocks are descriptors of a few hundred bytes made on the driver's node: "locality" would send
    # them all to the actors there (two of three units to the head node's actor on a 3-node cluster).
    # Ray 2.60 marks the option deprecated ("Ray Data manages actor locality internally") but its actor
    # pool still reads it; when it is gone, the multinode test says whether the spread still holds.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*actor_locality_enabled", category=DeprecationWarning)
        ctx.execution_options.actor_locality_enabled = False
    ctx.enable_progress_bars = False  # the driver shows its own bar (streams, tokens/s)
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # ... and do not warn that Ray Data's own bars are off: that is the point.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def warn_if_output_is_node_local(output: str) -> None:
    import ray

    if len([n for n in ray.nodes() if n.get("Alive")]) > 1 and not is_remote(output):
        log.warning(
            "output %s is a local path on a multi-node cluster: each node writes to its own disk. Use an "
            "s3:// output (or a shared mount) on clusters.",
            output,
        )
