"""scripts/ray_head.sh and scripts/ray_stop.sh with real Ray: a second head beside a first one gets ports of
its own (Ray's defaults, when another Ray holds them, made the second fail); stopping it leaves the first
answering; a job says in one line which Ray it joined or started."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_pipeline import ROOT, RayHead

pytestmark = pytest.mark.ray
DEFAULTS = {"GCS": 6379, "dashboard": 8265, "dashboard_agent": 52365, "client_server": 10001}


def _ports(head: RayHead) -> dict[str, int]:
    return {k: int(v) for k, v in (p.split("=") for p in head.state["LONGREAD_RAY_PORTS"].strip("'").split())}


def _status(head: RayHead, timeout: float = 90.0) -> str:
    """`ray status` of the head, once its autoscaler has reported (the first seconds say "No cluster
    status")."""
    env = {**head.env, "RAY_AUTH_MODE": "token"}
    deadline = time.monotonic() + timeout
    while True:
        run = subprocess.run([str(Path(sys.prefix) / "bin" / "ray"), "status", "--address", head.gcs],
                             env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        if run.returncode == 0 and "CPU" in run.stdout:
            return run.stdout
        assert time.monotonic() < deadline, run.stdout + run.stderr
        time.sleep(2)


def test_ray_head_beside_another_gets_free_ports_and_ray_stop_stops_only_it(tmp_path):
    if not (Path(sys.prefix) / "bin" / "ray").is_file():
        pytest.skip(f"no `ray` executable in {sys.prefix}/bin: the head script needs the project's venv")
    state, token = tmp_path / "heads", tmp_path / "token"
    first = RayHead(state, token)
    second: RayHead | None = None
    try:
        second = RayHead(state, token)
        mine, theirs = _ports(first), _ports(second)
        assert not set(mine.values()) & set(theirs.values()), (mine, theirs)
        for what, default in DEFAULTS.items():  # a default the first head holds is named, then replaced
            if mine[what] == default:
                assert f"port {default} ({what.replace('_', ' ')}) is in use" in second.started.stderr
        said = second.started.stdout
        assert f"export RAY_ADDRESS={second.address}" in said and f"ray_stop.sh {second.port}" in said
        assert "CPU" in _status(first) and "CPU" in _status(second)

        several = subprocess.run([str(ROOT / "scripts" / "ray_stop.sh")], env=first.env, capture_output=True,
                                 text=True, timeout=60)  # fmt: skip
        assert several.returncode == 2 and "several heads" in several.stderr
        assert str(first.port) in several.stderr and str(second.port) in several.stderr

        stopped = second.stop()
        assert stopped.returncode == 0 and f"Ray head {second.gcs} stopped" in stopped.stdout, stopped.stderr
        assert not second.alive(), "scripts/ray_stop.sh left processes of its head"
        second = None
        assert "CPU" in _status(first)  # the other head is untouched: it answers, and runs a job
        client = first.client()
        job = client.submit_job(entrypoint="python -c \"print('answered', 6 * 7)\"")
        deadline = time.monotonic() + 300
        while not client.get_job_status(job).is_terminal():
            assert time.monotonic() < deadline
            time.sleep(1)
        assert str(client.get_job_status(job)) == "SUCCEEDED" and "answered 42" in client.get_job_logs(job)

        # A job joining this head says so in one line (address, nodes, CPUs, GPUs).
        code = (
            "import logging, ray; from pipeline.cluster.session import init_ray; "
            "from pipeline.config import ResourceSettings; logging.basicConfig(level=logging.WARNING); "
            "logging.getLogger('pipeline.cluster.session').setLevel(logging.INFO); "
            f"init_ray(ResourceSettings(ray_address='{first.gcs}')); ray.shutdown()"
        )
        env = {**first.env, "RAY_AUTH_MODE": "token"}
        joined = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=300)  # fmt: skip
        assert joined.returncode == 0, joined.stderr
        (line,) = [x for x in joined.stderr.splitlines() if "pipeline.cluster.session" in x]
        said = line.split("pipeline.cluster.session:", 1)[1].strip()
        assert said.startswith("joined the Ray cluster at ")  # at the node's IP, as Ray reports it
        assert said.endswith(f":{first.port}: 1 node(s), 1 CPUs, 0 GPUs"), said
    finally:
        for head in (second, first):
            if head is not None:
                head.stop()
    assert not first.alive()
