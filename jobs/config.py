"""Configuration of the pipeline jobs: pydantic models, YAML loading, command-line overrides.

Contract:

* ``JobConfig`` is the single description of a run (model, cache policy, inputs, output, resources, task
  settings). Unknown keys are errors; every field is validated, including the policy against the
  ``cache_policies`` registry and the regular expressions and prompt templates of the tasks.
* ``load_config(task, argv)`` reads ``--config FILE.yaml`` (optional) and applies the flags on top:
  dedicated flags (``--input``, ``--budget`` ...) and generic ``--set section.key=value`` (value parsed as
  YAML). Invalid settings exit with status 2 and one line per problem naming the field.
* Secrets (``storage.key``/``secret``/``token``) are ``SecretStr``: masked in every dump and repr, handed
  to actors only inside the pickled config object.
* ``main(task, argv)`` is what ``python -m jobs.<name>`` runs: load, run the pipeline, print where the
  results are and a short preview.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from cache_policies import POLICIES, CachePolicy, PolicyConfigError, make_policy
from pipeline.fs import Storage
from pipeline.sources import ReadOptions, check_encoding

log = logging.getLogger("jobs")

Task = Literal["summarize", "qa", "logs"]
JOB_NAMES: dict[str, str] = {"summarize": "summarize_books", "qa": "answer_questions", "logs": "analyze_logs"}
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
#: Used when a job gets no --config: the main job's command, `python -m jobs.summarize_books`, runs this.
DEFAULT_CONFIGS = {"summarize": "summarize_books.yaml"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(_Section):
    source: str = Field(
        default="default", description="'default' (embedded SmolLM2-135M-Instruct), a model folder or .gguf"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: one GPU per actor when the cluster has GPUs"
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    trust_remote_code: bool = False

    @property
    def display_name(self) -> str:
        if self.source in ("default", "smollm2"):
            return "SmolLM2-135M-Instruct"
        return Path(self.source).name or self.source


class PolicySettings(_Section):
    name: str = "lacache"
    budget: int | None = Field(default=512, ge=1, description="tokens the cache keeps (ignored by 'full')")
    sink: int = Field(default=4, ge=0)
    stride: int = Field(default=256, ge=1, description="tokens per forward chunk")
    params: dict[str, Any] = Field(
        default_factory=dict, description="policy-specific: span, overlap, cascades, beta"
    )
    rope_mode: Literal["delta", "read"] | None = Field(
        default=None, description="pos-shift implementation; default: the faithful one for the model's dtype"
    )

    @model_validator(mode="after")
    def _check_policy(self) -> PolicySettings:
        if self.name not in POLICIES:
            raise ValueError(f"unknown cache policy {self.name!r}; choose one of {sorted(POLICIES)}")
        try:
            self.build()
        except PolicyConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    def kwargs(self) -> dict[str, Any]:
        if self.name == "full":
            return dict(self.params)
        return {"budget": self.budget, "sink": self.sink, **self.params}

    def build(self) -> CachePolicy:
        return make_policy(self.name, **self.kwargs())


class StorageSettings(_Section):
    """S3 settings; unset ones come from AWS_ENDPOINT_URL(_S3), AWS_REGION and botocore's credential chain."""

    endpoint_url: str | None = None
    region: str | None = None
    key: SecretStr | None = None
    secret: SecretStr | None = None
    token: SecretStr | None = None
    anon: bool = False

    def to_storage(self) -> Storage:
        def reveal(value: SecretStr | None) -> str | None:
            return value.get_secret_value() if value is not None else None

        return Storage.from_env(
            endpoint_url=self.endpoint_url,
            region=self.region,
            key=reveal(self.key),
            secret=reveal(self.secret),
            token=reveal(self.token),
            anon=self.anon,
        )


