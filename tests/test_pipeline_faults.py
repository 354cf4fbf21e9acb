"""Faults end to end on a local Ray with the tiny model: inputs the job may not read (no S3 credentials, S3
AccessDenied) become error rows while the rest completes; an output that fills up or turns read-only stops
the job with one message, a failed job record and no temporary file; a killed actor's stream resumes from
its checkpoint with the rows of an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers_pipeline import book_text, job_config, local_ray, read_output

from actors.checkpoint import Checkpoint
from jobs.run import run_job
from pipeline.job.preflight import InputsError
from pipeline.output.writer import CHECKPOINTS_DIR

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[1]
ADMIN = {"key": "ADMINKEYFORSETUP", "secret": "admin-secret"}
#: No credentials anywhere botocore looks (environment, files, instance metadata), only where S3 is.
NO_CREDENTIALS = {
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
    "AWS_CONFIG_FILE": "/nonexistent/config",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_DEFAULT_REGION": "us-east-1",
}
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 and IAM on a loopback port, with a bucket of books; the environment has no credentials."""
    server_module = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as env:  # restored when the module's tests are done
        for name in CREDENTIAL_VARIABLES:
            env.delenv(name, raising=False)
        for name, value in {**NO_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}.items():
            env.setenv(name, value)
        fs = s3fs.S3FileSystem(
            key=ADMIN["key"], secret=ADMIN["secret"], client_kwargs={"endpoint_url": endpoint}
        )
        fs.mkdir("guarded")  # moto's buckets outlive the server (one state per process): a name of its own
        fs.pipe_file("guarded/open/book.txt", book_text(repeat=3).encode())
        fs.pipe_file("guarded/secret/book.txt", book_text(repeat=2).encode())
        yield endpoint
        server.stop()


@pytest.fixture(scope="module")
def ray_local(s3):
    with local_ray() as ray:
        yield ray


def test_s3_inputs_without_credentials_are_error_rows_and_the_rest_completes(s3, ray_local, model_dir,
                                                                              tmp_path):  # fmt: skip
    (tmp_path / "local.txt").write_text(book_text(repeat=2), encoding="utf-8")
    inputs = [
        "s3://guarded/open/book.txt",
        "s3://guarded/open/",
        "s3://guarded/*/book.txt",
        str(tmp_path / "local.txt"),
    ]
    report = run_job(job_config("summarize", inputs, str(tmp_path / "out"), model_dir))
    assert (report.streams_ok, report.streams_error) == (1, 3), report.errors
    rows = read_output(tmp_path / "out")
    errors = rows[rows.row_kind == "error"]
    assert set(errors.error_kind) == {"credentials"}
    assert errors.error.str.contains("AWS_ACCESS_KEY_ID").all()
    assert set(errors.stream_id) == set(inputs[:3])  # a key, a prefix, a glob: each its own error row
    assert rows[rows.row_kind == "final"].stream_id.tolist() == [str(tmp_path / "local.txt")]


