"""Rows as they are made, at both extremes: a hundred thousand tiny streams, one giant one, and the main job.

    python benchmarks/bench_rows.py records [--records 100000] [--actors 2] [--profile 2000] [--out F.json]
    python benchmarks/bench_rows.py log [--size 1GB] [--minutes 10] [--feed raw|condensed]
        [--model tiny|default] [--out F.json]
    python benchmarks/bench_rows.py main [--out F.json]

Everything runs here on a local Ray (one CPU per actor), the jobs as a user runs them (``jobs.run.run_job``),
while a sampler thread reads, once a second, the driver's and every stream actor's RSS and CPU time
(``psutil``; actors are the processes whose title names ``StreamWorker``), the output folder (parts,
checkpoints) and the driver's progress (``pipeline.job.driver.Progress``):

* ``records``: ``--records`` small QA records in one JSONL file (a paragraph and one question each),
  answered by the tests' tiny random model (``tests/helpers_pipeline``: the pipeline's own cost). Reports
  output files against streams, one ``pandas.read_parquet`` of the folder, the rerun of the finished job
  (a fresh ``python -m jobs.answer_questions`` process: it must start no actor), the actors' CPU per
  stream, and where that CPU goes (``--profile`` records through one ``StreamWorker`` under cProfile, no
  Ray: the share of the model, tokenizing, the scheduler, rows and commits, reading).
* ``log``: a generated multi-host night (``actors.tasks.logs.synth``) of ``--size``, one stream per host,
  for at most ``--minutes``: when the first window row was readable, how often the bar moved, every
  checkpoint's size, RSS of the actors and the driver over time. The ``--nights - 1`` earlier nights run
  first with the tiny model (tonight's look-back reads their statistics, not their reports).
* ``main``: ``python -m jobs.summarize_books``'s job on the embedded model: the longest time the bar
  stood still.

It prints a table per part and writes JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

#: The embedded model's policy in the logs sample (jobs/configs/analyze_logs.yaml); the tests' tiny-model
#: policy is too small for its 30 layers.
SAMPLE_LOGS_POLICY = {"name": "streaming_llm", "budget": 1024, "stride": 256, "params": {}}
QUESTIONS = ["Who is in the story?", "Where does it happen?", "What goes wrong?"]

log = logging.getLogger("bench_rows")


class Sampler:
    """Once a second: RSS and CPU of the driver and the stream actors, the output's parts and checkpoints,
    and the driver's progress as it moves."""

    def __init__(self, out: Path) -> None:
        self.out, self.t0 = out, time.monotonic()
        self.samples: list[dict[str, Any]] = []
        self.moves: list[tuple[float, int]] = []  # (seconds, input bytes done) when the bar moved
        self.checkpoints: dict[str, list[tuple[float, int]]] = {}  # per file: (seconds, bytes) as written
        self._mtimes: dict[str, int] = {}
        self.actor_cpu: dict[int, float] = {}
        self.first_actor: float | None = None
        self.first_row: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Sampler:
        from pipeline.job import driver

        original = driver.Progress.add

        def add(progress: Any, status: dict[str, Any], quiet: bool = False) -> None:
            before = progress.report.bytes_done
            original(progress, status, quiet)
            if progress.report.bytes_done > before:
                self.moves.append((time.monotonic() - self.t0, progress.report.bytes_done))

        self._restore = (driver.Progress, "add", original)
        driver.Progress.add = add  # type: ignore[method-assign]
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        setattr(*self._restore)

    def _loop(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(1.0):
            now = time.monotonic() - self.t0
            actors = []
            for proc in psutil.process_iter(["pid", "cmdline"]):
                if "StreamWorker" in " ".join(proc.info["cmdline"] or []):
                    try:
                        cpu = proc.cpu_times()
                        actors.append((proc.info["pid"], proc.memory_info().rss, cpu.user + cpu.system))
                    except psutil.Error:
                        continue
            for pid, _, cpu in actors:
                self.actor_cpu[pid] = cpu
            if actors and self.first_actor is None:
                self.first_actor = now
            parts = list(self.out.glob("part-*.parquet")) if self.out.is_dir() else []
            if parts and self.first_row is None:
                self.first_row = now
            for ckpt in (self.out / "_checkpoints").glob("*.ckpt") if self.out.is_dir() else []:
                try:
                    stat = ckpt.stat()
                except OSError:
                    continue
                seen = self.checkpoints.setdefault(ckpt.name, [])
                if self._mtimes.get(ckpt.name) != stat.st_mtime_ns:  # a new checkpoint (written atomically)
                    self._mtimes[ckpt.name] = stat.st_mtime_ns
                    seen.append((now, stat.st_size))
            self.samples.append({
                "t": now, "driver_rss": me.memory_info().rss, "actors_rss": [(a[0], a[1]) for a in actors],
                "parts": len(parts),
            })  # fmt: skip

    def longest_still(self, until: float) -> float:
        times = [0.0 if self.first_actor is None else self.first_actor] + [t for t, _ in self.moves] + [until]
        return max(b - a for a, b in itertools.pairwise(times))


def _ray(actors: int) -> Any:
    import ray

    ray.init(address="local", num_cpus=actors, include_dashboard=False, logging_level=logging.WARNING)
    return ray


# ----------------------------------------------------------------------------------------------- records
def _records(path: Path, n: int) -> None:
    from helpers_pipeline import SENTENCES

    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            text = " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(3))
            fh.write(json.dumps({"id": f"r{i}", "text": text, "questions": [QUESTIONS[i % 3]]}) + "\n")


def _qa_config(work: Path, source: Path, out: Path, model: Path, actors: int) -> Any:
    from helpers_pipeline import job_config

    return job_config("qa", [str(source)], str(out), model, input={"id_column": "id"},
                      resources={"actors": actors, "threads_per_actor": 1})  # fmt: skip


def bench_records(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import pandas as pd
    import yaml
    from helpers_pipeline import build_tiny_model

    from jobs.run import run_job

    model = build_tiny_model(work / "tiny-model")
    source, out = work / "records.jsonl", work / "out"
    _records(source, args.records)
    cfg = _qa_config(work, source, out, model, args.actors)
    ray = _ray(args.actors)
    try:
        with Sampler(out) as sampler:
            t0 = time.perf_counter()
            report = run_job(cfg)
            wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
    files = len(list(out.glob("*.parquet")))
    t0 = time.perf_counter()
    rows = pd.read_parquet(out)
    read_s = time.perf_counter() - t0
    # The rerun as a user runs it: a fresh process (imports included), the finished output as it is.
    config = work / "job.yaml"
    config.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())))
    t0 = time.perf_counter()
    rerun = subprocess.run([sys.executable, "-m", "jobs.answer_questions", "--config", str(config),
                            "--no-progress"], capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    rerun_s = time.perf_counter() - t0
    cpu = sum(sampler.actor_cpu.values())
    result = {
        "records": args.records, "actors": args.actors, "streams_ok": report.streams_ok,
        "streams_error": report.streams_error, "rows": len(rows), "wall_s": wall, "files": files,
        "files_per_stream": files / max(1, report.streams_ok), "bytes_on_disk": sum(
            p.stat().st_size for p in out.glob("*.parquet")), "pandas_read_s": read_s,
        "rerun_s": rerun_s, "rerun_exit": rerun.returncode, "rerun_last_line": rerun.stdout.strip()[:400],
        "actor_cpu_s": cpu, "actor_cpu_ms_per_stream": 1000 * cpu / max(1, report.streams_ok),
        "driver_rss_mb": [s["driver_rss"] / 2**20 for s in sampler.samples][-1:],
    }  # fmt: skip
    if args.profile:
        result["cpu_shares"] = profile_records(work, model, args.profile)
    return result


#: Where a worker's time goes: the first of these files found in a busy thread's stack, innermost first.
PROFILE_BUCKETS = (
    ("rows and commits", ("pipeline/output/",)),
    ("reading records", ("pipeline/inputs/",)),
    ("tokenizing", ("tokenizers", "tokenization_utils")),
    ("generation (decoder)", ("longread/generation.py",)),
    ("model forward", ("torch/", "transformers/", "longread/attention.py", "longread/cache.py",
                       "longread/engine.py")),
    ("task programs and scheduler", ("actors/", "longread/scheduler.py")),
)  # fmt: skip
#: A stack whose innermost frame is one of these waits: the thread is idle, not working.
IDLE = ("threading.py", "queue.py", "selectors.py", "concurrent/futures/")


def profile_records(work: Path, model: Path, n: int) -> dict[str, float]:
    """One StreamWorker answering ``n`` records in this process, its threads' stacks sampled every 2 ms:
    the share of busy samples in each of ``PROFILE_BUCKETS`` (the rest: "other"), and CPU per stream."""
    from actors.stream_worker import StreamWorker
    from pipeline.inputs.sources import expand_inputs

    source, out = work / "profile.jsonl", work / "profile-out"
    _records(source, n)
    worker = StreamWorker(_qa_config(work, source, out, model, 1), "profile")
    [unit] = worker.task.plan(expand_inputs([str(source)], None, worker.task.read_options()))
    counts: dict[str, int] = {}
    done = threading.Event()
    me = threading.get_ident()

    def sample() -> None:
        while not done.wait(0.002):
            for ident, frame in sys._current_frames().items():
                if ident == me or ident == threading.get_ident():
                    continue
                files = []
                while frame is not None:
                    files.append(frame.f_code.co_filename)
                    frame = frame.f_back  # type: ignore[assignment]
                if not files or any(part in files[0] for part in IDLE):
                    continue
                bucket = next((name for name, parts in PROFILE_BUCKETS
                               if any(part in f for f in files for part in parts)), "other")  # fmt: skip
                counts[bucket] = counts.get(bucket, 0) + 1

    sampler = threading.Thread(target=sample, daemon=True)
    t0 = time.process_time()
    sampler.start()
    worker.process(unit)
    done.set()
    sampler.join()
    total = time.process_time() - t0
    busy = max(1, sum(counts.values()))
    return {"cpu_ms_per_stream": 1000 * total / n, **{k: v / busy for k, v in sorted(counts.items())}}


# ----------------------------------------------------------------------------------------------- log
def bench_log(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The nightly job on a generated night of ``--size`` (and ``--nights - 1`` earlier, smaller ones,
    analyzed first, for the look-back), for at most ``--minutes``."""
    from helpers_pipeline import build_tiny_model, job_config

    from actors.tasks.logs.synth import generate, parse_size

    logs, out = work / "logs", work / "out"
    t0 = time.perf_counter()
    labels = generate(logs, parse_size(args.size), hosts=args.hosts, nights=args.nights, seed=0)
    generate_s = time.perf_counter() - t0
    tiny = build_tiny_model(work / "tiny-model")
    nights = [n["date"] for n in labels["nights"]]

    def config(night: str, model: Any) -> Any:
        cfg = job_config("logs", [str(logs / night)], str(out / night), model,
                         logs={"group_by": "path", "key_pattern": r"/(?P<key>[^/]+)/[^/]+\.log$",
                               "feed": args.feed, "history_nights": 7, "max_new_tokens": args.new_tokens,
                               **({"window_seconds": args.window} if args.feed == "condensed" else {})},
                         resources={"actors": args.actors, "threads_per_actor": 1},
                         **({"policy": SAMPLE_LOGS_POLICY} if model == "default" else {}))  # fmt: skip
        if model != "default":  # many checkpoints to measure; the embedded model keeps the default
            cfg.output.checkpoint_every_tokens = 4096
        return cfg

    ray = _ray(args.actors)
    try:
        # The earlier nights, for tonight's look-back, which reads their statistics only (summary rows'
        # templates and window line counts), not their reports: the tiny model makes them quickly.
        for night in nights[:-1]:
            _run_night(config(night, tiny), None)
        model = tiny if args.model == "tiny" else "default"
        result = _run_night(config(nights[-1], model), args.minutes * 60, out / nights[-1])
    finally:
        ray.shutdown()
    score = _score(labels, out / nights[-1], work, args)
    rate = score["tokens_fed"] / result["wall_s"] if result.get("wall_s") else None
    return {"size": args.size, "feed": args.feed, "model": args.model, "generate_s": generate_s,
            **result, **score, "tokens_fed_per_s": rate}  # fmt: skip


def _run_night(cfg: Any, seconds: float | None, out: Path | None = None) -> dict[str, Any]:
    from jobs.run import run_job

    if seconds is None:
        t0 = time.perf_counter()
        report = run_job(cfg)
        log.info("earlier night %s: %d streams in %.0f s", cfg.output.path, report.streams_ok,
                 time.perf_counter() - t0)  # fmt: skip
        return {}
    assert out is not None
    stopped = threading.Timer(seconds, _interrupt)
    with Sampler(out) as sampler:
        stopped.start()
        t0 = time.perf_counter()
        try:
            report, finished = run_job(cfg), True
        except KeyboardInterrupt:
            report, finished = None, False
        wall = time.perf_counter() - t0
    stopped.cancel()
    first = {name: sizes[0][1] for name, sizes in sampler.checkpoints.items()}
    last = {name: sizes[-1][1] for name, sizes in sampler.checkpoints.items()}
    driver = [s["driver_rss"] for s in sampler.samples if s["t"] > 60]
    # Per actor process: a sum over processes jumps when one starts or exits, which is not growth.
    per_actor: dict[int, list[int]] = {}
    for s in sampler.samples:
        for pid, rss in s["actors_rss"] if s["t"] > 60 else []:
            per_actor.setdefault(pid, []).append(rss)
    done = report.bytes_done if report else sampler.moves[-1][1] if sampler.moves else 0
    return {
        "finished": finished, "wall_s": wall, "bytes_done": done,
        "actor_cpu_s": sum(sampler.actor_cpu.values()),
        "first_actor_s": sampler.first_actor, "first_row_s": sampler.first_row,
        "first_row_after_actor_s": None if sampler.first_row is None or sampler.first_actor is None
        else sampler.first_row - sampler.first_actor,
        "bar_moves": len(sampler.moves), "longest_still_s": sampler.longest_still(wall),
        "checkpoint_growth": max((last[k] / first[k] for k in first), default=None),
        "checkpoints": sum(len(v) for v in sampler.checkpoints.values()),
        "checkpoints_kb": {k: [s // 1024 for _, s in v] for k, v in sampler.checkpoints.items()},
        "driver_rss_spread": (max(driver) - min(driver)) / min(driver) if driver else None,
        "actors_rss_spread": max(((max(v) - min(v)) / min(v) for v in per_actor.values()), default=None),
        "actors_rss_mb": {pid: [min(v) >> 20, max(v) >> 20] for pid, v in per_actor.items()},
        "parts": sampler.samples[-1]["parts"] if sampler.samples else 0,
    }  # fmt: skip


def _score(labels: dict[str, Any], out: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Lines counted against the input, the model's tokens against the raw feed's, and how often a
    window report over an incident names its host or its template's words."""
    import pandas as pd
    from incidents import found_incidents

    from longread.models import load_model

    if not list(out.glob("part-*.parquet")):
        return {}
    rows = pd.read_parquet(out)
    windows, summaries = rows[rows.row_kind == "window"], rows[rows.row_kind == "summary"]
    tonight = labels["nights"][-1]
    lines = sum(h["lines"] for h in tonight["hosts"].values())
    # The raw feed's tokens: the tokenizer's tokens per byte on a sample of each host's lines, scaled.
    _, tokenizer = load_model(None if args.model == "default" else str(work / "tiny-model"), device="cpu")
    raw = 0.0
    for facts in tonight["hosts"].values():
        sample = (work / "logs" / facts["file"]).read_bytes()[:200_000]
        sample = sample[: sample.rfind(b"\n") + 1].decode()
        raw += len(tokenizer(sample)["input_ids"]) / max(1, len(sample.encode())) * facts["bytes"]
    fed = float(rows.groupby("stream_id").tokens_streamed.max().sum())  # a stopped run has no summaries
    found = found_incidents(labels, rows, args.window) if args.feed == "condensed" else {}
    named = []
    for incident in labels["incidents"]:
        if incident["kind"] == "new_host":
            continue
        mine = windows[windows.log_host == incident["host"]]
        words = [w for w in (incident.get("template") or "").replace("<*>", " ").split() if len(w) > 4][:6]
        texts = " ".join(mine.output_text.fillna("")).lower()
        named.append(incident["host"].lower() in texts or any(w.lower() in texts for w in words))
    return {
        "input_lines": lines, "window_lines": int(windows.log_lines.sum()),
        "summary_lines": int(summaries.log_lines.sum()),
        "lines_per_s": windows.log_lines.sum() / max(1e-9, rows.stream_seconds.max()),
        "tokens_fed": fed, "raw_tokens_estimate": raw, "fed_share_of_raw": fed / raw if raw else None,
        "incidents": len(labels["incidents"]), "incidents_found": sum(found.values()),
        "incidents_missed": [k for k, v in found.items() if not v],
        "reports_naming_incident": sum(named), "scored": len(named),
    }  # fmt: skip


def _interrupt() -> None:
    import _thread

    _thread.interrupt_main()  # as Ctrl-C: the job records itself interrupted


# ----------------------------------------------------------------------------------------------- main
def bench_main(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from jobs.config import load_config
    from jobs.run import run_job

    cfg, _ = load_config("summarize", ["--output", str(work / "out"), "--no-progress"])
    ray = _ray(2)
    try:
        with Sampler(work / "out") as sampler:
            t0 = time.perf_counter()
            report = run_job(cfg)
            wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
    return {
        "wall_s": wall, "streams_ok": report.streams_ok, "bar_moves": len(sampler.moves),
        "first_actor_s": sampler.first_actor, "longest_still_s": sampler.longest_still(wall),
        "moves_s": [round(t, 1) for t, _ in sampler.moves],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["records", "log", "main"])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--profile", type=int, default=2000, help="records profiled in process (0: none)")
    parser.add_argument("--size", default="1GB")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--feed", choices=["raw", "condensed"], default="raw")
    parser.add_argument("--model", choices=["tiny", "default"], default="tiny")
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--nights", type=int, default=2, help="log: nights generated (the last is analyzed)")
    parser.add_argument("--window", type=float, default=3600.0, help="log: seconds per window (condensed)")
    parser.add_argument("--new-tokens", type=int, default=128, help="log: max new tokens of a report")
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temporary folder)")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args()
    # Started in the background by a non-interactive shell, the process ignores SIGINT, and --minutes'
    # Ctrl-C (``_interrupt``) would do nothing: take it back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    logging.basicConfig(level=logging.WARNING)
    log.setLevel(logging.INFO)
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-rows-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = {"records": bench_records, "log": bench_log, "main": bench_main}[args.part](args, work)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    result["load_avg_1m"] = os.getloadavg()[0]
    for key, value in result.items():
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key:>28}  {text[:160]}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
