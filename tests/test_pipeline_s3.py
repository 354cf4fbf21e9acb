"""S3 end to end against a local S3-compatible server (moto on 127.0.0.1): inputs and Parquet in buckets."""

from __future__ import annotations

import gzip
import io
import json
import logging
import threading

import pyarrow.parquet as pq
import pytest
from helpers_pipeline import (
    Moto,
    book_text,
    job_config,
    local_ray,
    log_lines,
    read_output,
    take_s3_away,
    write_good_corpus,
)

from jobs.run import run_job
from pipeline.job.report import format_report
from pipeline.output.schema import SCHEMA
from pipeline.storage import Storage

pytestmark = pytest.mark.ray

SECRET = "fake-secret-do-not-log-8c1f"
OUTAGE_SECONDS = 6.0  # longer than a stream of the tiny model takes: the next S3 request meets the gap
KEY_ID = "FAKEKEYIDDONOTLOG"


@pytest.fixture(scope="module")
def moto():
    pytest.importorskip("moto.server")
    server = Moto()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3_server(moto):
    """moto's S3 on a free loopback port; AWS_* variables set before Ray starts, so actors inherit them."""
    host, port = moto.host, moto.port
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with pytest.MonkeyPatch.context() as patch:  # restored when the module's tests are done
        for name, value in env.items():
            patch.setenv(name, value)
        import s3fs

        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL"]})
        fs.mkdir("corpus")
        fs.mkdir("results")
        yield fs


@pytest.fixture(scope="module")
def ray_local(s3_server):
    with local_ray() as ray:
        yield ray


def test_books_from_a_bucket_to_a_bucket_with_resume(s3_server, ray_local, model_dir, tmp_path, caplog):
    fs = s3_server
    files = write_good_corpus(tmp_path / "in")
    for path in files.values():
        fs.put_file(str(path), f"corpus/books/{path.name}")
    inputs = ["s3://corpus/books/", "s3://corpus/books/missing.txt"]
    cfg = job_config("summarize", inputs, "s3://results/summaries", model_dir)
    with caplog.at_level(logging.INFO):  # (DEBUG would show botocore's own request signing)
        report = run_job(cfg)
    assert (report.streams_ok, report.streams_error) == (5, 1)
    keys = sorted(k.split("/", 2)[2] for k in fs.find("results/summaries"))
    assert all(k.startswith(("part-", "_jobs/")) for k in keys)  # no temporary objects
    parts = [k for k in keys if k.startswith("part-")]
    assert 1 <= len(parts) <= 6  # parts hold many streams

    rows = read_output("s3://results/summaries", Storage.from_env())
    assert set(rows.row_kind) == {"segment", "final", "error"}
    assert rows.source_uri.str.startswith("s3://corpus/books/").all()
    error = rows[rows.row_kind == "error"].iloc[0]
    assert error.error_kind == "missing" and "s3://corpus/books/missing.txt: no such S3 key" in error.error
    with fs.open(f"results/summaries/{next(k for k in keys if k.startswith('part-'))}", "rb") as fh:
        assert pq.read_schema(io.BytesIO(fh.read())).equals(SCHEMA, check_metadata=False)

    # Credentials appear nowhere: logs, report, job records, rows.
    record = fs.cat_file(next(k for k in fs.find("results/summaries/_jobs")))
    visible = caplog.text + format_report(report) + record.decode() + rows.to_json(date_format="iso")
    assert SECRET not in visible and KEY_ID not in visible
    assert json.loads(record)["config"]["storage"]["secret"] in (None, "**********")

    before = {k: fs.info(k)["LastModified"] for k in fs.find("results/summaries") if "/_jobs/" not in k}
    fs.invalidate_cache()
    again = run_job(cfg)
    # 3 books and the missing key skipped; the file of 2 records marked done as a file (not read again)
    assert (again.streams_ok, again.streams_error, again.streams_skipped, again.files_skipped) == (0, 0, 4, 1)
    fs.invalidate_cache()
    after = {k: fs.info(k)["LastModified"] for k in fs.find("results/summaries") if "/_jobs/" not in k}
    assert after == before


