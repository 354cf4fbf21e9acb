"""What a job will do, said before it does it: the caps line every run logs as it starts, and the plan of a
dry run (``--dry-run``).

Contract:

* ``caps_line(cfg)`` names the limits that make a job read less than its inputs hold (the main job reads
  only the first 4,000 tokens of each book): logged when a run starts, printed in a dry run.
* ``plan_job(cfg, make_task)`` goes through the driver's steps before Ray -- output path, model and policy
  checks, the task's own checks, input expansion and its check, planning, what the output already holds
  -- and sizes the actor pool for this machine's CPUs and GPUs (or says that a cluster decides), without
  starting Ray, loading a model or writing anything. ``format_plan`` is its text.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.cluster.session import actor_resources, cluster_address, is_remote_cluster
from pipeline.cluster.submit import check_output_path, submitted_job
from pipeline.config import BaseJobConfig, Decoding
from pipeline.inputs.sources import SourceFile, expand_inputs
from pipeline.job.plan import StreamTask, pending_units, spread_records
from pipeline.job.preflight import check_inputs, check_model, check_policy_fits_model
from pipeline.output.writer import PartWriter
from pipeline.storage import Storage, display_uri

#: Streams (or descriptors) a dry run lists by name.
SHOWN = 12


def caps_line(cfg: BaseJobConfig) -> str | None:
    """The input limits of a run in one line, or None when it reads its inputs whole."""
    caps = []
    if cfg.input.max_tokens_per_stream is not None:
        tokens = cfg.input.max_tokens_per_stream
        caps.append(f"reading at most {tokens:,} tokens per stream (input.max_tokens_per_stream)")
    if cfg.input.max_records_per_file is not None:
        records = cfg.input.max_records_per_file
        caps.append(f"at most {records:,} records per file (input.max_records_per_file)")
    return "; ".join(caps) or None


@dataclass
class JobPlan:
    """What a run would do (see the module docstring)."""

    job_name: str
    output: str
    sources: list[SourceFile]
    units: list[StreamTask]
    pending: list[StreamTask]
    grouped: bool
    #: (actors, what each asks Ray for), or None when a cluster decides at run time
    actors: tuple[int, dict[str, float]] | None
    cluster: str
    skipped: int = 0
    files_done: int = 0
    done: dict[str, int] = field(default_factory=dict)
    last_run: dict[str, Any] | None = None


def local_resources(cfg: BaseJobConfig) -> dict[str, float]:
    """What an in-process Ray on this machine would have: its CPUs (``resources.num_cpus``, else those this
    process may use) and GPUs."""
    cpus = cfg.resources.num_cpus or len(os.sched_getaffinity(0))
    gpus = 0
    if cfg.model.device != "cpu":
        import torch  # already imported by the policy check

        gpus = torch.cuda.device_count()
    return {"CPU": float(cpus), "GPU": float(gpus)}


def plan_job(cfg: BaseJobConfig, make_task: Callable[[Any, Storage], Any]) -> JobPlan:
    """The driver's steps before Ray, for a dry run (see the module docstring)."""
    storage = cfg.storage.to_storage()
    assert cfg.output.path is not None
    check_output_path(cfg.output.path, submitted_job())
    writer = PartWriter(cfg.output.path, storage)  # only listed: a dry run creates nothing
    remote = is_remote_cluster(cfg.resources)
    check_model(cfg, remote)
    check_policy_fits_model(cfg)
    records = writer.job_records()
    writer.check_task(cfg.task, records)
    task = make_task(cfg, storage)
    sources = expand_inputs(task.inputs(), storage, task.read_options())
    check_inputs(sources)
    grouped = task.line_grouping() is not None
    units = [] if grouped else task.plan(sources)
    state = writer.state()  # (only read: a run also tidies the folder)
    pending, skipped, files_done = pending_units(units, state, cfg)
    actors: tuple[int, dict[str, float]] | None = None
    if remote:
        address = cluster_address(cfg.resources)
        cluster = f"the cluster at {address}: actors sized from its resources at run time"
    else:
        have = local_resources(cfg)
        streams = None if grouped or any(not u.single_stream for u in pending) else len(pending)
        actors = actor_resources(cfg, streams, have)
        slots = actors[0] * cfg.resources.streams(gpu="num_gpus" in actors[1])
        if not grouped and len(pending) < slots:  # as the driver: files of records shared by all actors
            pending = spread_records(pending, actors[0])
        cluster = (
            f"an in-process Ray on this machine ({have['CPU']:g} CPUs, {have['GPU']:g} GPUs), or a head "
            "started here with `ray start` if one runs"
        )
    last = max(records, key=lambda r: str(r.get("time", "")), default=None)
    return JobPlan(
        job_name=task.job_name,
        output=writer.output,
        sources=sources,
        units=units,
        pending=pending,
        grouped=grouped,
        actors=actors,
        cluster=cluster,
        skipped=skipped,
        files_done=files_done,
        done={
            "parts": len(state.parts),
            "ended": len(state.ended),
            "errors": len(state.ended) - len(state.done_keys(retry_errors=True)),
        },
        last_run=last,
    )


