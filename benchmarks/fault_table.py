"""The fault table: what the pipeline does when actors die, the driver dies, inputs are bad and S3 goes away.

    python benchmarks/fault_table.py [--kills 10] [--books 24] [--parts driver actors inputs s3 edges]
        [--out FILE.json]

Everything runs here, on a local Ray (2 CPUs), with the tests' tiny random model (``tests/helpers_pipeline``:
real tokenizer, random weights, so runs are quick and exact) and moto's S3 on a loopback port:

1. **Actors killed.** One summarize job over ``--books`` books (checkpoints every 64 tokens); every 3 s a
   thread kills (SIGKILL) a stream actor that has a stream in flight (one whose checkpoint is on disk),
   ``--kills`` times. Then: does every stream have exactly one part with one final row, and are the rows
   those of an uninterrupted run of the same job?
2. **Driver killed.** ``python -m jobs.summarize_books`` killed with its whole process group (driver and
   its in-process Ray) once some parts are written, then run again: each stream written once, the first
   run's record marked interrupted.
3. **Bad inputs.** One job over every kind of bad input (plus good ones): each input's outcome.
4. **S3 outage.** Inputs and output in moto's S3, which goes away (connections refused) for 8 s mid-run
   and comes back: every stream written once.
5. **Edges** (``--parts edges``): the command line at its edges, each case a ``python -m jobs.NAME``
   subprocess (or, where marked, an in-process check): a named pipe among the inputs, credentials in a
   URI, an unreachable S3 output, an unsafe job id, a bad questions file, Ray failing to start, Ctrl-C,
   UTF-16 input, a missing bucket, a record without questions, a budget given twice, the samples of a
   fresh clone, missing inputs, a second Ray head beside a first, ``--help`` and ``--dry-run``: each
   case's exit status, its one line and its seconds.

It prints the markdown tables of docs/pipeline.md ("Faults") and writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

TIMING = ["job_id", "worker", "created_at", "stream_seconds", "feed_seconds", "generate_seconds",
          "tokens_per_second"]  # fmt: skip
S3_KEYS = {"key": "FAULTTABLEKEY", "secret": "fault-table-secret"}


def _rows(out: Path | str, storage: Any = None) -> Any:
    from helpers_pipeline import read_output

    rows = read_output(out, storage).drop(columns=TIMING)
    return rows.sort_values(["stream_id", "row_kind", "segment_index"]).reset_index(drop=True)


def _one_of_each(rows: Any) -> bool:
    """Every stream's rows once: one final row each, no row twice (by kind and segment, and by the
    stream's row_index), each stream's row_index gapless from 0."""
    finals = rows[rows.row_kind == "final"]
    gapless = all(sorted(g.row_index) == list(range(len(g))) for _, g in rows.groupby("stream_id"))
    return (
        bool(finals.stream_id.is_unique)
        and not rows.duplicated(["stream_id", "row_kind", "segment_index"]).any()
        and not rows.duplicated(["stream_id", "row_index"]).any()
        and gapless
    )


def _same(got: Any, want: Any, stream_id: str) -> bool:
    mine, theirs = (f[f.stream_id == stream_id].reset_index(drop=True) for f in (got, want))
    return bool(mine.equals(theirs))


# ------------------------------------------------------------------------------------------ 1. actors
def killed_actors(work: Path, model_dir: Path, books: int, kills: int) -> dict[str, Any]:
    import psutil
    from helpers_pipeline import book_text, job_config

    from actors.checkpoint import Checkpoint
    from jobs.run import run_job
    from pipeline.output.writer import CHECKPOINTS_DIR

    folder = work / "books"
    folder.mkdir()
    for i in range(books):
        (folder / f"book{i:02d}.txt").write_text(book_text(repeat=30 + 5 * (i % 5)), encoding="utf-8")

    def config(out: str) -> Any:
        cfg = job_config("summarize", [str(folder)], str(work / out), model_dir,
                         summarize={"segment_tokens": 64, "segment_max_new_tokens": 8})  # fmt: skip
        cfg.output.checkpoint_every_tokens = 64
        cfg.output.commit_every_rows = 4  # checkpoints are written once the rows before them are committed
        return cfg

    t0 = time.perf_counter()
    reference = run_job(config("reference"))
    reference_s = time.perf_counter() - t0
    done: list[int] = []
    stop = threading.Event()

    mine = {"checkpoints": 0}  # checkpoints on disk at the kills, summed

    def killer() -> None:
        """Every 3 s, SIGKILL a stream actor that has a stream in flight (it wrote that stream's
        checkpoint: past loading the model, mid-stream), taken from the checkpoints on disk; only actors
        of this process's own Ray (its raylet is our child), never another job on the machine."""
        rng = random.Random(0)
        folder = work / "killed" / CHECKPOINTS_DIR
        while len(done) < kills and not stop.wait(3.0):
            ours = {p.pid for p in psutil.Process().children(recursive=True)}
            streaming: set[int] = set()
            files = list(folder.glob("*.ckpt")) if folder.is_dir() else []
            for path in files:
                with contextlib.suppress(OSError, ValueError):  # replaced or removed while read
                    pid = int(Checkpoint.from_bytes(path.read_bytes()).worker.split(":")[1])
                    if pid in ours and pid not in done:
                        streaming.add(pid)
            if streaming:
                victim = rng.choice(sorted(streaming))
                with contextlib.suppress(psutil.Error):
                    psutil.Process(victim).send_signal(signal.SIGKILL)
                    done.append(victim)
                    mine["checkpoints"] += len(files)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    report = run_job(config("killed"))
    seconds = time.perf_counter() - t0
    stop.set()
    thread.join()
    got, want = _rows(work / "killed"), _rows(work / "reference")
    parts = sorted(p.name for p in (work / "killed").glob("*.parquet"))
    return {
        "streams": books,
        "kills": len(done),
        "checkpoints_on_disk_at_kills": mine["checkpoints"],
        "streams_ok": report.streams_ok,
        "streams_error": report.streams_error,
        "resumed_from_checkpoints": report.streams_resumed,
        "parts": len(parts),
        "each_stream_once": len(set(got.stream_id)) == books and _one_of_each(got),
        "rows_equal_uninterrupted": bool(got.equals(want)),
        "streams_differing": sum(not _same(got, want, s) for s in want.stream_id.unique()),
        "seconds": seconds,
        "uninterrupted_seconds": reference_s,
        "reference_ok": reference.streams_ok,
    }