class InputSettings(_Section):
    paths: list[str] = Field(
        default_factory=list, description="files, folders, globs, s3:// keys or prefixes"
    )
    format: Literal["auto", "text", "jsonl", "parquet"] = "auto"
    compression: Literal["infer", "gzip", "none"] = "infer"
    encoding: str = "utf-8"
    encoding_errors: Literal["strict", "replace", "ignore"] = "strict"
    text_column: str = "text"
    id_column: str | None = None
    max_tokens_per_stream: int | None = Field(
        default=None, ge=1, description="stop each stream after this many tokens"
    )
    max_records_per_file: int | None = Field(default=None, ge=1)
    split_parts: int = Field(
        default=1, ge=1, description="split each large text file into this many parallel parts"
    )
    min_split_bytes: int = Field(default=1 << 20, ge=1)

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, value: str) -> str:
        return check_encoding(value)


class OutputSettings(_Section):
    path: str | None = Field(default=None, description="folder or s3:// prefix; default ./output/<job name>")
    retry_errors: bool = Field(
        default=False, description="re-process streams whose previous result is an error row"
    )


class ResourceSettings(_Section):
    actors: int | None = Field(
        default=None, ge=1, description="default: one per GPU, or CPUs // threads_per_actor"
    )
    gpus_per_actor: float = Field(default=1.0, gt=0)
    threads_per_actor: int = Field(default=1, ge=1, description="torch threads (and Ray CPUs) per CPU actor")
    ray_address: str | None = Field(
        default=None,
        description="cluster to join ('local': always a new in-process one); default RAY_ADDRESS",
    )
    num_cpus: int | None = Field(default=None, ge=1, description="CPUs of a Ray instance started in-process")
    include_dashboard: bool | None = None


class GenerationSettings(_Section):
    temperature: float = Field(default=0.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0)
    seed: int | None = 0
    drop_repeated_sentences: bool = Field(
        default=True,
        description="remove verbatim repeats of a sentence (small models loop under greedy decoding)",
    )
    system_prompt: str | None = Field(default=None, description="None: the chat template's own default")


class SummarizeSettings(_Section):
    chapters: bool = True
    chapter_pattern: str | None = Field(
        default=None, description="regex of a heading line; None: the built-in one"
    )
    segment_tokens: int = Field(
        default=1024, ge=8, description="a segment ends at a chapter or after this many tokens"
    )
    min_segment_tokens: int = Field(default=256, ge=0, description="shorter chapters merge with the next")
    segment_prompt: str = "Summarize the passage above in 2 sentences."
    final_prompt: str = (
        "Summaries of the parts of the text above, in order:\n{summaries}\n\n"
        "Now summarize the whole text in 3 to 5 sentences."
    )
    segment_max_new_tokens: int = Field(default=64, ge=1)
    final_max_new_tokens: int = Field(default=128, ge=1)

    @model_validator(mode="after")
    def _check(self) -> SummarizeSettings:
        import re

        if self.min_segment_tokens > self.segment_tokens:
            raise ValueError(
                f"min_segment_tokens={self.min_segment_tokens} > segment_tokens={self.segment_tokens}"
            )
        if self.chapter_pattern:
            try:
                re.compile(self.chapter_pattern)
            except re.error as exc:
                raise ValueError(f"chapter_pattern is not a valid regex: {exc}") from None
        _check_template(self.final_prompt, {"summaries"}, "final_prompt")
        return self


class QASettings(_Section):
    questions: list[str] = Field(default_factory=list, description="asked of every document")
    questions_file: str | None = Field(
        default=None, description="YAML/JSON list, mapping document -> list, or .txt lines"
    )
    question_column: str | None = Field(
        default="questions", description="JSONL/Parquet field with the record's questions"
    )
    question_field: str = Field(default="question_text", description="key of the question in mapping items")
    prompt: str = "Answer the question about the text above in one or two sentences.\nQuestion: {question}"
    max_new_tokens: int = Field(default=64, ge=1)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        _check_template(value, {"question"}, "prompt", required=frozenset({"question"}))
        return value


LOG_PROMPT_FIELDS = {"source", "window", "lines", "first", "last", "levels", "templates", "alerts"}


