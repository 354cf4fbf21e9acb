"""Deployment files parse, and the commands, modules, configs and versions they name exist here."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from jobs.config import config_from_dict, read_yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
YAML_FILES = ("cluster.yaml", "rayjob-summarize.yaml", "raycronjob-logs.yaml")


def pins() -> dict[str, str]:
    text = (ROOT / "pyproject.toml").read_text()
    return {
        "ray": re.search(r'"ray\[[^\]]*\]==([\d.]+)"', text).group(1),  # type: ignore[union-attr]
        "torch": re.search(r'"torch==([\d.]+)"', text).group(1),  # type: ignore[union-attr]
    }


def load(name: str) -> dict:
    docs = list(yaml.safe_load_all((INFRA / name).read_text()))
    assert len(docs) == 1 and isinstance(docs[0], dict), name
    return docs[0]


def check_commands(text: str) -> list[str]:
    """Every `python -m X` names a module here; every jobs/configs file exists and validates."""
    modules = re.findall(r"python -m ([\w.]+)", text)
    for module in modules:
        path = ROOT / Path(*module.split("."))
        assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), module
    for config in re.findall(r"jobs/configs/[\w.-]+\.yaml", text):
        data = read_yaml(ROOT / config)
        config_from_dict(data["task"], data, config)
    return modules


@pytest.mark.parametrize("name", YAML_FILES)
def test_yaml_files_parse_and_reference_what_exists(name):
    load(name)
    text = (INFRA / name).read_text()
    assert check_commands(text), f"{name} runs no python -m command"
    assert "image" in text


def test_cluster_launcher_has_gpu_workers():
    cluster = load("cluster.yaml")
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] in types
    gpu = [t for t in types.values() if t.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu and all(t["max_workers"] >= 1 for t in gpu)
    assert types[cluster["head_node_type"]]["resources"]["CPU"] == 0  # actors stay on GPU workers
    assert cluster["provider"]["type"] and "--gpus all" in cluster["docker"]["run_options"]
    assert any("ray start --head" in c for c in cluster["head_start_ray_commands"])


def _gpu_workers(cluster_spec: dict) -> list[dict]:
    groups = cluster_spec["workerGroupSpecs"]
    containers = [c for g in groups for c in g["template"]["spec"]["containers"]]
    return [c for c in containers if c["resources"]["limits"].get("nvidia.com/gpu") == "1"]


def test_rayjob_runs_the_book_summaries_on_gpus():
    job = load("rayjob-summarize.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "jobs.summarize_books"] and argv[3] == "--config"
    assert (ROOT / argv[4]).is_file()
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["rayClusterSpec"]["rayVersion"] == pins()["ray"]
    assert _gpu_workers(spec["rayClusterSpec"])
    assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"] == "/home/ray/longread"


def test_raycronjob_runs_the_log_analysis_nightly():
    cron = load("raycronjob-logs.yaml")
    assert (cron["apiVersion"], cron["kind"]) == ("ray.io/v1", "RayCronJob")
    spec = cron["spec"]
    fields = spec["schedule"].split()
    assert len(fields) == 5 and fields[2:] == ["*", "*", "*"]  # every day
    template = spec["jobTemplate"]
    argv = shlex.split(template["entrypoint"])
    assert argv[:3] == ["python", "-m", "jobs.analyze_logs"]
    assert "--output" in argv and "$(date" in template["entrypoint"]  # a folder per night
    config = read_yaml(ROOT / argv[argv.index("--config") + 1])
    assert config["task"] == "logs" and config["logs"]["group_by"] == "path"
    assert template["rayClusterSpec"]["rayVersion"] == pins()["ray"]
    assert _gpu_workers(template["rayClusterSpec"])


def test_dockerfile_builds_from_the_pinned_versions_and_copies_what_exists():
    text = (INFRA / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in text.splitlines() if line and not line.startswith("#")]
    keywords = {k.upper() for k, *_ in instructions}
    assert {"FROM", "WORKDIR", "COPY", "RUN"} <= keywords
    assert f"ARG RAY_VERSION={pins()['ray']}" in text and "FROM rayproject/ray:${RAY_VERSION}-" in text
    assert f"ARG TORCH_VERSION={pins()['torch']}" in text
    for keyword, rest in (i for i in instructions if len(i) == 2):
        if keyword == "COPY":
            sources = [s for s in rest.split() if not s.startswith("--")][:-1]
            for source in sources:
                assert (ROOT / source).exists(), source
    assert "python -m longread.assets" in text  # model and sample books baked in: no download at run time
    check_commands(text)
    # Extras it installs exist; flash-attn 2 builds against the image's torch (its setup.py imports torch,
    # so an isolated build fails, or compiles against another torch).
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in re.findall(r'"\.\[([\w,-]+)\]"', text):
        assert set(extra.split(",")) <= set(extras), extra
    for line in text.splitlines():
        if re.search(r"pip install .*flash-attn[>=<\"]", line):
            assert "--no-build-isolation" in line, line
