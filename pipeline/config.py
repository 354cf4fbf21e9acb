"""The settings every pipeline job shares: pydantic sections for model, policy, inputs, output, resources,
storage and generation, and ``BaseJobConfig`` that holds them.

Contract:

* Every section forbids unknown keys and validates on assignment; errors name the field and the fix. The
  policy is checked against the ``cache_policies`` registry here, before anything starts.
* Task settings are not here: each task (``actors.tasks``) owns its section, and ``actors.tasks.JobConfig``
  is this model plus one section per registered task. Code below the actors takes ``BaseJobConfig``.
* Secrets (``storage.key``/``secret``/``token``) are ``SecretStr``: masked in every dump and repr, handed
  to actors only inside the pickled config object.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from pipeline.inputs.sources import TextFormat
from pipeline.output.manifest import COMMIT_BYTES, COMMIT_DONE_SECONDS, COMMIT_ROWS, COMMIT_SECONDS
from pipeline.storage import DEFAULT_S3_RETRIES, Storage, check_no_credentials

if TYPE_CHECKING:
    from cache_policies import CachePolicy
    from longread.generation import GenerationSettings as Sampling

# cache_policies and longread (torch, transformers) are imported where a setting is checked or used, not
# here: the command line's --help and its flags' texts need these sections, not torch (seconds to import).


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(Section):
    source: str = Field(
        default="default",
        description="'default' (the embedded SmolLM2-135M-Instruct), a local Hugging Face folder or a .gguf "
        "file; never a hub id (nothing is downloaded at run time)",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32", description="weights and KV cache precision"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: one GPU per actor when the Ray cluster has GPUs, else CPU actors"
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flash_attention_4"] = Field(
        default="sdpa", description="attention kernels; flash_attention_2/4 need a GPU and half precision"
    )
    trust_remote_code: bool = Field(default=False, description="allow model code from the model folder")
    cuda_graphs: bool = Field(
        default=False,
        description="replay steady-state full-chunk forwards from CUDA graphs (GPU, bounded policy, SDPA "
        "or eager attention; longread.graphs); ignored on CPU",
    )

    @property
    def display_name(self) -> str:
        from longread.models import model_name

        return model_name(self.source)


class PolicySettings(Section):
    name: str = Field(
        default="lacache", description="a registered cache policy: full, streaming_llm, lacache, cascading"
    )
    budget: int | None = Field(default=512, ge=1, description="tokens the cache keeps (ignored by 'full')")
    sink: int = Field(default=4, ge=0, description="attention-sink tokens always kept")
    stride: int = Field(default=256, ge=1, description="tokens per forward chunk")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="policy-specific: span, overlap (lacache); cascades, beta, reduce (cascading); a budget "
        "or sink given here sets policy.budget / policy.sink",
    )
    rope_mode: Literal["delta", "read"] | None = Field(
        default=None, description="pos-shift implementation; default: the faithful one for the model's dtype"
    )

    @model_validator(mode="before")
    @classmethod
    def _one_budget(cls, data: Any) -> Any:
        """``budget``/``sink`` in ``params`` (a policy spec's ``budget=256``) move into the fields, so that
        the config, the job record and the policy that runs say the same; both given and different is an
        error, not a silent winner."""
        if not isinstance(data, dict) or not isinstance(data.get("params"), dict):
            return data
        params = dict(data["params"])
        data = dict(data)
        for key in ("budget", "sink"):
            if key not in params:
                continue
            value = params.pop(key)
            if key in data and data[key] != value:
                raise ValueError(
                    f"policy.{key}={data[key]} and policy.params.{key}={value} (e.g. from a --policy spec) "
                    f"disagree: set it once, as policy.{key} (--{key}) or in the spec, not both"
                )
            data[key] = value
        data["params"] = params
        return data

    @model_validator(mode="after")
    def _check_policy(self) -> PolicySettings:
        from cache_policies import POLICIES, PolicyConfigError

        if self.name not in POLICIES:
            raise ValueError(f"unknown cache policy {self.name!r}; choose one of {sorted(POLICIES)}")
        try:
            self.build()
        except PolicyConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    def build(self) -> CachePolicy:
        from cache_policies import make_policy, policy_kwargs

        return make_policy(
            self.name, **policy_kwargs(self.name, self.params, budget=self.budget, sink=self.sink)
        )


class StorageSettings(Section):
    """S3 settings; unset ones come from AWS_ENDPOINT_URL(_S3), AWS_REGION and botocore's credential chain."""

    endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, moto ...); unset: AWS_ENDPOINT_URL(_S3)"
    )
    region: str | None = Field(default=None, description="S3 region; unset: AWS_REGION / AWS_DEFAULT_REGION")
    key: SecretStr | None = Field(
        default=None, description="access key id (masked everywhere); unset: botocore's credential chain"
    )
    secret: SecretStr | None = Field(default=None, description="secret access key (masked everywhere)")
    token: SecretStr | None = Field(default=None, description="session token (masked everywhere)")
    anon: bool = Field(default=False, description="anonymous access to public buckets")
    retries: int = Field(
        default=DEFAULT_S3_RETRIES,
        ge=1,
        le=100,
        description="attempts per S3 request before a transient error (refused, timeout, throttling, 5xx) "
        "counts; exponential backoff up to 20 s apart",
    )

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
            retries=self.retries,
        )


