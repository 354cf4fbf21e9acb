"""Edges of the command line and of the inputs: pipes and devices among the inputs, credentials in URIs,
an unreachable S3 output, unsafe job ids, bad questions files, wide-encoded text, a missing bucket, records
without questions, one truth for the policy's budget. No Ray here (the end-to-end run of a folder with a
pipe is in ``tests/test_pipeline_ray.py``)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from pathlib import Path

import pytest
from helpers_pipeline import Moto, book_text

from jobs.config import ConfigError, config_from_dict, load_config
from jobs.run import main
from pipeline.inputs.readers import iter_lines
from pipeline.inputs.sources import InputError, ReadOptions, SourceFile, expand_inputs

OPTS = ReadOptions()


def _errors(sources: list[SourceFile]) -> dict[str, tuple[str, str] | None]:
    return {Path(s.uri).name: s.error for s in sources}


def _tiny(model_dir: Path) -> list[str]:
    """Flags for the tests' tiny model (4 layers: LaCache's ladder needs a short span)."""
    return ["--model", str(model_dir), "--policy", "lacache:span=2,overlap=0", "--budget", "48",
            "--stride", "16"]  # fmt: skip


def _one_line(err: str) -> str:
    """The one ``error:`` line of a command's stderr; nothing else but log lines of INFO or below."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and len(lines) == 1, err
    return errors[0]


# ---------------------------------------------------------------------------- pipes, sockets, devices
def test_fifo_and_socket_in_a_folder_are_refused_at_expansion(tmp_path):
    (tmp_path / "book.txt").write_text(book_text(), encoding="utf-8")
    os.mkfifo(tmp_path / "pipe.txt")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "socket.txt"))
        found = _errors(expand_inputs([str(tmp_path)], None, OPTS))
        globbed = _errors(expand_inputs([str(tmp_path / "*.txt")], None, OPTS))
    assert found == globbed
    assert found["book.txt"] is None
    kind, message = found["pipe.txt"]  # type: ignore[misc]
    assert kind == "unreadable" and str(tmp_path / "pipe.txt") in message
    assert "named pipe (FIFO), not a regular file" in message and "Remove it from the inputs" in message
    kind, message = found["socket.txt"]  # type: ignore[misc]
    assert kind == "unreadable" and "is a socket, not a regular file" in message


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero"])
def test_fifo_rule_covers_devices_named_as_inputs(device):
    (source,) = expand_inputs([device], None, OPTS)
    assert source.error is not None and source.error[0] == "unreadable"
    assert f"{device} is a character device, not a regular file" in source.error[1]
    with pytest.raises(InputError, match="character device"):  # and read anyway: refused, not opened
        list(iter_lines(SourceFile(device)))


def _read_in_thread(src: SourceFile) -> tuple[threading.Thread, dict[str, BaseException]]:
    outcome: dict[str, BaseException] = {}

    def read() -> None:
        try:
            list(iter_lines(src))
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(timeout=10)
    return thread, outcome


def _unblock(fifo: Path) -> None:
    """A reader blocked opening the pipe (the bug) gets a writer and goes on; none waiting: nothing."""
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_fifo_swapped_in_after_the_listing_never_blocks_the_reader(tmp_path, monkeypatch):
    """The reader checks again before and after opening: a pipe that replaced a listed file (or one that
    appears between its ``stat`` and its ``open``) is refused, never waited on."""
    fifo = tmp_path / "book.txt"
    os.mkfifo(fifo)
    src = SourceFile(str(fifo))  # as listed when it was still a regular file
    try:
        thread, outcome = _read_in_thread(src)
        assert not thread.is_alive(), "the reader blocks opening a named pipe"
        assert isinstance(outcome.get("error"), InputError), outcome
        assert "named pipe (FIFO)" in str(outcome["error"])
        # stat says "regular file", the open finds a pipe: opened without blocking, refused by fstat
        real_stat = os.stat

        def stat(path: str, *args: object, **kwargs: object) -> os.stat_result:
            found = real_stat(path, *args, **kwargs)  # type: ignore[arg-type]
            return _regular(found) if str(path) == str(fifo) else found

        monkeypatch.setattr(os, "stat", stat)
        thread, outcome = _read_in_thread(src)
        monkeypatch.undo()
        assert not thread.is_alive(), "the reader blocks opening a pipe swapped in after its stat"
        assert "named pipe (FIFO)" in str(outcome.get("error"))
    finally:
        _unblock(fifo)