def test_s3_access_denied_and_unknown_keys_are_error_rows(s3, ray_local, model_dir, tmp_path):
    import boto3
    from moto import settings

    iam = boto3.client("iam", endpoint_url=s3, region_name="us-east-1",
                       aws_access_key_id=ADMIN["key"], aws_secret_access_key=ADMIN["secret"])  # fmt: skip
    iam.create_user(UserName="reader")
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
            {"Effect": "Deny", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::guarded/secret/*"},
        ],
    }
    iam.put_user_policy(UserName="reader", PolicyName="no-secrets", PolicyDocument=json.dumps(policy))
    access = iam.create_access_key(UserName="reader")["AccessKey"]
    saved = settings.INITIAL_NO_AUTH_ACTION_COUNT
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # from here on, moto checks every request's credentials
    try:
        inputs = ["s3://guarded/open/book.txt", "s3://guarded/secret/book.txt"]
        reader = {"key": access["AccessKeyId"], "secret": access["SecretAccessKey"]}
        cfg = job_config("summarize", inputs, str(tmp_path / "out"), model_dir, storage=reader)
        report = run_job(cfg)
        assert (report.streams_ok, report.streams_error) == (1, 1), report.errors
        rows = read_output(tmp_path / "out")
        denied = rows[rows.row_kind == "error"].iloc[0]
        assert denied.stream_id == inputs[1] and denied.error_kind == "access_denied"
        assert "s3:GetObject" in denied.error and inputs[1] in denied.error

        local = tmp_path / "local.txt"
        local.write_text(book_text(repeat=2), encoding="utf-8")
        unknown = job_config("summarize", [inputs[0], str(local)], str(tmp_path / "out2"), model_dir,
                             storage={"key": "AKIANOSUCHKEY", "secret": "wrong"})  # fmt: skip
        report = run_job(unknown)
        assert (report.streams_ok, report.streams_error) == (1, 1)
        rows = read_output(tmp_path / "out2")
        assert rows[rows.row_kind == "error"].error_kind.tolist() == ["credentials"]
        # Alone, the unreadable key stops the job before Ray: nothing else would run.
        alone = job_config("summarize", inputs[:1], str(tmp_path / "out3"), model_dir,
                           storage={"key": "AKIANOSUCHKEY", "secret": "wrong"})  # fmt: skip
        with pytest.raises(InputsError, match=r"none of the 1 inputs can be read: .*\[credentials\]"):
            run_job(alone)
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = saved


# ------------------------------------------------------------------------------- output failures
def _private_mounts() -> bool:
    """Whether this machine lets us mount a small tmpfs in a private mount namespace (``unshare -rm``)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, timeout=30)  # fmt: skip
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(
    not _private_mounts(),
    reason="needs `unshare -rm` and tmpfs mounts (user namespaces) for a real full disk",
)


def _job_in_a_small_filesystem(tmp_path: Path, model_dir: Path, setup: str) -> tuple[int, str, str]:
    """Run the CLI job with its output on a tmpfs mounted just for it; ``setup`` prepares the mount (shell,
    ``$OUT`` is the output folder). Returns the job's exit status, its stderr, and what the output folder
    held afterwards (a listing and the job records, read inside the namespace before the mount goes)."""
    books = tmp_path / "books"
    books.mkdir()
    for i in range(8):
        (books / f"book{i}.txt").write_text(book_text(repeat=3 + i), encoding="utf-8")
    mount = tmp_path / "mnt"
    mount.mkdir()
    cfg = job_config("summarize", [str(books)], str(mount / "out"), model_dir,
                     resources={"actors": 1, "threads_per_actor": 1, "ray_address": "local"})  # fmt: skip
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(cfg.public_dict()))
    script = f"""
        OUT={mount}/out
        mount -t tmpfs -o size=64k tmpfs {mount}
        {setup}
        {sys.executable} -m jobs.summarize_books --config {config} 2> {tmp_path}/stderr.txt
        echo "exit=$?"
        echo "--- files"; find {mount} -type f | sort
        echo "--- records"; cat $OUT/_jobs/*.json 2>/dev/null
    """
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    stdout = proc.stdout
    status = int(stdout.split("exit=", 1)[1].split()[0])
    return status, (tmp_path / "stderr.txt").read_text(), stdout.split("exit=", 1)[1]


def _the_one_message(stderr: str) -> str:
    """The job's error line; fails on anything else a user would have to read (tracebacks, Ray's error or
    retry lines). Allowed besides: the driver's INFO progress (the job runs without a bar) and Ray 2.60's
    warning that token authentication is on."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    allowed = re.compile(r"^\d{4}-\d\d-\d\d [\d:,.]+\s+(INFO|DEBUG) |Token authentication is enabled")
    errors = [line for line in lines if line.startswith("error: ")]
    others = [line for line in lines if not line.startswith("error: ") and not allowed.search(line)]
    assert len(errors) == 1 and not others, stderr
    return errors[0]


@needs_mounts
def test_a_full_output_stops_the_job_with_one_message(tmp_path, model_dir):
    # 64 KiB hold the job record and a few parts of the tiny model's summaries, not eight.
    status, stderr, after = _job_in_a_small_filesystem(tmp_path, model_dir, "")
    assert status == 3, stderr
    line = _the_one_message(stderr)
    assert line.startswith(f"error: cannot write the output {tmp_path / 'mnt' / 'out'}")
    assert "no space left on device" in line and "re-run resumes" in line
    files, records = after.split("--- records")
    assert ".tmp-" not in files  # nothing half-written left behind
    record = json.loads(records)
    assert record["state"] == "failed" and "no space left on device" in record["error"]


@needs_mounts
def test_a_read_only_output_stops_the_job_with_one_message(tmp_path, model_dir):
    setup = "mkdir -p $OUT && mount -o remount,ro {mnt}".format(mnt=tmp_path / "mnt")
    status, stderr, _ = _job_in_a_small_filesystem(tmp_path, model_dir, setup)
    assert status == 3, stderr
    line = _the_one_message(stderr)
    assert line.startswith(f"error: cannot write the output {tmp_path / 'mnt' / 'out'}")
    assert "read-only file system" in line and "output.path" in line


# ------------------------------------------------------------------------------- checkpoints
def test_checkpoint_killed_actor_resumes_its_stream_with_equal_rows(ray_local, model_dir, tmp_path):
    """One long stream on one actor checkpoints every 64 tokens; its actor is killed (SIGKILL) after a
    checkpoint. Ray Data restarts the actor and hands it the stream again: it resumes from the checkpoint,
    and its rows equal those of a run that was never interrupted. (``streams_per_actor: 1``: the stream is
    alone in its batch in both runs, so not even float rounding can differ.)"""
    book = tmp_path / "long.txt"
    book.write_text(book_text(repeat=80), encoding="utf-8")

    def config(out: str) -> object:
        cfg = job_config("summarize", [str(book)], str(tmp_path / out), model_dir,
                         resources={"actors": 1, "threads_per_actor": 1, "streams_per_actor": 1},
                         summarize={"segment_tokens": 256, "segment_max_new_tokens": 6})  # fmt: skip
        cfg.output.checkpoint_every_tokens = 64
        cfg.output.commit_every_rows = 1  # a checkpoint is written once the rows before it are committed
        return cfg

    reference = run_job(config("reference"))
    assert reference.streams_ok == 1 and reference.streams_resumed == 0
    killed: dict[str, object] = {}

    def kill_after_a_checkpoint() -> None:
        folder = tmp_path / "killed" / CHECKPOINTS_DIR
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            files = [p for p in folder.glob("*.ckpt")] if folder.is_dir() else []
            if files:
                try:
                    checkpoint = Checkpoint.from_bytes(files[0].read_bytes())
                except (OSError, ValueError):  # replaced while read: read the next one
                    continue
                if checkpoint.tokens >= 256:
                    pid = int(checkpoint.worker.split(":")[1])
                    os.kill(pid, signal.SIGKILL)
                    killed.update(pid=pid, tokens=checkpoint.tokens)
                    return
            time.sleep(0.02)

    thread = threading.Thread(target=kill_after_a_checkpoint, daemon=True)
    thread.start()
    report = run_job(config("killed"))
    thread.join(timeout=10)
    assert killed, "the actor was not killed"
    assert report.streams_ok == 1 and report.streams_resumed == 1
    timing = ["job_id", "worker", "created_at", "stream_seconds", "feed_seconds", "generate_seconds",
              "tokens_per_second"]  # fmt: skip
    got, want = (read_output(tmp_path / name).drop(columns=timing) for name in ("killed", "reference"))
    pd.testing.assert_frame_equal(got.sort_values("segment_index").reset_index(drop=True),
                                  want.sort_values("segment_index").reset_index(drop=True))  # fmt: skip
    rows = read_output(tmp_path / "killed")
    final = rows[rows.row_kind == "final"].iloc[0]
    assert f":{killed['pid']}:" not in final.worker  # finished by the restarted actor ...
    assert rows.worker.str.contains(f":{killed['pid']}:").any()  # ... segments before the kill kept
    assert not list((tmp_path / "killed" / CHECKPOINTS_DIR).glob("*"))