class InputSettings(TextFormat):
    """Where the inputs are and how much of them to read; the decoding settings come from ``TextFormat``."""

    paths: list[str] = Field(
        default_factory=list,
        description="files, folders (recursive), globs, s3:// keys, prefixes or globs; empty for summarize "
        "(and qa with questions): the sample plays",
    )
    max_tokens_per_stream: int | None = Field(
        default=None, ge=1, description="stop each stream after this many tokens; unset: read to the end"
    )
    split_parts: int | Literal["auto"] = Field(
        default="auto",
        description="split each large text file into this many parallel parts; auto: logs split a file "
        "over the actors when there are fewer files than actors, books and records never",
    )
    min_split_bytes: int = Field(
        default=1 << 20, ge=1, description="only files at least this large are split"
    )

    @field_validator("paths")
    @classmethod
    def _no_credentials(cls, paths: list[str]) -> list[str]:
        return [check_no_credentials(p, "input path") for p in paths]


#: Default of ``output.checkpoint_every_tokens`` (cost per checkpoint in BENCHMARKS.md, "Stream checkpoints").
CHECKPOINT_EVERY_TOKENS = 65536


class OutputSettings(Section):
    path: str | None = Field(
        default=None,
        description="local folder or s3://bucket/prefix for the Parquet results; unset: output/<job name>",
    )
    retry_errors: bool = Field(
        default=False, description="re-process streams whose previous result is an error row"
    )
    checkpoint_every_tokens: int | None = Field(
        default=CHECKPOINT_EVERY_TOKENS,
        ge=1,
        description="save a long stream's state to <output>/_checkpoints/ every this many document tokens, "
        "so a stream whose actor dies resumes there; null: never",
    )
    commit_every_rows: int = Field(
        default=COMMIT_ROWS,
        ge=1,
        description="an actor commits the rows it made (of all its streams) as one Parquet part once this "
        "many wait",
    )
    commit_every_bytes: int = Field(
        default=COMMIT_BYTES, ge=1, description="... or once they hold about this many bytes of text"
    )
    commit_every_seconds: float = Field(
        default=COMMIT_SECONDS,
        gt=0,
        description="... or once the oldest row of a stream still running has waited this long: a running "
        "stream's rows are readable within it",
    )
    commit_done_every_seconds: float = Field(
        default=COMMIT_DONE_SECONDS,
        gt=0,
        description="... or once the oldest row or end of the streams that ended has waited this long (at "
        "least commit_every_seconds): many small records share a part (an actor that dies loses at most "
        "this much of its finished streams' work: they run again)",
    )

    @field_validator("path")
    @classmethod
    def _no_credentials(cls, path: str | None) -> str | None:
        return None if path is None else check_no_credentials(path, "output path")


#: Defaults of ``resources.streams_per_actor``, from benchmarks/bench_batch.py (BENCHMARKS.md).
STREAMS_PER_CPU_ACTOR = 4
STREAMS_PER_GPU_ACTOR = 16


class ResourceSettings(Section):
    actors: int | None = Field(
        default=None, ge=1, description="number of actors; unset: one per GPU, or CPUs // threads_per_actor"
    )
    gpus_per_actor: float = Field(default=1.0, gt=0, description="GPUs per GPU actor")
    threads_per_actor: int = Field(default=1, ge=1, description="torch threads (and Ray CPUs) per CPU actor")
    ray_address: str | None = Field(
        default=None,
        description="cluster to join ('local': always a new in-process one); default RAY_ADDRESS",
    )
    num_cpus: int | None = Field(default=None, ge=1, description="CPUs of a Ray instance started in-process")
    include_dashboard: bool | None = Field(
        default=None, description="start the dashboard with an in-process Ray; unset: Ray's default"
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="json: every log line of the driver and the actors is one JSON object (Ray's logging "
        "config) with this run's longread_job_id and, for a stream's lines, its stream_id",
    )
    streams_per_actor: int | None = Field(
        default=None,
        ge=1,
        description="streams one actor runs at once on its batched engine; default "
        f"{STREAMS_PER_CPU_ACTOR} on CPU, {STREAMS_PER_GPU_ACTOR} on GPU (measured, docs/pipeline.md)",
    )

    def streams(self, gpu: bool) -> int:
        """Streams per actor: the setting, else the measured default for the device."""
        return self.streams_per_actor or (STREAMS_PER_GPU_ACTOR if gpu else STREAMS_PER_CPU_ACTOR)