def test_logs_glob_over_a_bucket(s3_server, ray_local, model_dir, tmp_path):
    fs = s3_server
    fs.pipe_file("corpus/logs/web-1.log.gz", gzip.compress(("\n".join(log_lines(60)) + "\n").encode()))
    fs.pipe_file("corpus/logs/db-1.log", ("\n".join(log_lines(40, "db-1")) + "\n").encode())
    fs.pipe_file("corpus/logs/notes.txt", b"not a log\n")
    cfg = job_config("logs", ["s3://corpus/logs/*.log*"], "s3://results/logs", model_dir)
    report = run_job(cfg)
    assert (report.streams_ok, report.streams_error) == (2, 0)
    rows = read_output("s3://results/logs", Storage.from_env())
    windows, summaries = rows[rows.row_kind == "window"], rows[rows.row_kind == "summary"]
    assert len(summaries) == 2 and summaries.log_lines.sum() == 100
    assert windows.groupby("stream_id").log_lines.sum().to_dict() == {
        "s3://corpus/logs/db-1.log": 40,
        "s3://corpus/logs/web-1.log.gz": 60,
    }


def test_s3_outage_mid_run_is_retried_and_every_stream_written_once(
    moto, s3_server, ray_local, model_dir, tmp_path
):
    """The S3 endpoint goes away once the first stream is written, for longer than a stream takes, then
    comes back: botocore's retries (storage.retries) carry every request over the gap."""
    fs = s3_server
    names = [f"book{i}.txt" for i in range(6)]
    for i, name in enumerate(names):
        fs.pipe_file(f"corpus/outage/{name}", book_text(repeat=2 + i % 3).encode())
    cfg = job_config("summarize", ["s3://corpus/outage/"], "s3://results/outage", model_dir,
                     resources={"actors": 1, "threads_per_actor": 1})  # fmt: skip
    outage: dict[str, float | int] = {}
    thread = threading.Thread(
        target=take_s3_away, args=(fs, moto, "results/outage", OUTAGE_SECONDS, outage), daemon=True
    )
    thread.start()
    try:
        report = run_job(cfg)
    finally:
        thread.join(timeout=OUTAGE_SECONDS + 310)
        if "up" not in outage and "down" in outage:
            moto.start()
    assert "up" in outage, "the outage did not happen"
    assert (report.streams_ok, report.streams_error) == (6, 0), report.errors
    assert outage["parts_before"] < 6  # the server went away mid-run, with streams left to write

    fs.invalidate_cache()
    keys = sorted(k.split("/", 2)[2] for k in fs.find("results/outage") if "/_jobs/" not in k)
    assert keys and all(k.startswith("part-") for k in keys)  # parts only: no temporary objects
    written_after = [
        k for k in keys if fs.info(f"results/outage/{k}")["LastModified"].timestamp() > outage["up"]
    ]
    assert written_after, "no stream was written after the endpoint came back"
    rows = read_output("s3://results/outage", Storage.from_env())
    finals = rows[rows.row_kind == "final"]
    assert sorted(finals.stream_id) == [f"s3://corpus/outage/{n}" for n in names]
    assert not rows.duplicated(["stream_id", "row_kind", "segment_index"]).any()


def test_folder_marker_objects_are_not_inputs(s3_server):
    """The empty ``prefix/`` object an S3 console's "Create folder" leaves is not a file of the prefix."""
    from pipeline.inputs.sources import TextFormat, expand_inputs

    fs = s3_server
    fs.call_s3("put_object", Bucket="corpus", Key="marked/", Body=b"")
    fs.pipe_file("corpus/marked/a.txt", b"Call me Ishmael.\n")
    fs.invalidate_cache()
    for spec in ("s3://corpus/marked/", "s3://corpus/marked/*"):
        found = expand_inputs([spec], Storage.from_env(), TextFormat())
        assert [(s.uri, s.error) for s in found] == [("s3://corpus/marked/a.txt", None)], spec
