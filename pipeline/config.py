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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from cache_policies import POLICIES, CachePolicy, PolicyConfigError, make_policy, policy_kwargs
from longread.generation import GenerationSettings as Sampling
from longread.models import model_name
from pipeline.inputs.sources import TextFormat
from pipeline.output.parts import COMMIT_BYTES, COMMIT_ROWS, COMMIT_SECONDS
from pipeline.storage import DEFAULT_S3_RETRIES, Storage


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(Section):
    source: str = Field(
        default="default", description="'default' (embedded SmolLM2-135M-Instruct), a model folder or .gguf"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: one GPU per actor when the cluster has GPUs"
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flash_attention_4"] = "sdpa"
    trust_remote_code: bool = False
    cuda_graphs: bool = Field(
        default=False,
        description="replay steady-state full-chunk forwards from CUDA graphs (GPU, bounded policy, SDPA "
        "or eager attention; longread.graphs); ignored on CPU",
    )

    @property
    def display_name(self) -> str:
        return model_name(self.source)


class PolicySettings(Section):
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

    def build(self) -> CachePolicy:
        return make_policy(
            self.name, **policy_kwargs(self.name, self.params, budget=self.budget, sink=self.sink)
        )


class StorageSettings(Section):
    """S3 settings; unset ones come from AWS_ENDPOINT_URL(_S3), AWS_REGION and botocore's credential chain."""

    endpoint_url: str | None = None
    region: str | None = None
    key: SecretStr | None = None
    secret: SecretStr | None = None
    token: SecretStr | None = None
    anon: bool = False
    retries: int = Field(
        default=DEFAULT_S3_RETRIES, ge=1, le=100, description="attempts per S3 request (botocore backoff)"
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
        default_factory=list, description="files, folders, globs, s3:// keys or prefixes"
    )
    max_tokens_per_stream: int | None = Field(
        default=None, ge=1, description="stop each stream after this many tokens"
    )
    split_parts: int | Literal["auto"] = Field(
        default="auto",
        description="split each large text file into this many parallel parts; auto: logs split a file "
        "over the actors when there are fewer files than actors, books and records never",
    )
    min_split_bytes: int = Field(default=1 << 20, ge=1)


#: Default of ``output.checkpoint_every_tokens`` (cost per checkpoint in BENCHMARKS.md, "Stream checkpoints").
CHECKPOINT_EVERY_TOKENS = 65536


class OutputSettings(Section):
    path: str | None = Field(default=None, description="folder or s3:// prefix; default ./output/<job name>")
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
        description="... or once the oldest has waited this long: a running stream's rows are readable "
        "within it",
    )


#: Defaults of ``resources.streams_per_actor``, from benchmarks/bench_batch.py (BENCHMARKS.md).
STREAMS_PER_CPU_ACTOR = 4
STREAMS_PER_GPU_ACTOR = 16


class ResourceSettings(Section):
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

    temperature: float = Field(default=0.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0)
    seed: int | None = 0
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


class BaseJobConfig(Section):
    """What every job has; ``actors.tasks.JobConfig`` adds one section per task."""

    task: str
    job_id: str | None = Field(default=None, description="default: <job name>-<UTC time>-<random>")
    model: ModelSettings = Field(default_factory=lambda: ModelSettings())
    policy: PolicySettings = Field(default_factory=lambda: PolicySettings())
    input: InputSettings = Field(default_factory=lambda: InputSettings())
    output: OutputSettings = Field(default_factory=lambda: OutputSettings())
    resources: ResourceSettings = Field(default_factory=lambda: ResourceSettings())
    storage: StorageSettings = Field(default_factory=lambda: StorageSettings())
    generation: GenerationSettings = Field(default_factory=lambda: GenerationSettings())
    progress: bool = True

    def public_dict(self) -> dict[str, Any]:
        """The settings with secrets masked: for job records and logs."""
        return json.loads(self.model_dump_json())