class LogsSettings(_Section):
    group_by: Literal["file", "path", "line"] = "file"
    key_pattern: str | None = Field(
        default=None, description="regex with (?P<key>...) on the path or on each line"
    )
    window_tokens: int | None = Field(
        default=None, ge=8, description="default 1024 when window_seconds is unset"
    )
    window_seconds: float | None = Field(default=None, gt=0)
    timestamp_pattern: str | None = Field(
        default=None, description="regex with (?P<ts>...); default: common formats"
    )
    timestamp_format: str | None = Field(
        default=None, description="strptime format of ts; unset: epoch seconds"
    )
    level_pattern: str | None = Field(default=None, description="regex with (?P<level>...)")
    alert_pattern: str | None = Field(default=None, description="regex: matching lines count as alerts")
    top_templates: int = Field(default=5, ge=1)
    report_prompt: str = (
        "The log lines above come from {source}. Window {window}: {lines} lines from {first} to {last}; "
        "levels: {levels}; alert lines: {alerts}. Most frequent messages:\n{templates}\n\n"
        "Write a short incident report for this window: what went wrong, which components are affected, "
        "and how severe it is. If nothing looks wrong, say so."
    )
    max_new_tokens: int = Field(default=96, ge=1)

    @model_validator(mode="after")
    def _check(self) -> LogsSettings:
        import re

        if self.window_tokens is not None and self.window_seconds is not None:
            raise ValueError("set either window_tokens or window_seconds, not both")
        if self.window_tokens is None and self.window_seconds is None:
            self.window_tokens = 1024
        if self.group_by in ("path", "line") and not self.key_pattern:
            raise ValueError(f"group_by={self.group_by!r} needs key_pattern, e.g. '(?P<key>host-\\w+)'")
        for name in ("key_pattern", "timestamp_pattern", "level_pattern", "alert_pattern"):
            value = getattr(self, name)
            if value:
                try:
                    re.compile(value)
                except re.error as exc:
                    raise ValueError(f"{name} is not a valid regex: {exc}") from None
        if self.timestamp_pattern and "(?P<ts>" not in self.timestamp_pattern:
            raise ValueError("timestamp_pattern needs a named group (?P<ts>...)")
        if self.level_pattern and "(?P<level>" not in self.level_pattern:
            raise ValueError("level_pattern needs a named group (?P<level>...)")
        _check_template(self.report_prompt, LOG_PROMPT_FIELDS, "report_prompt")
        return self


def _check_template(text: str, allowed: set[str], name: str, required: frozenset[str] = frozenset()) -> None:
    import string

    fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    unknown = fields - allowed
    if unknown:
        raise ValueError(f"{name} uses unknown placeholders {sorted(unknown)}; available: {sorted(allowed)}")
    missing = required - fields
    if missing:
        raise ValueError(f"{name} must contain {', '.join('{' + m + '}' for m in sorted(missing))}")


class JobConfig(_Section):
    task: Task
    job_id: str | None = Field(default=None, description="default: <job name>-<UTC time>-<random>")
    model: ModelSettings = Field(default_factory=lambda: ModelSettings())
    policy: PolicySettings = Field(default_factory=lambda: PolicySettings())
    input: InputSettings = Field(default_factory=lambda: InputSettings())
    output: OutputSettings = Field(default_factory=lambda: OutputSettings())
    resources: ResourceSettings = Field(default_factory=lambda: ResourceSettings())
    storage: StorageSettings = Field(default_factory=lambda: StorageSettings())
    generation: GenerationSettings = Field(default_factory=lambda: GenerationSettings())
    summarize: SummarizeSettings = Field(default_factory=lambda: SummarizeSettings())
    qa: QASettings = Field(default_factory=lambda: QASettings())
    logs: LogsSettings = Field(default_factory=lambda: LogsSettings())
    progress: bool = True

    @model_validator(mode="after")
    def _defaults(self) -> JobConfig:
        if self.output.path is None:
            self.output.path = str(Path("output") / JOB_NAMES[self.task])
        if self.task != "summarize" and not self.input.paths:
            raise ValueError(
                f"input.paths is empty: pass --input PATH (a file, folder, glob or s3:// URI) for {self.task}"
            )
        return self

    @property
    def job_name(self) -> str:
        return JOB_NAMES[self.task]

    def read_options(self) -> ReadOptions:
        """How actors read this job's inputs."""
        i = self.input
        return ReadOptions(
            format=i.format,
            compression=i.compression,
            encoding=i.encoding,
            encoding_errors=i.encoding_errors,
            text_column=i.text_column,
            id_column=i.id_column,
            question_column=self.qa.question_column if self.task == "qa" else None,
            question_field=self.qa.question_field,
            max_records_per_file=i.max_records_per_file,
        )

    def public_dict(self) -> dict[str, Any]:
        """The settings with secrets masked: for job records and logs."""
        return json.loads(self.model_dump_json())