# ------------------------------------------------------------------------------------------ 2. driver
def killed_driver(work: Path, model_dir: Path) -> dict[str, Any]:
    from helpers_pipeline import book_text, job_config, kill_session, spawn_driver

    from jobs.run import run_job
    from pipeline.output.writer import PartWriter

    folder = work / "driver-books"
    folder.mkdir()
    for i in range(10):
        (folder / f"book{i:02d}.txt").write_text(book_text(repeat=6 + i), encoding="utf-8")
    out = work / "driver-out"
    cfg = job_config("summarize", [str(folder)], str(out), model_dir,
                     resources={"actors": 1, "threads_per_actor": 1, "ray_address": "local"},
                     summarize={"segment_tokens": 64, "segment_max_new_tokens": 16})  # fmt: skip
    proc = spawn_driver(cfg, work / "driver-job.yaml", ROOT)
    deadline = time.monotonic() + 300
    while not list(out.glob("part-*.parquet")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    kill_session(proc)  # the driver and its in-process Ray, all at once
    before = len(PartWriter(str(out)).state().done_keys())  # streams ended before the kill
    first = json.loads(next((out / "_jobs").glob("*.json")).read_text())
    report = run_job(cfg)
    records = {r["job_id"]: r for r in (json.loads(p.read_text()) for p in (out / "_jobs").glob("*.json"))}
    rows = _rows(out)
    return {
        "streams": 10,
        "written_before_kill": before,
        "rerun_skipped": report.streams_skipped,
        "rerun_processed": report.streams_ok,
        "parts": len(list(out.glob("*.parquet"))),
        "each_stream_once": _one_of_each(rows) and len(rows[rows.row_kind == "final"]) == 10,
        "temporary_files_left": len(list(out.rglob(".tmp-*"))),
        "killed_run_record": records[first["job_id"]]["state"],
    }


# ------------------------------------------------------------------------------------------ 3. inputs
def bad_inputs(work: Path, model_dir: Path, endpoint: str) -> list[dict[str, Any]]:
    """Each kind of bad input, its job and its outcome."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from helpers_pipeline import book_text, job_config

    from jobs.run import run_job
    from pipeline.job.preflight import InputsError

    d = work / "bad"
    d.mkdir()
    (d / "empty_dir").mkdir()
    book = book_text(repeat=3)
    cases: list[tuple[str, str, str, dict[str, Any]]] = []  # (kind, task, path, extra settings)

    def add(kind: str, name: str, data: bytes | None = None, task: str = "summarize", **extra: Any) -> str:
        path = d / name
        if data is not None:
            path.write_bytes(data)
        cases.append((kind, task, str(path), extra))
        return str(path)

    add("missing file", "not_there.txt")
    cases.append(("glob that matches nothing", "summarize", str(d / "*.nothing"), {}))
    cases.append(("empty folder", "summarize", str(d / "empty_dir"), {}))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "socket.txt"))
    sock.close()
    add("not a regular file (a socket)", "socket.txt")
    if os.geteuid() != 0:
        add("permission denied (mode 000)", "locked.txt", b"secret\n")
        (d / "locked.txt").chmod(0)
    add("binary data", "image.txt", bytes(range(256)) * 64)
    add("wrong encoding (latin-1 in a utf-8 job)", "latin1.txt", "Caf\u00e9 au lait\n".encode("latin-1") * 3)
    add("no text (blank lines)", "blank.txt", b"   \n\n\n")
    add(
        "corrupt gzip (nothing decompresses)",
        "broken.txt.gz",
        b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"\xff" * 64,
    )
    whole = gzip.compress(book_text(repeat=30).encode())
    add("truncated gzip (cut at half)", "cut.txt.gz", whole[: len(whole) // 2])
    add("corrupt Parquet", "bad.parquet", b"PAR1 not really parquet")
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"body": [book]}), buf)
    add("Parquet without the text column", "body.parquet", buf.getvalue().to_pybytes())
    records = [json.dumps({"text": book}), "{not json", json.dumps({"body": "no text"}), json.dumps([1, 2])]
    add("JSONL: a line that is not JSON, a record without text, a record that is not an object",
        "records.jsonl", ("\n".join(records) + "\n").encode())  # fmt: skip
    jsonl = gzip.compress("".join(json.dumps({"text": book}) + "\n" for _ in range(40)).encode())
    add("truncated JSONL.gz (cut at 60%)", "records.jsonl.gz", jsonl[: len(jsonl) * 6 // 10])
    add(
        "qa: a record without questions", "noq.jsonl", (json.dumps({"text": book}) + "\n").encode(), task="qa"
    )
    long_line = add("one 20 MB line, max_tokens_per_stream 200", "long.txt",
                    b"A line.\n" + b"the ship sailed on " * 1_100_000 + b"\n",
                    input={"max_tokens_per_stream": 200})  # fmt: skip
    cases.append(("S3: no such key", "summarize", "s3://faults/missing.txt", {"storage": S3_KEYS}))
    cases.append(("S3: no credentials anywhere", "summarize", "s3://faults/book.txt", {}))
    import boto3
    import s3fs
    from moto import settings

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, **S3_KEYS)
    fs.mkdir("faults")
    fs.pipe_file("faults/book.txt", book.encode())
    fs.pipe_file("faults/secret/book.txt", book.encode())
    # A user whose IAM policy denies reading faults/secret/; moto checks credentials and policies only
    # while INITIAL_NO_AUTH_ACTION_COUNT is 0 (the cases marked "auth").
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id=S3_KEYS["key"], aws_secret_access_key=S3_KEYS["secret"])  # fmt: skip
    iam.create_user(UserName="reader")
    deny = {"Effect": "Deny", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::faults/secret/*"}
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}, deny],
    }
    iam.put_user_policy(UserName="reader", PolicyName="no-secrets", PolicyDocument=json.dumps(policy))
    access = iam.create_access_key(UserName="reader")["AccessKey"]
    reader = {"key": access["AccessKeyId"], "secret": access["SecretAccessKey"]}
    cases.append(("S3: unknown access key", "summarize", "s3://faults/book.txt",
                  {"storage": {"key": "AKIAUNKNOWN", "secret": "x"}, "auth": True}))  # fmt: skip
    cases.append(("S3: IAM policy denies s3:GetObject", "summarize", "s3://faults/secret/book.txt",
                  {"storage": reader, "auth": True}))  # fmt: skip
    no_auth = settings.INITIAL_NO_AUTH_ACTION_COUNT

    out: list[dict[str, Any]] = []
    for i, (kind, task, path, extra) in enumerate(cases):
        sections = dict(extra)
        auth = sections.pop("auth", False)
        if task == "qa":
            sections["qa"] = {"question_column": "questions"}
        cfg = job_config(task, [path], str(work / f"bad-out-{i}"), model_dir, **sections)
        settings.INITIAL_NO_AUTH_ACTION_COUNT = 0 if auth else no_auth
        t0 = time.perf_counter()
        try:
            report = run_job(cfg)
        except InputsError as exc:  # its only input is known bad before reading: refused before Ray
            out.append({"input": kind, "refused": str(exc), "seconds": time.perf_counter() - t0})
            continue
        finally:
            settings.INITIAL_NO_AUTH_ACTION_COUNT = no_auth
        seconds = time.perf_counter() - t0
        rows = _rows(work / f"bad-out-{i}")
        errors = rows[rows.row_kind == "error"]
        damaged = rows[(rows.row_kind != "error") & rows.error_kind.notna()]
        outcome = {
            "input": kind,
            "streams_ok": report.streams_ok,
            "error_rows": len(errors),
            "error_kinds": sorted(set(errors.error_kind)),
            "ok_with_warning": sorted(set(damaged.error_kind)),
            "message": (
                errors.error.iloc[0] if len(errors) else damaged.error.iloc[0] if len(damaged) else ""
            ),
            "tokens": report.tokens,
            "seconds": seconds,
        }
        if path == long_line:
            outcome["message"] = f"streamed {report.tokens} tokens of the 20 MB line in {seconds:.1f} s (job)"
        out.append(outcome)
    return out


# ------------------------------------------------------------------------------------------ 4. S3
def s3_outage(work: Path, model_dir: Path, moto: Any, endpoint: str, seconds: float) -> dict[str, Any]:
    import s3fs
    from helpers_pipeline import book_text, job_config, take_s3_away

    from jobs.run import run_job
    from pipeline.storage import Storage

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, **S3_KEYS)
    fs.mkdir("outage")
    for i in range(8):
        fs.pipe_file(f"outage/in/book{i}.txt", book_text(repeat=3 + i % 4).encode())
    cfg = job_config("summarize", ["s3://outage/in/"], "s3://outage/out", model_dir,
                     resources={"actors": 1, "threads_per_actor": 1}, storage=S3_KEYS)  # fmt: skip
    events: dict[str, float] = {}
    thread = threading.Thread(
        target=take_s3_away, args=(fs, moto, "outage/out", seconds, events), daemon=True
    )
    thread.start()
    report = run_job(cfg)
    thread.join()
    fs.invalidate_cache()
    keys = [k for k in fs.find("outage/out") if "/_jobs/" not in k]
    rows = _rows("s3://outage/out", Storage(endpoint_url=endpoint, region="us-east-1", **S3_KEYS))
    return {
        "streams": 8,
        "outage_seconds": events["up"] - events["down"],
        "written_before_outage": events["parts_before"],
        "streams_ok": report.streams_ok,
        "streams_error": report.streams_error,
        "objects": len(keys),
        "each_stream_once": _one_of_each(rows) and len(rows[rows.row_kind == "final"]) == 8,
    }


# ------------------------------------------------------------------------------------------ 5. edges
#: The tiny model's policy (4 layers: LaCache's ladder needs a short span) and a private Ray per job.
TINY = [
    "--policy",
    "lacache:span=2,overlap=0",
    "--budget",
    "48",
    "--stride",
    "16",
    "--set",
    "resources.ray_address=local",
]


def _cli(
    job: str, args: list[str], env: dict[str, str] | None = None, timeout: float = 900
) -> dict[str, Any]:
    """``python -m jobs.<job> ARGS``: exit status, stdout, stderr, seconds."""
    import subprocess

    base = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    t0 = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", f"jobs.{job}", *args],
        cwd=ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return {"exit": run.returncode, "out": run.stdout, "err": run.stderr, "seconds": time.perf_counter() - t0}


def _line(run: dict[str, Any]) -> str:
    """The one line a run ends with: its error line, else its last line on stderr (or stdout)."""
    err = [line for line in run["err"].splitlines() if line.strip()]
    errors = [line for line in err if line.startswith("error: ")]
    if errors:
        return errors[-1] + ("" if len(errors) == 1 else f" (and {len(errors) - 1} more error lines)")
    lines = err or [line for line in run["out"].splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _job_yaml(work: Path, name: str, cfg: Any) -> str:
    import yaml

    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg.public_dict()))
    return str(path)


def edges(work: Path, model_dir: Path) -> list[dict[str, Any]]:
    """Each edge case (see the module docstring, 5.): its exit status, its one line, its seconds."""
    from helpers_pipeline import RayHead, book_text, job_config

    d = work / "edges"
    d.mkdir()
    book = d / "book.txt"
    book.write_text(book_text(), encoding="utf-8")
    tiny = ["--model", str(model_dir), *TINY]
    out: list[dict[str, Any]] = []

    def add(case: str, run: dict[str, Any], line: str | None = None, **facts: Any) -> None:
        line = line if line is not None else _line(run)
        for prefix in (f"{d}/", f"{ROOT}/"):  # the machine's folders say nothing about the outcome
            line = line.replace(prefix, "")
        row = {"case": case, "exit": run.get("exit"), "line": line}
        row.update(seconds=run.get("seconds"), **facts)
        out.append(row)
        print(
            f"edges: {case}: exit {row['exit']} in {row['seconds'] or 0:.1f} s: {row['line'][:200]}",
            flush=True,
        )

    def timed(check: Any) -> dict[str, Any]:  # an in-process check: its result and seconds
        t0 = time.perf_counter()
        try:
            result: Any = check()
        except Exception as exc:
            result = exc
        return {"result": result, "seconds": time.perf_counter() - t0}

    # A folder with a book, a named pipe and a socket: the job ends, the pipe and the socket are error rows.
    folder = d / "fifo"
    folder.mkdir()
    (folder / "book.txt").write_text(book_text(), encoding="utf-8")
    os.mkfifo(folder / "pipe.txt")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "socket.txt"))
    cfg = job_config(
        "summarize",
        [str(folder)],
        str(d / "fifo-out"),
        model_dir,
        resources={"actors": 1, "threads_per_actor": 1, "ray_address": "local"},
    )
    run = _cli("summarize_books", ["--config", _job_yaml(d, "fifo", cfg)])
    sock.close()
    rows = _rows(d / "fifo-out")
    errors = sorted(Path(s).name for s in rows[rows.row_kind == "error"].stream_id)
    finals = int((rows.row_kind == "final").sum())
    add(
        "a named pipe (FIFO) and a socket in a folder of inputs, with a book",
        run,
        line=f"the job ended; error rows: {', '.join(errors)}; books summarized: {finals}",
        error_rows=errors,
        finals=finals,
    )
    add(
        "partial failure: 2 of 3 streams failed (the pipe, the socket)",
        run,
        line=[x for x in run["err"].splitlines() if x.strip()][-1],
    )

    secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYSECRETKEY"
    run = _cli(
        "summarize_books",
        [
            "--input",
            f"s3://AKIAIOSFODNN7EXAMPLE:{secret}@bucket/x.txt",
            "--input",
            str(book),
            "--output",
            str(d / "secret-out"),
            *tiny,
        ],
    )
    leaked = secret in run["out"] + run["err"] or (d / "secret-out").exists()
    add("credentials in an input URI (s3://KEY:SECRET@bucket/x.txt)", run, secret_shown_or_written=leaked)
    run = _cli(
        "summarize_books",
        [
            "--input",
            str(book),
            "--output",
            f"s3://b/out?X-Amz-Credential=AKIA&X-Amz-Signature={secret}",
            *tiny,
        ],
    )
    add(
        "credentials in the output URI's query (pre-signed)",
        run,
        secret_shown=secret in run["out"] + run["err"],
    )

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    closed_port = ["--endpoint-url", f"http://127.0.0.1:{port}", "--set", "storage.retries=2"]
    run = _cli(
        "summarize_books",
        ["--input", str(book), "--output", "s3://results/out", *tiny, *closed_port],
        env={"AWS_ACCESS_KEY_ID": "EDGEKEY", "AWS_SECRET_ACCESS_KEY": "edge-secret"},
    )
    add("S3 output on a closed port (storage.retries 2)", run)
    run = _cli(
        "summarize_books", ["--input", str(book), "--output", str(d / "id-out"), "--job-id", "../../x", *tiny]
    )
    add("--job-id ../../x", run, written_outside=(d.parent / "x.json").exists())

    questions = d / "questions"
    questions.mkdir()
    run = _cli(
        "answer_questions",
        ["--input", str(book), "--questions-file", str(questions), "--output", str(d / "q-out"), *tiny],
    )
    add("qa.questions_file is a folder", run)
    latin = d / "questions.yaml"
    latin.write_bytes("- Qui est le h\u00e9ros ?\n".encode("latin-1"))
    run = _cli(
        "answer_questions",
        ["--input", str(book), "--questions-file", str(latin), "--output", str(d / "q-out"), *tiny],
    )
    add("qa.questions_file is latin-1, not UTF-8", run)

    code = (
        "import sys, ray\n"
        "def timed_out(*a, **k):\n"
        "    raise Exception('The current node timed out during startup. This could happen because some of "
        "the raylet failed to startup or the GCS has become overloaded.')\n"
        "ray.init = timed_out\n"
        "from jobs.run import main\n"
        "sys.exit(main('summarize', sys.argv[1:]))\n"
    )
    t0 = time.perf_counter()
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-c", code, "--input", str(book), "--output", str(d / "ray-out"), *tiny],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    run = {
        "exit": proc.returncode,
        "out": proc.stdout,
        "err": proc.stderr,
        "seconds": time.perf_counter() - t0,
    }
    record = json.loads(next((d / "ray-out" / "_jobs").glob("*.json")).read_text())["state"]
    add(
        "Ray's node start-up times out (ray.init raises as Ray does)",
        run,
        record=record,
        traceback="Traceback" in proc.stderr,
    )

    # Ctrl-C: SIGINT to a running job once its Ray is up.
    books = d / "sigint"
    books.mkdir()
    for i in range(4):
        (books / f"b{i}.txt").write_text(book_text(repeat=40), encoding="utf-8")
    cfg = job_config(
        "summarize",
        [str(books)],
        str(d / "sigint-out"),
        model_dir,
        resources={"actors": 1, "threads_per_actor": 1, "ray_address": "local"},
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    t0 = time.perf_counter()
    command = [sys.executable, "-m", "jobs.summarize_books", "--config", _job_yaml(d, "sigint", cfg)]
    job = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert job.stderr is not None
    seen = []
    for line in job.stderr:  # the job logs the Ray it started, then its actors
        seen.append(line)
        if "streams on" in line:
            break
    job.send_signal(signal.SIGINT)
    rest, more = job.communicate(timeout=300)
    err = "".join(seen) + more
    run = {"exit": job.returncode, "out": rest, "err": err, "seconds": time.perf_counter() - t0}
    record = json.loads(next((d / "sigint-out" / "_jobs").glob("*.json")).read_text())["state"]
    add(
        "Ctrl-C (SIGINT) while the job runs",
        run,
        record=record,
        traceback="Traceback" in err,
        stderr_lines=len([x for x in err.splitlines() if x.strip()]),
    )

    # In-process checks: the messages of a UTF-16 input, a missing bucket, a record without questions.
    from jobs.config import config_from_dict, load_config
    from pipeline.inputs.readers import iter_lines
    from pipeline.inputs.sources import ReadOptions, expand_inputs

    wide = d / "utf16.txt"
    wide.write_bytes(book_text().encode("utf-16"))
    check = timed(lambda: list(iter_lines(expand_inputs([str(wide)], None, ReadOptions())[0])))
    err_ = check["result"]
    add(
        "UTF-16 input (in-process reader)",
        {"seconds": check["seconds"]},
        line=f"error row [{getattr(err_, 'kind', '?')}]: {err_}",
    )

    from helpers_pipeline import Moto

    from pipeline.storage import Storage

    moto = Moto()
    try:
        storage = Storage(endpoint_url=f"http://{moto.host}:{moto.port}", key="k", secret="s", retries=1)
        check = timed(lambda: expand_inputs(["s3://no-such-bucket/x.txt"], storage, ReadOptions())[0].error)
    finally:
        moto.stop()
    kind, message = check["result"]
    add(
        "an input in a bucket that does not exist (in-process expansion)",
        {"seconds": check["seconds"]},
        line=f"error row [{kind}]: {message}",
    )

    from actors.tasks import make_task
    from pipeline.job.plan import StreamTask

    records = d / "noq.jsonl"
    records.write_text(json.dumps({"id": "s1", "text": "A tale."}) + "\n", encoding="utf-8")

    def no_questions() -> Any:
        cfg = config_from_dict("qa", {"input": {"paths": [str(records)], "id_column": "id"}})
        task = make_task(cfg)
        src = expand_inputs([str(records)], None, task.read_options())[0]
        _, doc = next(iter(task.documents(StreamTask("qa", [src]))))
        next(task.program(None, doc=doc, questions=task.questions_for(doc)))

    check = timed(no_questions)
    err_ = check["result"]
    add(
        "qa: a record without questions (in-process program)",
        {"seconds": check["seconds"]},
        line=f"error row [{getattr(err_, 'kind', '?')}]: {err_}",
    )

    run = _cli("summarize_books", ["--policy", "lacache:budget=256", "--budget", "512", "--dry-run"])
    add("--policy lacache:budget=256 --budget 512", run)
    run = _cli("summarize_books", ["--policy", "lacache:budget=256,span=15", "--dry-run"])
    policy = next((x.strip() for x in run["out"].splitlines() if x.strip().startswith("policy:")), "")
    cfg, _ = load_config("summarize", ["--policy", "lacache:budget=256,span=15"])
    add(
        "--policy lacache:budget=256 (one budget)",
        run,
        line=policy,
        config_budget=cfg.policy.budget,
        policy_budget=cfg.policy.build().budget,
        recorded_budget=cfg.public_dict()["policy"]["budget"],
    )

    run = _cli("answer_questions", ["--config", "jobs/configs/answer_questions.yaml", "--dry-run"])
    streams = next((x.strip() for x in run["out"].splitlines() if x.strip().startswith("streams:")), "")
    add("fresh clone: the QA sample, --dry-run", run, line=streams)
    run = _cli("summarize_books", ["--dry-run"])
    caps = next((x.strip() for x in run["out"].splitlines() if x.strip().startswith("caps:")), "")
    add("fresh clone: the main job, --dry-run", run, line=caps)
    run = _cli(
        "summarize_books",
        [
            "--input",
            str(d / "nope.txt"),
            "--input",
            str(d / "*.nothing"),
            "--output",
            str(d / "nope-out"),
            *tiny,
        ],
    )
    add("none of the inputs exists", run)

    for job in ("summarize_books", "answer_questions", "analyze_logs"):
        run = _cli(job, ["--help"])
        add(f"{job} --help", run, line=f"{len(run['out'].splitlines())} lines of help")

    state, token = d / "heads", d / "token"
    t0 = time.perf_counter()
    first = RayHead(state, token)
    second = None
    try:
        second = RayHead(state, token)
        said = [x for x in second.started.stderr.splitlines() if "is in use" in x]
        ports_first, ports_second = first.state["LONGREAD_RAY_PORTS"], second.state["LONGREAD_RAY_PORTS"]
        stopped = second.stop()
        gone = not second.alive()
        second = None
        status = subprocess.run(
            [str(Path(sys.prefix) / "bin" / "ray"), "status", "--address", first.gcs],
            env={**first.env, "RAY_AUTH_MODE": "token"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        run = {"exit": stopped.returncode, "seconds": time.perf_counter() - t0}
        add(
            "a second Ray head beside a first (scripts/ray_head.sh), then scripts/ray_stop.sh on it",
            run,
            line=(said[0] if said else "no port in use") + f"; {len(said)} ports replaced; second stopped, "
            f"nothing of it left: {gone}; the first answers `ray status`: {status.returncode == 0}",
            ports_first=ports_first,
            ports_second=ports_second,
        )
    finally:
        for head in (second, first):
            if head is not None:
                head.stop()
    return out


PARTS = ("driver", "actors", "inputs", "s3", "edges")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--books", type=int, default=24)
    parser.add_argument("--outage-seconds", type=float, default=8.0)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which rows to run")
    parser.add_argument("--out", type=Path, default=Path("results/fault_table.json"))
    args = parser.parse_args()

    import logging

    import ray
    from helpers_pipeline import Moto, build_tiny_model

    logging.basicConfig(level=logging.WARNING)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    moto = Moto()
    endpoint = f"http://{moto.host}:{moto.port}"
    # No credentials in the environment (the no-credentials case); the S3 cases pass theirs in the config.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        os.environ.pop(name, None)
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_DEFAULT_REGION="us-east-1",
                      AWS_SHARED_CREDENTIALS_FILE="/nonexistent", AWS_CONFIG_FILE="/nonexistent",
                      AWS_EC2_METADATA_DISABLED="true")  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="fault-table-"))
    result: dict[str, Any] = {}
    try:
        model_dir = build_tiny_model(work / "tiny-model")
        if "driver" in args.parts:
            result["driver"] = killed_driver(work, model_dir)  # its own Ray, in its own process
        if "edges" in args.parts:
            result["edges"] = edges(work, model_dir)  # subprocesses with their own Ray
        in_process = bool(set(args.parts) - {"driver", "edges"})  # the parts that run jobs in this process
        if in_process:
            ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
        if "actors" in args.parts:
            result["actors"] = killed_actors(work, model_dir, args.books, args.kills)
        if "inputs" in args.parts:
            result["inputs"] = bad_inputs(work, model_dir, endpoint)
        if "s3" in args.parts:
            result["s3_outage"] = s3_outage(work, model_dir, moto, endpoint, args.outage_seconds)
        if in_process:
            ray.shutdown()
    finally:
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)
    if result.keys() & {"actors", "driver", "s3_outage"}:
        print("| fault | what happened | outcome |")
        print("|---|---|---|")
    if "actors" in result:
        a = result["actors"]
        print(f"| stream actors killed (SIGKILL) during one job | {a['kills']} kills, {a['streams']} "
              f"streams, {a['seconds']:.0f} s (uninterrupted: {a['uninterrupted_seconds']:.0f} s) | "
              f"{a['streams_ok']} ok, {a['streams_error']} errors; {a['parts']} parts, each stream once: "
              f"{a['each_stream_once']}; {a['resumed_from_checkpoints']} resumed from checkpoints; rows "
              f"equal to an uninterrupted run: {a['rows_equal_uninterrupted']} ({a['streams_differing']} "
              "streams differ) |")  # fmt: skip
    if "driver" in result:
        d = result["driver"]
        print(f"| driver killed (its process group), job re-run | {d['written_before_kill']} of "
              f"{d['streams']} streams written before the kill | re-run: {d['rerun_skipped']} skipped, "
              f"{d['rerun_processed']} processed; {d['parts']} parts, each stream once: "
              f"{d['each_stream_once']}; temporary files left: {d['temporary_files_left']}; killed run's "
              f"record: {d['killed_run_record']} |")  # fmt: skip
    if "s3_outage" in result:
        o = result["s3_outage"]
        print(f"| S3 endpoint gone (connections refused) | {o['outage_seconds']:.0f} s outage after "
              f"{o['written_before_outage']} of {o['streams']} streams | {o['streams_ok']} ok, "
              f"{o['streams_error']} errors; {o['objects']} objects, each stream once: "
              f"{o['each_stream_once']} |")  # fmt: skip
    inputs = result.get("inputs", [])
    if inputs:
        print("\n| bad input | outcome | message (shortened) |")
        print("|---|---|---|")
    for r in inputs:
        if "refused" in r:
            print(f"| {r['input']} | refused before Ray (exit 2) | {r['refused'][:157]} |")
            continue
        if r["error_rows"]:
            what = f"{r['error_rows']} error row(s) `{', '.join(r['error_kinds'])}`; {r['streams_ok']} ok"
        elif r["ok_with_warning"]:
            what = f"{r['streams_ok']} ok, rows flagged `{', '.join(r['ok_with_warning'])}`"
        else:
            what = f"{r['streams_ok']} ok"
        message = " ".join(str(r["message"]).split())
        message = message if len(message) <= 160 else message[:157] + "..."
        print(f"| {r['input']} | {what} | {message.replace('|', '/')} |")
    if "edges" in result:
        print("\n| case | exit status | the one line (shortened) | also checked | seconds |")
        print("|---|---|---|---|---|")
        for r in result["edges"]:
            line = " ".join(str(r["line"]).split())
            line = line if len(line) <= 200 else line[:197] + "..."
            status = "" if r["exit"] is None else r["exit"]
            facts = "; ".join(
                f"{k}: {v}" for k, v in r.items() if k not in ("case", "exit", "line", "seconds")
            )
            print(f"| {r['case']} | {status} | {line.replace('|', '/')} | {facts} | {r['seconds']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print(f"\nJSON: {args.out}")


if __name__ == "__main__":
    main()