def _unit(unit: StreamTask) -> str:
    if unit.stream_id is None:
        every = unit.every
        share = f", every {every[0]}th record from record {every[1]}" if every else ""
        return f"{unit.sources[0].display} (a file of records: one stream per record{share})"
    part = f" (part {unit.part + 1}/{unit.parts})" if unit.parts > 1 else ""
    return display_uri(unit.stream_id) + part


def format_plan(plan: JobPlan, cfg: BaseJobConfig) -> str:
    """The dry run's text: what a run of ``cfg`` would read, run and write."""
    p = cfg.policy
    params = ", ".join(f"{k}={v}" for k, v in p.params.items()) or "no parameters"
    rope = p.rope_mode or f"default for {cfg.model.dtype}"
    lines = [
        f"{plan.job_name}: dry run (nothing started, no model loaded, nothing written)",
        f"  model: {cfg.model.display_name} ({cfg.model.source}), {cfg.model.dtype}, "
        f"device {cfg.model.device}, attention {cfg.model.attn_implementation}",
        f"  policy: {p.name} ({params}); budget {p.budget}, sink {p.sink}, stride {p.stride}, "
        f"rope_mode {rope}",
        f"  caps: {caps_line(cfg) or 'none: every input is read to its end'}",
    ]
    task_settings = getattr(cfg, cfg.task, None)
    if task_settings is not None:
        outputs = [
            f"{name} {value.max_new_tokens} (+{value.finish_sentence} to end a sentence)"
            for name in type(task_settings).model_fields
            if isinstance(value := getattr(task_settings, name), Decoding)
        ]
        if outputs:
            lines.append(f"  generated tokens at most: {'; '.join(outputs)} ({cfg.task}.*.max_new_tokens)")
    bad = [s for s in plan.sources if s.error]
    lines.append(f"  inputs: {len(plan.sources)} file(s), {len(bad)} known bad (error rows)")
    for src in plan.sources[:SHOWN]:
        size = f", {src.size:,} bytes" if src.size is not None else ""
        what = f"  [{src.error[0]}: {src.error[1]}]" if src.error else ""
        lines.append(f"    {src.display} ({src.format}{', gzip' if src.compression else ''}{size}){what}")
    if len(plan.sources) > SHOWN:
        lines.append(f"    ... and {len(plan.sources) - SHOWN} more")
    if plan.grouped:
        lines.append("  streams: one per key in the lines (a Ray Data shuffle gathers them at run time)")
    else:
        lines.append(
            f"  streams: {len(plan.units)} descriptor(s); {plan.skipped} already written (skipped), "
            f"{plan.files_done} files of records done, {len(plan.pending)} to run"
        )
        lines += [f"    {_unit(u)}" for u in plan.pending[:SHOWN]]
        if len(plan.pending) > SHOWN:
            lines.append(f"    ... and {len(plan.pending) - SHOWN} more")
    if plan.actors is not None:
        n, ask = plan.actors
        gpu = "num_gpus" in ask
        each = ", ".join(f"{k}={v:g}" for k, v in ask.items())
        lines.append(
            f"  actors: {n} {'GPU' if gpu else 'CPU'} actor(s), each asking Ray for {each}, "
            f"{cfg.resources.streams(gpu)} streams at once (resources.streams_per_actor)"
        )
    lines.append(f"  ray: {plan.cluster}")
    last = plan.last_run
    ran = f"; last run {last.get('job_id')}: {last.get('state')} ({last.get('time')})" if last else ""
    lines.append(
        f"  output: {display_uri(plan.output)} holds {plan.done['parts']} part(s): "
        f"{plan.done['ended']} streams ended, {plan.done['errors']} of them in an error row{ran}"
        + ("; error streams are retried (output.retry_errors)" if cfg.output.retry_errors else "")
    )
    return "\n".join(lines)
