"""The driver: plan streams, spread them over an actor pool with Ray Data, report progress and results.

Contract:

* ``run_job(cfg)`` works the same locally (``ray.init()`` starts Ray in-process) and under
  ``ray job submit`` (``RAY_ADDRESS`` points at the cluster): it expands the inputs, plans ``StreamTask``
  descriptors, drops streams already written to the output (resume), and runs
  ``ray.data.from_items(descriptors).map_batches(StreamWorker, batch_size=1, compute=ActorPoolStrategy(size=N,
  max_tasks_in_flight_per_actor=1))``: N actors with one GPU each (or ``threads_per_actor`` CPUs each),
  every one loading the model once and taking whole streams one at a time.
* Only descriptors and one small status row per stream pass through the driver: actors read their inputs
  themselves and write each stream's Parquet part themselves, and Ray Data's streaming executor applies
  backpressure, so driver memory does not grow with the corpus.
* Logs grouped by a key found in each line (``logs.group_by: line``) first go through a Ray Data shuffle
  (``groupby(key)``), which sorts every key's lines in time order; each key then is one stream.
* Progress: a tqdm bar (streams, errors, tokens/s) on the driver; metrics in the Ray dashboard from the
  actors (see ``actors.stream_worker``) and the driver (``longread_job_*``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from jobs.config import JobConfig
from pipeline.fs import Storage, display_uri, get_fs, is_remote
from pipeline.raylog import absorb_actor_restart_warning
from pipeline.sharding import StreamTask, plan_tasks
from pipeline.sources import ReadOptions, SourceFile, expand_inputs
from pipeline.submit import check_output_path, submitted_job
from pipeline.writer import PartWriter, read_part, stream_key

log = logging.getLogger(__name__)

MAX_BLOCKS = 20_000
# The report keeps a bounded sample, so driver memory does not grow with the number of streams.
MAX_REPORTED_ERRORS = 1000
MAX_KEPT_PATHS = 20
PROGRESS_LOG_SECONDS = 30.0
ERROR_KEY = "\x00error:"
PREVIEW_CHARS = 320


@dataclass
class JobReport:
    job_id: str
    task: str
    job_name: str
    output: str
    streams_ok: int = 0
    streams_error: int = 0
    streams_skipped: int = 0
    rows: int = 0
    tokens: int = 0
    seconds: float = 0.0
    actors: int = 0
    actor_resources: dict[str, float] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    preview: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    @property
    def streams_done(self) -> int:
        return self.streams_ok + self.streams_error

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def new_job_id(cfg: JobConfig) -> str:
    return f"{cfg.job_name}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def default_inputs(cfg: JobConfig) -> list[str]:
    if cfg.input.paths:
        return list(cfg.input.paths)
    from longread.assets import sample_books  # the main job's sample corpus, fetched at set-up

    return [str(p) for p in sample_books()]


# ------------------------------------------------------------------------------------------------- Ray
def init_ray(cfg: JobConfig) -> bool:
    """Join ``resources.ray_address`` / ``RAY_ADDRESS``, else start Ray here. True if this call
    initialized Ray (the caller then shuts it down); False if the process already had Ray."""
    import ray

    if ray.is_initialized():
        return False
    address = cfg.resources.ray_address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"address": address, "logging_level": logging.WARNING}
    if address in (None, "local"):  # "local" always starts a new instance; None joins a `ray start` one
        kwargs["num_cpus"] = cfg.resources.num_cpus
        if cfg.resources.include_dashboard is not None:
            kwargs["include_dashboard"] = cfg.resources.include_dashboard
    ray.init(**kwargs)
    return True


def actor_resources(cfg: JobConfig, streams: int | None) -> tuple[int, dict[str, float]]:
    """How many actors, and what each asks Ray for (one GPU, or ``threads_per_actor`` CPUs)."""
    import ray

    res = cfg.resources
    cluster = ray.cluster_resources()
    gpus, cpus = float(cluster.get("GPU", 0)), float(cluster.get("CPU", 1))
    use_gpu = cfg.model.device == "cuda" or (cfg.model.device == "auto" and gpus > 0)
    if use_gpu:
        n = res.actors or int(gpus // res.gpus_per_actor)
        if n < 1:
            raise ValueError(
                "model.device=cuda but the Ray cluster has no GPU yet; set resources.actors so the "
                "autoscaler can start GPU nodes, or use model.device: auto."
            )
        ask = {"num_gpus": res.gpus_per_actor, "num_cpus": 1.0}
    else:
        fit = max(1, int(cpus // res.threads_per_actor))
        n = res.actors or fit
        if n > fit and (res.ray_address or os.environ.get("RAY_ADDRESS")) in (None, "local"):
            log.warning(
                "%d actors x %d threads exceed the %d local CPUs; using %d",
                n,
                res.threads_per_actor,
                cpus,
                fit,
            )
            n = fit
        ask = {"num_cpus": float(res.threads_per_actor)}
    if streams is not None:
        n = max(1, min(n, streams))
    return n, ask


def _quiet_ray_data() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the driver shows its own bar (streams, tokens/s)
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # ... and do not warn that Ray Data's own bars are off: that is the point.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


class _DriverMetrics:
    def __init__(self, job_id: str) -> None:
        self.tags = {"job": job_id}
        try:
            from ray.util.metrics import Gauge

            self.done = Gauge("longread_job_streams_done", "Streams finished by this job", tag_keys=("job",))
            self.speed = Gauge("longread_job_tokens_per_second", "Job-wide tokens/s", tag_keys=("job",))
            self.enabled = True
        except Exception:
            self.enabled = False

    def update(self, done: int, speed: float) -> None:
        if self.enabled:
            try:
                self.done.set(done, tags=self.tags)
                self.speed.set(speed, tags=self.tags)
            except Exception:
                self.enabled = False


# --------------------------------------------------------------------------- logs grouped by line key
def _read_keyed_lines(batch: dict[str, Any], cfg: JobConfig) -> Iterator[dict[str, list[Any]]]:
    """Ray Data UDF: one source file -> batches of (key, ts, file, line_no, line), read incrementally."""
    from pipeline.logstats import LogParser, compile_key_pattern, extract_key
    from pipeline.sources import InputError, iter_log_lines

    assert cfg.logs.key_pattern is not None
    pattern = compile_key_pattern(cfg.logs.key_pattern)
    storage = cfg.storage.to_storage()
    opts = cfg.read_options()
    for raw, index in zip(batch["source"], batch["index"]):
        src = SourceFile.from_dict(json.loads(str(raw)))
        parser = LogParser(
            timestamp_pattern=cfg.logs.timestamp_pattern, timestamp_format=cfg.logs.timestamp_format
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
                if len(out["line"]) >= 4096:
                    yield out
                    out = {c: [] for c in out}
        except InputError as exc:
            # The file's error travels as a group of its own and becomes that file's error row.
            message = json.dumps([exc.kind, exc.message])
            for col, value in zip(out, (ERROR_KEY + src.uri, 0.0, int(index), -1, message, src.uri)):
                out[col].append(value)
        if out["line"]:
            yield out


def _pack_group(group: Any) -> Any:
    """Ray Data UDF: all lines of one key, sorted in time order, as one row (a ``StreamTask`` + lines)."""
    import pyarrow as pa

    table = group.sort_by([("ts", "ascending"), ("file", "ascending"), ("line_no", "ascending")])
    key = table.column("key")[0].as_py()
    uris = sorted(set(table.column("uri").to_pylist()))
    sources = [SourceFile(u) for u in uris]
    extra: dict[str, Any] = {}
    if key.startswith(ERROR_KEY):
        uri = key[len(ERROR_KEY) :]
        task = StreamTask("logs", [SourceFile(uri)], stream_id=uri)
        extra["error"] = json.loads(table.column("line")[0].as_py())
        lines: list[str] = []
    else:
        task = StreamTask("logs", sources, stream_id=f"logs:key={key}", key=key)
        lines = table.column("line").to_pylist()
    task.extra = extra
    return pa.table({"task": [task.to_json()], "lines": pa.array([lines], pa.list_(pa.string()))})


def _line_grouped_dataset(cfg: JobConfig, sources: list[SourceFile]) -> Any:
    import ray.data

    items = [{"source": json.dumps(s.to_dict()), "index": i} for i, s in enumerate(sources)]
    ds: Any = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), MAX_BLOCKS)))
    reader: Any = _read_keyed_lines  # a generator UDF: Ray Data's annotations only admit plain functions
    ds = ds.map_batches(reader, fn_kwargs={"cfg": cfg}, batch_size=1, batch_format="numpy")
    grouped = ds.groupby("key").map_groups(_pack_group, batch_format="pyarrow")
    # Shuffle fully before the model actors start, so the two stages never compete for the same CPUs.
    return grouped.materialize()


# ------------------------------------------------------------------------------------------------- run
def _check_model(cfg: JobConfig, remote: bool) -> None:
    source = cfg.model.source
    if source in ("default", "smollm2"):
        return
    path = Path(source).expanduser()
    if not path.exists():
        message = (
            f"model {source!r} is not a local folder or .gguf file on this machine; longread never downloads "
            "weights at run time: download the model and pass its folder, or use 'default'."
        )
        if not remote:
            raise FileNotFoundError(message)
        log.warning("%s (continuing: the cluster's nodes may have it)", message)


def _check_policy_fits_model(cfg: JobConfig) -> None:
    """Policies that depend on the model's depth (LaCache's ladder) fail here, before any actor starts."""
    from cache_policies import PolicyConfigError

    source = cfg.model.source
    if source in ("default", "smollm2"):
        from longread.assets import MODEL_NAME, home

        folder = home() / "models" / MODEL_NAME
    else:
        folder = Path(source).expanduser()
    config_file = folder / "config.json"
    if not config_file.is_file():
        return  # a .gguf file, or a model only the cluster's nodes have: the actors will check
    data = json.loads(config_file.read_text())
    text = data.get("text_config") or data
    layers = int(text["num_hidden_layers"])
    heads = int(text.get("num_key_value_heads") or text["num_attention_heads"])
    try:
        cfg.policy.build().bind(layers, heads)
    except PolicyConfigError as exc:
        raise ValueError(
            f"policy does not fit model {cfg.model.display_name} ({layers} layers): {exc}"
        ) from None


def run_job(cfg: JobConfig) -> JobReport:
    t_start = time.perf_counter()
    job_id = cfg.job_id or new_job_id(cfg)
    storage: Storage = cfg.storage.to_storage()
    if (storage.endpoint_url, storage.region) != (cfg.storage.endpoint_url, cfg.storage.region):
        # Endpoint and region from this machine's environment travel to the actors with the config (they
        # are not secret); worker nodes need not have the same variables. Credentials do not travel:
        # actors use explicit storage.key/secret or their own node's credential chain.
        cfg = cfg.model_copy(deep=True)
        cfg.storage.endpoint_url, cfg.storage.region = storage.endpoint_url, storage.region
    assert cfg.output.path is not None
    check_output_path(cfg.output.path, submitted_job())  # under `ray job submit`, relative means nothing
    writer = PartWriter(cfg.output.path, storage)
    report = JobReport(job_id, cfg.task, cfg.job_name, writer.output)
    remote_cluster = (cfg.resources.ray_address or os.environ.get("RAY_ADDRESS")) not in (None, "local")
    _check_model(cfg, remote_cluster)
    _check_policy_fits_model(cfg)
    writer.prepare()
    writer.check_task(cfg.task)
    writer.cleanup_tmp()
    from actors.stream_worker import load_questions_file

    if cfg.task == "qa" and cfg.qa.questions_file:
        load_questions_file(cfg.qa.questions_file, storage, cfg.qa.question_field)  # fail fast, before Ray
    opts: ReadOptions = cfg.read_options()
    inputs = default_inputs(cfg)
    sources = expand_inputs(inputs, storage, opts)
    log.info("%d input files from %s", len(sources), [display_uri(p) for p in inputs][:5])
    line_grouped = cfg.task == "logs" and cfg.logs.group_by == "line"
    tasks: list[StreamTask] = []
    if not line_grouped:
        tasks = plan_tasks(
            cfg.task,
            sources,
            storage=storage,
            split_parts=cfg.input.split_parts,
            min_split_bytes=cfg.input.min_split_bytes,
            group_by=cfg.logs.group_by,
            key_pattern=cfg.logs.key_pattern,
        )
    done = writer.done(retry_errors=cfg.output.retry_errors)
    pending = [t for t in tasks if not (t.stream_id is not None and stream_key(t.stream_id) in done)]
    report.streams_skipped = len(tasks) - len(pending)
    writer.write_job_record(job_id, _job_record(cfg, job_id, "running", report))
    if pending or line_grouped:
        started = init_ray(cfg)
        try:
            _execute(cfg, job_id, pending, sources if line_grouped else None, report)
        except BaseException as exc:
            report.seconds = time.perf_counter() - t_start
            record = _job_record(cfg, job_id, "failed", report)
            record["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            writer.write_job_record(job_id, record)
            raise
        finally:
            if started:
                import ray

                ray.shutdown()
    report.seconds = time.perf_counter() - t_start
    writer.write_job_record(job_id, _job_record(cfg, job_id, "finished", report))
    report.preview = _preview(report.paths, storage, cfg.task)
    return report


def _execute(
    cfg: JobConfig,
    job_id: str,
    pending: list[StreamTask],
    line_sources: list[SourceFile] | None,
    report: JobReport,
) -> None:
    import ray
    import ray.data

    from actors.stream_worker import StreamWorker

    _quiet_ray_data()
    absorb_actor_restart_warning()  # Ray Data's own false alarm about restarts: see pipeline.raylog
    if len([n for n in ray.nodes() if n.get("Alive")]) > 1 and not is_remote(report.output):
        log.warning(
            "output %s is a local path on a multi-node cluster: each node writes to its own disk. Use an "
            "s3:// output (or a shared mount) on clusters.",
            report.output,
        )
    if line_sources is not None:
        ds = _line_grouped_dataset(cfg, line_sources)
        units = ds.count()
        total: int | None = units
    else:
        items = [{"task": t.to_json()} for t in pending]
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), MAX_BLOCKS)))
        units = len(items)
        # A file of records is one unit of work but several streams: then the total is unknown upfront.
        total = units if all(t.single_stream for t in pending) else None
    # No more actors than units of work (the records of one unit go through one actor, in order).
    n, ask = actor_resources(cfg, units)
    report.actors, report.actor_resources = n, ask
    log.info("%s: %s streams on %d actors (%s each)", job_id, total if total is not None else "?", n, ask)
    results = ds.map_batches(
        StreamWorker,
        fn_constructor_kwargs={"config": cfg, "job_id": job_id},
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=n, max_tasks_in_flight_per_actor=1),
        **ask,
    )
    metrics = _DriverMetrics(job_id)
    t0 = last_log = time.perf_counter()
    bar = tqdm(total=total, unit="stream", desc=cfg.job_name, disable=not cfg.progress, dynamic_ncols=True)
    try:
        for status in results.iter_rows():
            state = status["status"]
            if state == "skipped":
                report.streams_skipped += 1
            elif state == "ok":
                report.streams_ok += 1
            else:
                report.streams_error += 1
                if len(report.errors) < MAX_REPORTED_ERRORS:
                    report.errors.append(
                        {
                            "stream_id": status["stream_id"],
                            "kind": status["error_kind"],
                            "error": status["error"],
                        }
                    )
                # INFO: the final report lists every error; warnings would break the progress bar.
                log.info(
                    "stream %s failed (%s): %s", status["source_uri"], status["error_kind"], status["error"]
                )
            if status.get("path") and state == "ok" and len(report.paths) < MAX_KEPT_PATHS:
                report.paths.append(str(status["path"]))  # for the preview
            report.rows += int(status["rows"] or 0)
            report.tokens += int(status["tokens"] or 0)
            speed = report.tokens / max(1e-9, time.perf_counter() - t0)
            bar.update(1)
            bar.set_postfix(ok=report.streams_ok, errors=report.streams_error, tok_s=f"{speed:.0f}")
            metrics.update(report.streams_done, speed)
            if not cfg.progress and time.perf_counter() - last_log > PROGRESS_LOG_SECONDS:
                last_log = time.perf_counter()  # no bar (e.g. under `ray job submit`): a log line instead
                log.info(
                    "%d/%s streams done (%d errors, %d skipped), %.0f tokens/s",
                    report.streams_done,
                    total if total is not None else "?",
                    report.streams_error,
                    report.streams_skipped,
                    speed,
                )
    finally:
        bar.close()


def _job_record(cfg: JobConfig, job_id: str, state: str, report: JobReport) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "task": cfg.task,
        "state": state,
        "time": datetime.now(UTC).isoformat(),
        "streams_ok": report.streams_ok,
        "streams_error": report.streams_error,
        "streams_skipped": report.streams_skipped,
        "tokens": report.tokens,
        "seconds": report.seconds,
        "config": cfg.public_dict(),  # secrets masked
    }


def _preview(paths: list[str], storage: Storage, task: str, limit: int = 3) -> list[dict[str, Any]]:
    kind = {"summarize": "final", "qa": "answer", "logs": "window"}[task]
    out: list[dict[str, Any]] = []
    for uri in paths:
        if len(out) >= limit:
            break
        if "/err-" in uri:
            continue
        fs, path = get_fs(uri, storage)
        try:
            with fs.open(path, "rb") as fh:
                rows = read_part(fh.read()).to_pylist()  # not via a file object: see pipeline.writer
        except OSError:
            continue
        for row in rows:
            if row["row_kind"] == kind:
                out.append(row)
                break
    return out


def format_report(report: JobReport) -> str:
    out = report.output
    glob = out.rstrip("/") + "/*.parquet"
    lines = [
        f"{report.job_name} {report.job_id}: {report.streams_done} streams processed "
        f"({report.streams_ok} ok, {report.streams_error} errors), {report.streams_skipped} already written; "
        f"{report.tokens:,} tokens in {report.seconds:.1f} s ({report.tokens_per_second:.0f} tokens/s) "
        f"on {report.actors} actors",
        f"Results: {out}  (Parquet, one file per stream; columns in docs/pipeline.md)",
        f'  pandas: pd.read_parquet("{out}")',
        f"  duckdb: SELECT stream_id, row_kind, segment_index, output_text FROM '{glob}'",
    ]
    if report.errors:
        lines.append("Errors (one error row each):")
        for err in report.errors[:10]:
            lines.append(f"  - {display_uri(err['stream_id'])} [{err['kind']}]: {err['error']}")
        if report.streams_error > 10:
            lines.append(f"  ... and {report.streams_error - 10} more (row_kind = 'error')")
    if report.preview:
        lines.append("Preview:")
        for row in report.preview:
            name = os.path.basename(row["stream_id"].split("#", 1)[0]) or row["stream_id"]
            what = row["question"] or row["segment_title"] or row["row_kind"]
            text = " ".join((row["output_text"] or "").split())
            if len(text) > PREVIEW_CHARS:
                text = text[:PREVIEW_CHARS] + "..."
            lines.append(
                f"  {name} [{row['row_kind']} {row['segment_index']}, "
                f"tokens {row['token_start']}-{row['token_end']}] {what}:\n    {text}"
            )
    return "\n".join(lines)