def _regular(st: os.stat_result) -> os.stat_result:
    values = list(st)
    values[0] = 0o100644  # S_IFREG
    return os.stat_result(values)


# ---------------------------------------------------------------------------- credentials in URIs
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYSECRETKEY"


@pytest.mark.parametrize(
    "flags",
    [
        ["--input", f"s3://AKIAIOSFODNN7EXAMPLE:{SECRET}@bucket/x.txt"],
        ["--input", f"s3://bucket/x.txt?AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Signature={SECRET}"],
        ["--output", f"s3://AKIAIOSFODNN7EXAMPLE:{SECRET}@bucket/out"],
        ["--set", f"input.paths=['s3://AKIAIOSFODNN7EXAMPLE:{SECRET}@bucket/x.txt']"],
    ],
    ids=["input-userinfo", "input-presigned-query", "output-userinfo", "set"],
)
def test_secret_in_a_uri_is_refused_in_one_line_and_never_shown(flags, tmp_path, model_dir, capsys, caplog):
    good = tmp_path / "book.txt"
    good.write_text(book_text(), encoding="utf-8")
    out = tmp_path / "out"
    argv = ["--input", str(good), "--output", str(out), *_tiny(model_dir), *flags]
    caplog.set_level(logging.DEBUG)
    assert main("summarize", argv) == 2
    captured = capsys.readouterr()
    line = _one_line(captured.err)
    assert "storage.key" in line and "AWS_ACCESS_KEY_ID" in line and "refused" in line
    assert "s3://bucket/" in line  # the URI is named, without its credentials
    seen = captured.out + captured.err + caplog.text
    assert SECRET not in seen and "AKIAIOSFODNN7EXAMPLE" not in seen
    assert not out.exists()  # refused before anything is written (so no job record holds it)


def test_local_names_with_at_and_colon_are_not_credentials(tmp_path):
    cfg = config_from_dict("summarize", {"input": {"paths": [str(tmp_path / "me:x@home.txt")]}})
    assert cfg.input.paths == [str(tmp_path / "me:x@home.txt")]


# ---------------------------------------------------------------------------- an unreachable S3 output
def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed when the block ends: connections are refused


def test_unreachable_s3_output_is_one_line_exit_status_3(tmp_path, model_dir, capsys, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "FAKEKEYFORTHETEST")  # credentials present: the network fails
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    book = tmp_path / "book.txt"
    book.write_text(book_text(), encoding="utf-8")
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    argv = ["--input", str(book), "--output", "s3://results/summaries", *_tiny(model_dir),
            "--endpoint-url", endpoint, "--set", "storage.retries=1"]  # fmt: skip
    assert main("summarize", argv) == 3
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("error: cannot reach the output s3://results/summaries: the S3 endpoint cannot be")
    assert "storage.endpoint_url" in line and "Traceback" not in line


def test_unreachable_s3_during_writes_is_an_output_error():
    """Past the start, every write (a part, a checkpoint, a record) takes the same one-message path."""
    from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

    from pipeline.output.writer import WRITE_ERRORS, output_error

    errors = (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), ReadTimeoutError(endpoint_url="x"))
    for exc in errors:
        assert isinstance(exc, WRITE_ERRORS)
        message = str(output_error("s3://results/out", "results/out/part-1.parquet", exc))
        assert "the S3 endpoint cannot be reached" in message and "(part-1.parquet)" in message


def test_unreachable_s3_by_the_preview_leaves_it_empty():
    """The preview, read after the last write, skips what it cannot read, an unreachable S3 included."""
    from pipeline.job.report import preview
    from pipeline.storage import Storage

    storage = Storage(endpoint_url=f"http://127.0.0.1:{_closed_port()}", key="k", secret="s", retries=1)
    assert preview(["s3://results/out/part-1.parquet"], storage, "final") == []


