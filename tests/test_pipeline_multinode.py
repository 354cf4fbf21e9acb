"""A Ray cluster of three nodes on this machine (``ray.cluster_utils``, one CPU each): streams spread over
every node's actor, a worker node killed mid-run loses and duplicates nothing, and the report counts what
this run did."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers_pipeline import book_text, job_config, read_output

from jobs.run import run_job
from pipeline.output.writer import PartWriter

pytestmark = pytest.mark.ray
RECORDS = 300


@pytest.fixture
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    try:
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()


def _config(path: Path, out: Path, model_dir: Path):
    return job_config("qa", [str(path)], str(out), model_dir, qa={"questions": ["Who?"]},
                      resources={"actors": 3, "threads_per_actor": 1, "streams_per_actor": 2})  # fmt: skip


def _records(path: Path) -> None:
    path.write_text("".join(json.dumps({"text": book_text(repeat=1)}) + "\n" for _ in range(RECORDS)))


def test_multinode_streams_spread_over_every_node_and_a_killed_node_loses_nothing(
    cluster, model_dir, tmp_path
):
    cluster, workers = cluster
    path = tmp_path / "records.jsonl"
    _records(path)
    report = run_job(_config(path, tmp_path / "even", model_dir))
    assert (report.streams_ok, report.streams_error, report.streams_skipped) == (RECORDS, 0, 0)
    rows = read_output(tmp_path / "even")
    per_actor = Counter(rows.worker)
    assert len(per_actor) == 3, per_actor
    even = RECORDS / 3
    assert all(abs(n - even) <= 0.25 * even for n in per_actor.values()), per_actor

    # A worker node dies once some streams are committed (and a new one joins, as a cluster replaces a
    # lost node): every stream once, and the report counts what this run ended.
    out = tmp_path / "killed"
    killed: dict[str, float] = {}

    def kill_a_node() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if list(out.glob("part-*.parquet")) and len(PartWriter(str(out)).state().ended) >= RECORDS // 5:
                cluster.remove_node(workers[0])
                killed["at"] = time.monotonic()
                cluster.add_node(num_cpus=1)
                return
            time.sleep(0.2)

    thread = threading.Thread(target=kill_a_node, daemon=True)
    thread.start()
    report = run_job(_config(path, out, model_dir))
    thread.join(timeout=30)
    assert killed, "the node was not killed"
    rows = read_output(out)
    assert not rows.duplicated(["stream_id", "row_index"]).any()
    assert rows.stream_id.nunique() == RECORDS and (rows.row_kind == "answer").all()
    assert (report.streams_ok, report.streams_error) == (RECORDS, 0), report
    record = json.loads(next((out / "_jobs").glob("*.json")).read_text())
    assert record["state"] == "finished" and record["streams_ok"] == RECORDS