class GenerationSettings(Section):
    """How every generation of a job samples and is framed; each kind of output (a segment summary, an
    answer, a report) has its own length and repetition controls in its task's section (``Decoding``)."""

    temperature: float = Field(default=0.0, ge=0, description="sampling temperature; 0 = greedy")
    top_p: float = Field(default=1.0, gt=0, le=1, description="nucleus sampling; 1 = off")
    top_k: int = Field(default=0, ge=0, description="top-k sampling; 0 = off")
    seed: int | None = Field(default=0, description="sampling seed (per stream)")
    drop_repeated_sentences: bool = Field(
        default=True,
        description="remove verbatim repeats of a sentence (small models loop under greedy decoding)",
    )
    chat_template: bool = Field(
        default=True, description="frame prompts with the model's chat template when it has one"
    )
    system_prompt: str | None = Field(default=None, description="None: the chat template's own default")

    def sampling(self, stop: tuple[str, ...] = ()) -> Sampling:
        """The engine's generation settings for these (each request sets its own ``max_new_tokens``)."""
        from longread.generation import GenerationSettings as Sampling

        return Sampling(
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, seed=self.seed, stop=stop
        )


class Decoding(Section):
    """Length and repetition controls of one kind of output (``longread.generation`` semantics).

    Defaults: the settings measured on SQuALITY dev (BENCHMARKS.md, "Output quality"); each task sets its
    own ``max_new_tokens`` (and may tighten the others) per kind of output.
    """

    max_new_tokens: int = Field(default=128, ge=1, description="length cap of the output")
    repetition_penalty: float = Field(
        default=1.1, gt=0, description="HF semantics over the tokens generated so far; 1 = off"
    )
    no_repeat_ngram_size: int = Field(
        default=4, ge=0, description="never repeat an n-gram of the output; 0 = off"
    )
    finish_sentence: int = Field(
        default=32,
        ge=0,
        description="extra tokens allowed to end a sentence cut at max_new_tokens (else cut back to the "
        "last sentence end); 0 = off",
    )

    def apply(self, base: Sampling) -> Sampling:
        """``base`` (the job's sampling) with this output's length and repetition controls."""
        return base.with_(
            max_new_tokens=self.max_new_tokens,
            repetition_penalty=self.repetition_penalty,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
            finish_sentence=self.finish_sentence,
        )


#: A job id names its record's file (``_jobs/<job_id>.json``) and goes into every row: a short, safe name.
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class BaseJobConfig(Section):
    """What every job has; ``actors.tasks.JobConfig`` adds one section per task."""

    task: str = Field(description="summarize, qa or logs (set by the job)")
    job_id: str | None = Field(
        default=None,
        description="id written in every row and in _jobs/<job_id>.json: 1-128 letters, digits, '.', '_' or "
        "'-'; unset: <job name>-<UTC time>-<random>",
    )
    model: ModelSettings = Field(
        default_factory=lambda: ModelSettings(), description="the model every actor loads"
    )
    policy: PolicySettings = Field(
        default_factory=lambda: PolicySettings(), description="the bounded KV-cache policy and its sizes"
    )
    input: InputSettings = Field(
        default_factory=lambda: InputSettings(), description="where the inputs are, how to read them, limits"
    )
    output: OutputSettings = Field(
        default_factory=lambda: OutputSettings(), description="where results go, resume and checkpoints"
    )
    resources: ResourceSettings = Field(
        default_factory=lambda: ResourceSettings(), description="the Ray cluster and the actor pool"
    )
    storage: StorageSettings = Field(
        default_factory=lambda: StorageSettings(), description="S3 endpoint, region and credentials"
    )
    generation: GenerationSettings = Field(
        default_factory=lambda: GenerationSettings(),
        description="sampling and prompt framing of every output",
    )
    progress: bool = Field(
        default=True, description="progress bar on the driver (else a log line every 30 s)"
    )

    @field_validator("job_id")
    @classmethod
    def _safe_job_id(cls, value: str | None) -> str | None:
        if value is not None and not JOB_ID.fullmatch(value):
            raise ValueError(
                f"{value[:60]!r} is not a valid job id: use 1 to 128 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit (it names the file _jobs/<job_id>.json in the output), "
                "e.g. --job-id nightly-2025-01-01"
            )
        return value

    def public_dict(self) -> dict[str, Any]:
        """The settings with secrets masked: for job records and logs."""
        return json.loads(self.model_dump_json())