# ---------------------------------------------------------------------------- job ids
@pytest.mark.parametrize("job_id", ["../../x", "a/b", "", ".hidden", "x" * 129, "nightly 1", "é"])
def test_unsafe_job_id_is_one_line_exit_status_2(job_id, capsys, tmp_path):
    assert main("summarize", ["--job-id", job_id, "--output", str(tmp_path / "out")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "job_id:" in line and "letters, digits, '.', '_' or '-'" in line
    assert not (tmp_path / "out").exists()


def test_job_id_accepts_generated_and_dated_ids():
    for job_id in ("summarize_books-20250101T000000Z-abc123", "nightly-2025-01-01", "run.2", "A" * 128):
        assert config_from_dict("summarize", {"job_id": job_id}).job_id == job_id


# ---------------------------------------------------------------------------- questions files
def _qa_argv(tmp_path: Path, model_dir: Path, questions: Path) -> list[str]:
    book = tmp_path / "book.txt"
    book.write_text(book_text(), encoding="utf-8")
    return ["--input", str(book), "--questions-file", str(questions), "--output", str(tmp_path / "out"),
            *_tiny(model_dir)]  # fmt: skip


def test_questions_file_folder_is_one_line_exit_status_2(tmp_path, model_dir, capsys):
    folder = tmp_path / "questions"
    folder.mkdir()
    assert main("qa", _qa_argv(tmp_path, model_dir, folder)) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"qa.questions_file {folder} is a folder, not a file" in line and "point it at" in line


def test_questions_file_not_utf8_is_one_line_exit_status_2(tmp_path, model_dir, capsys):
    latin = tmp_path / "questions.yaml"
    latin.write_bytes("- Qui est le h\u00e9ros ?\n".encode("latin-1"))
    assert main("qa", _qa_argv(tmp_path, model_dir, latin)) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"qa.questions_file {latin} is not UTF-8 text" in line and "iconv" in line


@pytest.mark.timeout(60)
def test_questions_file_fifo_is_refused_not_opened(tmp_path, model_dir, capsys):
    fifo = tmp_path / "questions.yaml"
    os.mkfifo(fifo)
    assert main("qa", _qa_argv(tmp_path, model_dir, fifo)) == 2
    assert "is a named pipe (FIFO), not a file" in _one_line(capsys.readouterr().err)


# ---------------------------------------------------------------------------- messages
@pytest.mark.parametrize(
    ("encoding", "named", "iconv"),
    [
        ("utf-16", "UTF-16 LE text (by its byte-order mark)", "iconv -f UTF-16 -t UTF-8"),
        ("utf-16-be", "UTF-16 BE text (by the NUL bytes", "iconv -f UTF-16BE -t UTF-8"),
        ("utf-32", "UTF-32 LE text (by its byte-order mark)", "iconv -f UTF-32 -t UTF-8"),
    ],
)
def test_utf16_input_names_its_encoding_and_the_fix(tmp_path, encoding, named, iconv):
    path = tmp_path / "book.txt"
    path.write_bytes(book_text().encode(encoding))
    with pytest.raises(InputError) as info:
        list(iter_lines(expand_inputs([str(path)], None, OPTS)[0]))
    assert info.value.kind == "encoding" and "binary" not in info.value.message
    assert f"{path} is {named}" in info.value.message and iconv in info.value.message
    chinese = tmp_path / "chinese.txt"  # no NUL bytes at all: the mark alone says it
    chinese.write_bytes("\u4e2d\u6587\u6587\u672c\n".encode("utf-16"))
    with pytest.raises(InputError, match="UTF-16 LE text"):
        list(iter_lines(expand_inputs([str(chinese)], None, OPTS)[0]))


def test_missing_bucket_is_named_as_a_bucket(monkeypatch):
    moto = Moto()
    try:
        from pipeline.storage import Storage

        storage = Storage(endpoint_url=f"http://{moto.host}:{moto.port}", key="k", secret="s", retries=1)
        (source,) = expand_inputs(["s3://no-such-bucket/books/x.txt"], storage, OPTS)
        assert source.error is not None and source.error[0] == "missing"
        assert "the bucket 'no-such-bucket' does not exist" in source.error[1]
        assert "S3 key" not in source.error[1]
    finally:
        moto.stop()


def test_no_questions_names_the_record(tmp_path):
    from actors.tasks import make_task
    from pipeline.job.plan import StreamTask

    path = tmp_path / "stories.jsonl"
    records = [{"text": "A tale.", "questions": ["Why?"]}, {"id": "s2", "text": "Another tale."}]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    for id_column, fragment, record in ((None, "#record=1", "id 1"), ("id", "#id=s2", "id s2")):
        cfg = config_from_dict("qa", {"input": {"paths": [str(path)], "id_column": id_column}})
        task = make_task(cfg)
        (src,) = expand_inputs([str(path)], None, task.read_options())
        _, doc = list(task.documents(StreamTask("qa", [src])))[1]
        with pytest.raises(InputError) as info:
            next(task.program(None, doc=doc, questions=task.questions_for(doc)))  # type: ignore[arg-type]
        assert info.value.kind == "no_questions"
        assert info.value.message.startswith(f"{path}{fragment}: no questions for this record ({record};")
        assert "'questions' field is missing or empty" in info.value.message


# ---------------------------------------------------------------------------- one budget
def test_budget_in_a_policy_spec_is_the_budget_everywhere(tmp_path):
    from pipeline.job.report import JobReport, job_record

    cfg, _ = load_config("summarize", ["--policy", "lacache:budget=256,sink=2,span=15"])
    record = job_record(cfg, "j", "finished", JobReport("j", "summarize", "summarize_books", "out"))
    policy = cfg.policy.build()
    assert (cfg.policy.budget, cfg.policy.sink, cfg.policy.params) == (256, 2, {"span": 15, "overlap": 0})
    assert (policy.budget, policy.sink) == (256, 2)
    recorded = record["config"]["policy"]
    assert recorded["budget"] == 256 and "budget" not in recorded["params"]
    same, _ = load_config("summarize", ["--policy", "lacache:budget=256", "--budget", "256"])
    assert same.policy.budget == 256
    yaml_params = config_from_dict("summarize", {"policy": {"params": {"budget": 300, "span": 15}}})
    assert yaml_params.policy.budget == 300 == yaml_params.policy.build().budget


def test_budget_given_twice_differently_is_an_error_naming_both():
    with pytest.raises(ConfigError, match=r"sets budget=256 but --budget 512 is given too: give the budget"):
        load_config("summarize", ["--policy", "lacache:budget=256", "--budget", "512"])
    with pytest.raises(ConfigError, match=r"policy.budget=512 and policy.params.budget=256 .* disagree"):
        config_from_dict("summarize", {"policy": {"budget": 512, "params": {"budget": 256}}})
    with pytest.raises(ConfigError, match=r"policy.sink=4 and policy.params.sink=2"):
        load_config("summarize", ["--set", "policy.sink=4", "--set", "policy.params.sink=2"])


# ---------------------------------------------------------------------------- Ray failing, Ctrl-C
def _records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (out / "_jobs").glob("*.json")]


def _book_argv(tmp_path: Path, model_dir: Path) -> list[str]:
    book = tmp_path / "book.txt"
    book.write_text(book_text(), encoding="utf-8")
    return ["--input", str(book), "--output", str(tmp_path / "out"), *_tiny(model_dir)]


def test_ray_start_failure_is_one_line_exit_status_5(tmp_path, model_dir, capsys, monkeypatch):
    import ray

    def timed_out(*args: object, **kwargs: object) -> None:  # what Ray raises when its node never comes up
        raise Exception(
            "The current node timed out during startup. This could happen because some of the raylet "
            "failed to startup or the GCS has become overloaded."
        )

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "init", timed_out)
    assert main("summarize", _book_argv(tmp_path, model_dir)) == 5
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(
        "error: Ray could not start on this machine (Exception: The current node timed out"
    )
    assert "scripts/ray_stop.sh" in line and "resources.ray_address" in line
    (record,) = _records(tmp_path / "out")
    assert record["state"] == "failed" and "Ray could not start" in record["error"]


