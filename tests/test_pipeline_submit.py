"""`ray job submit` as the README writes it: a local head from scripts/ray_head.sh (token auth, the project's
interpreter; stopped by scripts/ray_stop.sh, which leaves nothing of it), a job submitted with a working_dir
through Ray's JobSubmissionClient, its Parquet read back; relative outputs refused under submission; Ray's
known false alarm absorbed, nothing else hidden."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers_pipeline import RayHead, book_text, build_tiny_model, job_config

from pipeline.cluster.raylog import RESTART_WARNING, capture_stderr_fd
from pipeline.cluster.submit import JOB_CONFIG_ENV, check_output_path, submitted_job

ROOT = Path(__file__).resolve().parents[1]
HEAD_SCRIPT = ROOT / "scripts" / "ray_head.sh"
#: An error-level log line, or a traceback.
ERROR_LINE = re.compile(
    r"^\[[^\]]* [EF] \d+ \d+\]"  # Ray's C++ log: "[time E pid tid] file.cc:N: ..."
    r"|^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(?:ERROR|CRITICAL)\s"  # Python logging (Ray's and ours)
    r"|^Traceback",
    re.MULTILINE,
)
RAY_LINE = (
    b"[2026-11-26 14:24:06,615 E 10063 10063] core_worker.cc:2465: Actor with class name: "
    b"'MapWorker(MapBatches(StreamWorker))' and ID: '12a5e48419ea08419c98ed8c01000000' has constructor "
    b"arguments in the object store and max_restarts > 0. If the arguments in the object store go out of "
    b"scope or are lost, the actor restart will fail. See https://github.com/ray-project/ray/issues/53727 "
    b"for more details.\n"
)


# ------------------------------------------------------------------------------------ without Ray
def submission_env(working_dir: str | None = "gcs://_ray_pkg_0123abcd.zip") -> dict[str, str]:
    runtime_env = {"working_dir": working_dir} if working_dir else {}
    config = {"runtime_env": runtime_env, "metadata": {"job_submission_id": "raysubmit_abc"}}
    return {JOB_CONFIG_ENV: json.dumps(config)}


def test_submit_relative_output_is_refused_naming_the_fix():
    job = submitted_job(submission_env())
    assert job is not None and job.submission_id == "raysubmit_abc" and job.working_dir
    with pytest.raises(ValueError) as err:
        check_output_path("output/summarize_books", job)
    message = str(err.value)
    assert "'output/summarize_books' is relative" in message and "raysubmit_abc" in message
    assert '--output "$PWD/output/summarize_books"' in message and "s3://" in message
    assert "temporary copy of the uploaded working directory" in message
    with pytest.raises(ValueError, match="supervisor's directory"):  # submitted without a working_dir
        check_output_path("./out", submitted_job(submission_env(working_dir=None)))
    for fine in ("/data/out", "~/out", "file:///data/out", "s3://bucket/prefix"):
        check_output_path(fine, job)
    check_output_path("output/summarize_books", submitted_job({}))  # a local run: relative to the cwd
    assert submitted_job({}) is None


def test_submit_entrypoint_with_a_python_lacking_the_dependencies_names_the_fix():
    # -S: no site-packages, as a bare `python` outside the project's environment would be.
    proc = subprocess.run(
        [sys.executable, "-S", "-m", "jobs.summarize_books"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 1 and "No module named" not in proc.stderr
    assert "lacks torch" in proc.stderr and "scripts/ray_head.sh" in proc.stderr


def test_ray_restart_warning_pattern_and_stderr_capture_lose_nothing():
    other = b"(pid=12) a worker's line\n[2026-11-26 14:24:06,700 E 1 1] core_worker.cc:99: a real error\n"
    first, second = other.splitlines(keepends=True)
    assert RESTART_WARNING.subn(b"", first + RAY_LINE + second) == (other, 1)
    assert RESTART_WARNING.subn(b"", RAY_LINE.rstrip(b"\n")) == (b"", 1)  # also as the very last bytes
    assert RESTART_WARNING.subn(b"", other) == (other, 0)

    def noisy() -> int:
        os.write(2, b"written to fd 2, as Ray's C++ log does\n")
        return 7

    before = os.fstat(2)
    result, captured = capture_stderr_fd(noisy)
    assert result == 7 and captured == b"written to fd 2, as Ray's C++ log does\n"
    assert (os.fstat(2).st_dev, os.fstat(2).st_ino) == (before.st_dev, before.st_ino)  # fd 2 is back

    def failing() -> int:
        os.write(2, b"a real error, then the failure\n")
        raise RuntimeError("boom")

    read, write = os.pipe()  # fd 2 points at a pipe here, so the test sees what reaches it
    saved = os.dup(2)
    os.dup2(write, 2)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            capture_stderr_fd(failing)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(write)
    with os.fdopen(read, "rb") as pipe:
        assert pipe.read() == b"a real error, then the failure\n"  # not swallowed by the capture


# ------------------------------------------------------------------------------ with a Ray head
def wait_for_job(client, submission_id: str, head: RayHead, timeout: float = 420.0):
    deadline = time.monotonic() + timeout
    while not client.get_job_status(submission_id).is_terminal():
        head.remember_tree()  # the job's driver and actors too, for a complete cleanup
        assert time.monotonic() < deadline, client.get_job_logs(submission_id)[-3000:]
        time.sleep(1.0)
    return client.get_job_info(submission_id), client.get_job_logs(submission_id)


@pytest.mark.ray
def test_submit_job_with_working_dir_succeeds_and_writes_parquet(tmp_path):
    pytest.importorskip("ray.job_submission")
    if not (Path(sys.prefix) / "bin" / "ray").is_file():
        pytest.skip(f"no `ray` executable in {sys.prefix}/bin: the head script needs the project's venv")
    from ray.job_submission import JobStatus

    books = tmp_path / "books"
    books.mkdir()
    for i in range(2):
        (books / f"book{i}.txt").write_text(book_text(repeat=2 + i), encoding="utf-8")
    out = tmp_path / "out"
    model = build_tiny_model(tmp_path / "tiny-model")
    cfg = job_config("summarize", [str(books)], str(out), model, resources={"actors": 1})
    config_file = tmp_path / "job.yaml"
    config_file.write_text(yaml.safe_dump(cfg.public_dict()))

    head = RayHead(tmp_path / "heads", tmp_path / "token", "--num-cpus", "2", "--include-dashboard", "true")
    try:
        client = head.client()
        # Exactly the README's entrypoint: a bare `python`, resolved by the head's PATH to the project's.
        entry = f"python -m jobs.summarize_books --config {config_file}"
        submission = client.submit_job(entrypoint=entry, runtime_env={"working_dir": str(ROOT)})
        info, logs = wait_for_job(client, submission, head)
        assert info.status == JobStatus.SUCCEEDED and info.driver_exit_code == 0, logs[-3000:]
        assert "2 streams processed (2 ok, 0 errors)" in logs, logs[-3000:]
        assert not ERROR_LINE.search(logs), logs[-3000:]  # quiet: no error-level line, no traceback

        frame = pd.read_parquet(out)
        finals = frame[frame.row_kind == "final"]
        assert sorted(finals.stream_id) == [str(books / "book0.txt"), str(books / "book1.txt")]
        assert (frame.job_id == finals.job_id.iloc[0]).all()
        record = json.loads(next((out / "_jobs").glob("*.json")).read_text())
        assert record["state"] == "finished" and record["streams_ok"] == 2

        packages = [
            p for p in head.temp_dir.glob("session_*/runtime_resources/working_dir_files/*") if p.is_dir()
        ]
        assert packages and all((p / "jobs" / "summarize_books.py").is_file() for p in packages)
        for excluded in (".venv", "output", ".git"):  # .gitignore (and Ray's defaults) keep these home
            assert not any((p / excluded).exists() for p in packages), excluded

        # A relative output is refused at once, with the fix, before anything is written.
        entry = f"python -m jobs.summarize_books --config {config_file} --output output/summarize_books"
        submission = client.submit_job(entrypoint=entry, runtime_env={"working_dir": str(ROOT)})
        info, logs = wait_for_job(client, submission, head)
        assert info.status == JobStatus.FAILED and info.driver_exit_code == 2, logs[-3000:]
        assert "is relative" in logs and '--output "$PWD/output/summarize_books"' in logs, logs[-3000:]
        assert not any((p / "output").exists() for p in packages)
    finally:
        stopped = head.stop()
    assert stopped.returncode == 0, stopped.stderr
    assert not head.alive()  # scripts/ray_stop.sh left nothing of the head, its node or its jobs
