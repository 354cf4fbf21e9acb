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
* A flag's help is the ``description`` of the field it sets, with the field's name and default (and what
  the job's default config file sets): one text, in the settings, for the config and the command line.
  ``--help`` needs only the settings' pydantic models: nothing here imports torch, transformers or Ray.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from actors.tasks import TASKS, JobConfig
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
        description=f"longread {name}: see docs/pipeline.md for every setting. Flags override the --config "
        "file; each flag's help names the setting it overrides and its default. Exit status: 0 all streams "
        "ok, 1 none ok, 2 bad settings or inputs, 3 output failure, 4 some streams failed, 5 Ray could not "
        "start, 130 interrupted.",
    )
    add = parser.add_argument
    default = f" (default: jobs/configs/{spec.default_config})" if spec.default_config else " (default: none)"
    add("--config", type=Path, help=f"YAML file of JobConfig fields, examples in jobs/configs/{default}")
    add("--input", action="append", dest="input.paths", metavar="PATH")
    add("--output", dest="output.path", metavar="PATH")
    add("--model", dest="model.source", metavar="SOURCE")
    add("--dtype", dest="model.dtype", choices=["float32", "bfloat16", "float16"])
    add("--device", dest="model.device", choices=["auto", "cpu", "cuda"])
    add(
        "--policy",
        metavar="NAME[:K=V,...]",
        help="cache policy name or spec, e.g. lacache:span=15,overlap=0 (policy.name and policy.params; "
        "budget= and sink= in a spec set policy.budget and policy.sink; default: lacache)",
    )
    add("--budget", type=int, dest="policy.budget", metavar="TOKENS")
    add("--stride", type=int, dest="policy.stride", metavar="TOKENS")
    add("--sink", type=int, dest="policy.sink", metavar="TOKENS")
    add("--actors", type=int, dest="resources.actors", metavar="N")
    add("--threads", type=int, dest="resources.threads_per_actor", metavar="N")
    add("--max-tokens", type=int, dest="input.max_tokens_per_stream", metavar="N")
    add("--split-parts", type=int, dest="input.split_parts", metavar="N")
    add("--format", dest="input.format", choices=["auto", "text", "jsonl", "parquet"])
    add("--text-column", dest="input.text_column", metavar="FIELD")
    add("--endpoint-url", dest="storage.endpoint_url", metavar="URL")
    add("--region", dest="storage.region", metavar="REGION")
    add("--job-id", dest="job_id", metavar="ID")
    add("--retry-errors", action="store_const", const=True, dest="output.retry_errors")
    add("--no-progress", action="store_const", const=False, dest="progress")
    add(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any setting, e.g. --set summarize.segment_tokens=512 (the value is read as YAML; repeatable)",
    )
    add(
        "--dry-run",
        action="store_true",
        help="print the plan (inputs, streams, actors, policy, caps, output and what it holds) and exit: "
        "nothing is started, loaded or written",
    )
    add("-v", "--verbose", action="store_true", help="log at INFO level (default: warnings and errors)")
    spec.add_flags(parser)
    described = _file_values(spec.default_config)
    for action in parser._actions:
        if _overrides_a_setting(action.dest):
            action.help = flag_help(action, described, spec.default_config)
    return parser


def _overrides_a_setting(dest: str) -> bool:
    """Whether a flag sets one field (``dest`` its dotted name); ``--policy``, ``--set`` ... do not."""
    return "." in dest or dest in ("job_id", "progress")


def field_info(dotted: str) -> FieldInfo | None:
    """The ``JobConfig`` field at a dotted path (``policy.budget``), or None."""
    model: Any = JobConfig
    info = None
    for part in dotted.split("."):
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return None
        info = fields[part]
        model = info.annotation
    return info


def _shown(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _file_values(name: str | None) -> dict[str, Any]:
    """The settings a job's default config file gives, by dotted name (what runs without --config)."""
    if not name:
        return {}
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        out[prefix.rstrip(".")] = node

    try:
        walk(read_yaml(CONFIG_DIR / name), "")
    except ConfigError:
        return {}
    return out


def flag_help(action: argparse.Action, file_values: dict[str, Any], file: str | None) -> str:
    """A flag's help: the description of the setting it overrides (one text for both, in
    ``pipeline/config.py`` and the tasks' settings), the setting's name, its default and what the job's
    default config file sets."""
    info = field_info(action.dest)
    assert info is not None, action.dest
    text = info.description or ""
    if action.dest == "progress":  # the flag turns the setting off
        text = "turn off the " + text
    if isinstance(action, argparse._AppendAction):
        text = "repeatable; " + text
    default = info.get_default(call_default_factory=True)
    text += f" ({action.dest}; default: {_shown(default)}"
    if file and action.dest in file_values and file_values[action.dest] != default:
        text += f"; jobs/configs/{file} sets {_shown(file_values[action.dest])}"
    return (text + ")").replace("%", "%%")


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem, naming the field (never the value: it may be a secret); one problem is one
    line in all."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {msg}")
    if len(problems) == 1:
        return f"invalid configuration ({source}): {problems[0]}"
    return "\n  ".join([f"invalid configuration ({source}):", *problems])


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
    flags = {k: v for k, v in vars(args).items() if v is not None and _overrides_a_setting(k)}
    for key, value in flags.items():
        set_dotted(data, key, value)
    if args.policy:
        from cache_policies import PolicyConfigError, parse_spec  # torch: not for --help

        try:
            name, params = parse_spec(args.policy)
        except PolicyConfigError as exc:
            raise ConfigError(str(exc)) from None
        found = data.get("policy")
        policy: dict[str, Any] = found if isinstance(found, dict) else {}
        # The YAML's params belong to the YAML's policy: another policy starts from its own defaults.
        current = policy.get("name", PolicySettings.model_fields["name"].default)
        given = policy.get("params")
        base = dict(given) if current == name and isinstance(given, dict) else {}
        for key in ("budget", "sink"):  # a spec's budget= is the flag's: it overrides the file's field
            if key in params:
                flag = flags.get(f"policy.{key}")
                if flag is not None and flag != params[key]:
                    raise ConfigError(
                        f"--policy {args.policy} sets {key}={params[key]} but --{key} {flag} is given too: "
                        f"give the {key} once (--{key}, or {key}= in the spec)"
                    )
                set_dotted(data, f"policy.{key}", params.pop(key))
                base.pop(key, None)
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