def test_joining_an_unreachable_cluster_is_one_line_exit_status_5(tmp_path, model_dir, capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{_closed_port()}")
    import ray

    def refused(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to")

    monkeypatch.setattr(ray, "init", refused)
    assert main("summarize", _book_argv(tmp_path, model_dir)) == 5
    line = _one_line(capsys.readouterr().err)
    assert (
        line.startswith("error: cannot join the Ray cluster at 127.0.0.1:") and "ray status --address" in line
    )


def test_ctrl_c_is_one_line_exit_status_130(tmp_path, model_dir, capsys, monkeypatch):
    import pipeline.job.driver as driver

    def interrupted(*args: object, **kwargs: object) -> bool:
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "init_ray", interrupted)
    assert main("summarize", _book_argv(tmp_path, model_dir)) == 130
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("error: interrupted (Ctrl-C)") and "resumes" in line
    (record,) = _records(tmp_path / "out")
    assert record["state"] == "interrupted"


# ---------------------------------------------------------------------------- inputs checked before Ray
def test_fresh_clone_missing_inputs_fail_before_ray_in_one_line(tmp_path, model_dir, capsys, monkeypatch):
    import pipeline.job.driver as driver

    def no_ray(*args: object, **kwargs: object) -> bool:
        raise AssertionError("Ray was started")

    monkeypatch.setattr(driver, "init_ray", no_ray)
    argv = ["--input", str(tmp_path / "nope.txt"), "--input", str(tmp_path / "*.nothing"),
            "--output", str(tmp_path / "out"), *_tiny(model_dir)]  # fmt: skip
    assert main("summarize", argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("error: none of the 2 inputs can be read: ")
    assert f"{tmp_path / 'nope.txt'} [missing]" in line and "*.nothing [missing]" in line
    assert "input.paths (--input)" in line


def test_fresh_clone_some_missing_inputs_are_one_warning_before_ray(tmp_path, model_dir, caplog, monkeypatch):
    import pipeline.job.driver as driver

    class Stop(Exception):
        pass

    seen: list[str] = []

    def stop_at_ray(*args: object, **kwargs: object) -> bool:
        seen.extend(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
        raise Stop

    monkeypatch.setattr(driver, "init_ray", stop_at_ray)
    argv = [*_book_argv(tmp_path, model_dir), "--input", str(tmp_path / "gone.txt")]
    with pytest.raises(Stop):
        main("summarize", argv)
    assert seen == [f"1 of 2 inputs cannot be read and become error rows: {tmp_path / 'gone.txt'} [missing]"]


# ---------------------------------------------------------------------------- dry run
def test_dry_run_prints_the_plan_without_ray_or_a_model(tmp_path, model_dir):
    import subprocess
    import sys

    from helpers_pipeline import job_config

    from actors.stream_worker import StreamWorker

    folder = tmp_path / "books"
    folder.mkdir()
    for name in ("a.txt", "b.txt"):
        (folder / name).write_text(book_text(), encoding="utf-8")
    out = tmp_path / "out"
    worker = StreamWorker(
        job_config("summarize", [], str(out), model_dir, input={"max_tokens_per_stream": 300})
    )
    [unit] = worker.task.plan(expand_inputs([str(folder / "a.txt")], None, worker.task.read_options()))
    assert [s["status"] for s in worker.process(unit)] == ["ok"]  # a's result, written
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    argv = ["--input", str(folder), "--input", str(tmp_path / "gone.txt"), "--output", str(out),
            "--max-tokens", "300", *_tiny(model_dir), "--dry-run"]  # fmt: skip
    code = (
        "import sys; from jobs.run import main; status = main('summarize', sys.argv[1:]); "
        "print('ray imported:', 'ray' in sys.modules); sys.exit(status)"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run = subprocess.run([sys.executable, "-c", code, *argv], cwd=Path(__file__).resolve().parents[1],
                         env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    text = run.stdout
    assert "summarize_books: dry run (nothing started, no model loaded, nothing written)" in text
    assert "policy: lacache (span=2, overlap=0); budget 48, sink 4, stride 16" in text
    assert "caps: reading at most 300 tokens per stream (input.max_tokens_per_stream)" in text
    assert "inputs: 3 file(s), 1 known bad (error rows)" in text and "[missing:" in text
    assert "streams: 3 descriptor(s); 1 already written (skipped), 0 files of records done, 2 to run" in text
    assert f"    {folder / 'b.txt'}" in text and f"    {folder / 'a.txt'}\n" not in text
    assert "actors: 2 CPU actor(s), each asking Ray for num_cpus=1" in text or "actors: 1 CPU" in text
    assert f"output: {out} holds 1 part(s): 1 streams ended, 0 of them in an error row" in text
    assert "ray imported: False" in text  # let alone started
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing written