# ------------------------------------------------------------------------------------------------- CLI
def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[keys[-1]] = value


def parse_policy_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"lacache:span=15,overlap=0"`` -> ``("lacache", {"span": 15, "overlap": 0})``."""
    name, _, rest = spec.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"policy spec {spec!r}: {item!r} is not key=value (e.g. lacache:span=15)")
        params[key.strip()] = yaml.safe_load(value)
    return name.strip(), params


def build_parser(task: str) -> argparse.ArgumentParser:
    name = JOB_NAMES[task]
    parser = argparse.ArgumentParser(
        prog=f"python -m jobs.{name}",
        description=f"longread {name}: see docs/pipeline.md. Flags override the --config file.",
    )
    add = parser.add_argument
    default = f" (default: jobs/configs/{DEFAULT_CONFIGS[task]})" if task in DEFAULT_CONFIGS else ""
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
    if task == "summarize":
        add("--segment-tokens", type=int, dest="summarize.segment_tokens")
    elif task == "qa":
        add("--question", action="append", dest="qa.questions", help="repeatable; asked of every document")
        add("--questions-file", dest="qa.questions_file")
        add("--question-column", dest="qa.question_column")
    else:
        add("--window-tokens", type=int, dest="logs.window_tokens")
        add("--window-seconds", type=float, dest="logs.window_seconds")
        add("--group-by", dest="logs.group_by", choices=["file", "path", "line"])
        add("--key-pattern", dest="logs.key_pattern")
    return parser


class ConfigError(ValueError):
    """A configuration problem, already formatted for the user."""


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


def config_from_dict(task: str, data: dict[str, Any], source: str = "settings") -> JobConfig:
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
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"config file {path} must be a mapping of JobConfig sections (model, policy, input, ...)"
        )
    return loaded


def load_config(task: str, argv: list[str] | None = None) -> tuple[JobConfig, argparse.Namespace]:
    parser = build_parser(task)
    args = parser.parse_args(argv)
    if args.config is None and task in DEFAULT_CONFIGS:
        args.config = CONFIG_DIR / DEFAULT_CONFIGS[task]
    data: dict[str, Any] = read_yaml(args.config) if args.config else {}
    source = str(args.config) if args.config else "defaults"
    flags = {
        k: v for k, v in vars(args).items() if v is not None and ("." in k or k in ("job_id", "progress"))
    }
    for key, value in flags.items():
        _set_path(data, key, value)
    if args.policy:
        try:
            name, params = parse_policy_spec(args.policy)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        _set_path(data, "policy.name", name)
        if params:
            _set_path(data, "policy.params", {**(data.get("policy", {}).get("params") or {}), **params})
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set policy.budget=1024")
        _set_path(data, key.strip(), yaml.safe_load(value))
    if flags or args.set or args.policy:
        source += " + flags"
    return config_from_dict(task, data, source), args


def main(task: str, argv: list[str] | None = None) -> int:
    """Entry point of ``python -m jobs.<name>``: returns the process exit status."""
    try:
        cfg, args = load_config(task, argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not cfg.progress:  # no progress bar: progress goes to the log instead
        logging.getLogger("pipeline.driver").setLevel(logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from pipeline.driver import format_report, run_job

    try:
        report = run_job(cfg)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    # Error rows are results (bad inputs are reported, not fatal); only a run where nothing succeeded fails.
    return 1 if report.streams_error and not report.streams_ok and not report.streams_skipped else 0
