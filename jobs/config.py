"""Configuration files and command-line flags of the pipeline jobs.

Contract:

* ``load_config(task, argv)`` reads ``--config FILE.yaml`` (optional; a task may name a default file) and
  applies the flags on top: the shared flags (``--input``, ``--budget`` ...), the task's own flags
  (``Task.add_flags``) and generic ``--set section.key=value`` (value parsed as YAML). The result is a
  validated ``actors.tasks.JobConfig``; invalid settings raise ``ConfigError`` with one line per problem
  naming the field.
* Flags name the setting they override in dotted form (argparse ``dest="policy.budget"``); one helper,
  ``set_dotted``, applies them to the YAML data before pydantic validates the whole. (The libraries that do
  dotted overrides -- OmegaConf's dotlists, pydantic-settings' CLI source, glom/dpath -- would change how
  values parse or what the flags look like; the helper is six lines.)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from actors.tasks import TASKS, JobConfig
from cache_policies import PolicyConfigError, parse_spec
from pipeline.config import BaseJobConfig, PolicySettings

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A configuration problem, already formatted for the user."""


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """``data["a"]["b"] = value`` for ``"a.b"``, creating (or replacing non-mapping) parents."""
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[last] = value


def build_parser(task: str) -> argparse.ArgumentParser:
    spec = TASKS[task]
    name = spec.job_name
    parser = argparse.ArgumentParser(
        prog=f"python -m jobs.{name}",
        description=f"longread {name}: see docs/pipeline.md. Flags override the --config file.",
    )
    add = parser.add_argument
    default = f" (default: jobs/configs/{spec.default_config})" if spec.default_config else ""
    add("--config", type=Path, help=f"YAML file of JobConfig fields, examples in jobs/configs/{default}")
    add(
        "--input",
        action="append",
        dest="input.paths",
        metavar="PATH",
        help="repeatable; file/folder/glob/s3://",
    )
    add("--output", dest="output.path", help="folder or s3:// prefix for the Parquet results")
    add("--model", dest="model.source", help="'default', a local model folder or a .gguf file")
    add("--dtype", dest="model.dtype", choices=["float32", "bfloat16", "float16"])
    add("--device", dest="model.device", choices=["auto", "cpu", "cuda"])
    add("--policy", help="policy name or spec, e.g. lacache:span=15,overlap=0")
    add("--budget", type=int, dest="policy.budget")
    add("--stride", type=int, dest="policy.stride")
    add("--sink", type=int, dest="policy.sink")
    add("--actors", type=int, dest="resources.actors")
    add("--threads", type=int, dest="resources.threads_per_actor", help="torch threads per CPU actor")
    add("--max-tokens", type=int, dest="input.max_tokens_per_stream", help="stop each stream after N tokens")
    add("--split-parts", type=int, dest="input.split_parts")
    add("--format", dest="input.format", choices=["auto", "text", "jsonl", "parquet"])
    add("--text-column", dest="input.text_column")
    add("--endpoint-url", dest="storage.endpoint_url", help="S3-compatible endpoint (else AWS_ENDPOINT_URL)")
    add("--region", dest="storage.region")
    add("--job-id", dest="job_id")
    add("--retry-errors", action="store_const", const=True, dest="output.retry_errors")
    add("--no-progress", action="store_const", const=False, dest="progress")
    add(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any field, e.g. --set summarize.segment_tokens=512",
    )
    add("-v", "--verbose", action="store_true")
    spec.add_flags(parser)
    return parser


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


def config_from_dict(task: str, data: dict[str, Any], source: str = "settings") -> BaseJobConfig:
    data = dict(data)
    if data.get("task", task) != task:
        raise ConfigError(f"{source} is a {data['task']!r} config, but this job runs {task!r}")
    data["task"] = task
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8."
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"config file {path} must be a mapping of JobConfig sections (model, policy, input, ...)"
        )
    return loaded


def load_config(task: str, argv: list[str] | None = None) -> tuple[BaseJobConfig, argparse.Namespace]:
    parser = build_parser(task)
    args = parser.parse_args(argv)
    default = TASKS[task].default_config
    if args.config is None and default:
        args.config = CONFIG_DIR / default
    data: dict[str, Any] = read_yaml(args.config) if args.config else {}
    source = str(args.config) if args.config else "defaults"
    flags = {
        k: v for k, v in vars(args).items() if v is not None and ("." in k or k in ("job_id", "progress"))
    }
    for key, value in flags.items():
        set_dotted(data, key, value)
    if args.policy:
        try:
            name, params = parse_spec(args.policy)
        except PolicyConfigError as exc:
            raise ConfigError(str(exc)) from None
        found = data.get("policy")
        policy: dict[str, Any] = found if isinstance(found, dict) else {}
        # The YAML's params belong to the YAML's policy: another policy starts from its own defaults.
        current = policy.get("name", PolicySettings.model_fields["name"].default)
        base = (policy.get("params") or {}) if current == name else {}
        set_dotted(data, "policy.name", name)
        set_dotted(data, "policy.params", {**base, **params})
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set policy.budget=1024")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(
                f"--set {item!r}: the value is not valid YAML; fix or quote it (e.g. 'input.paths=[a, b]')"
            ) from None
        set_dotted(data, key.strip(), parsed)
    if flags or args.set or args.policy:
        source += " + flags"
    return config_from_dict(task, data, source), args
