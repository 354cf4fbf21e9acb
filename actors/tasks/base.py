"""The task contract: what one kind of job (summarize, qa, logs) owns, in one module per task.

A task subclasses ``Task`` and sets:

* ``name`` (the config's ``task:`` value and the name of its settings section), ``job_name`` (``python -m
  jobs.<job_name>``, the default output folder), ``Settings`` (its pydantic section), ``row_kinds`` (what
  its rows are; ``preview_kind`` is the one the final report shows), ``default_config`` (the YAML a job
  runs without ``--config``, if any);
* ``add_flags(parser)``: its own command-line flags (``dest`` = the dotted setting they override);
* ``plan(sources)``: how its inputs become ``StreamTask`` descriptors (default: a file or part of a file,
  records as streams), or ``line_grouping()`` for streams that need a shuffle first;
* ``streams(unit, lines)``: the streams of one descriptor, each a ``Stream(info, program)`` whose
  ``program(ctx)`` is the stream program (see ``actors.context``) that hands over each row as it is made
  (``yield from ctx.write(...)``).

A task object is built per process from the job's config and storage (``Task(cfg, storage)``); the
constructor is where a task checks what it reads besides its inputs (a questions file), so the driver
fails fast before Ray. The registry is ``actors.tasks.TASKS``; ``actors.tasks.JobConfig`` has one
settings section per registered task.
"""

from __future__ import annotations

import argparse
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from pipeline.config import BaseJobConfig, Section
from pipeline.inputs.readers import Document, Meter, iter_documents
from pipeline.inputs.sources import ReadOptions, SourceFile
from pipeline.job.plan import GroupedInput, StreamTask, plan_files
from pipeline.storage import Storage

if TYPE_CHECKING:
    # The stream programs' side (the engine's requests: torch) is imported where streams run, not when the
    # command line or the config is built from the tasks' settings (``--help`` in a fraction of a second).
    from actors.context import StreamInfo, TaskContext
    from longread.scheduler import Program

    ProgramFactory = Callable[[TaskContext], Program[None]]


@dataclass
class Stream:
    """One stream of a descriptor: who it is, and the program that processes it."""

    info: StreamInfo
    program: ProgramFactory


class Task:
    name: ClassVar[str]
    job_name: ClassVar[str]
    Settings: ClassVar[type[Section]]
    row_kinds: ClassVar[tuple[str, ...]]
    preview_kind: ClassVar[str]
    default_config: ClassVar[str | None] = None
    #: False when the task can run on the sample plays (``inputs()``) when ``input.paths`` is empty
    needs_input_paths: ClassVar[bool] = True
    #: what to say when ``input.paths`` is empty but needed, after "pass --input PATH"
    inputs_hint: ClassVar[str] = ""
    #: JSONL/Parquet records are streams of their own (else a file of records is one stream)
    records_are_streams: ClassVar[bool] = True
    #: ``input.split_parts: auto`` splits this task's large files over the actors (a log can be cut
    #: anywhere between lines; a book cut in parts would be summarized in parts)
    splits_by_default: ClassVar[bool] = False

    def __init__(self, cfg: BaseJobConfig, storage: Storage | None = None) -> None:
        self.cfg = cfg
        self.storage = storage

    @property
    def settings(self) -> Any:
        """This task's section of the config (typed by each task's own ``settings`` property)."""
        return getattr(self.cfg, self.name)

    # ------------------------------------------------------------------ command line
    @classmethod
    def add_flags(cls, parser: argparse.ArgumentParser) -> None:
        """Flags of this task's job (``dest`` = the dotted setting each overrides)."""

    @classmethod
    def needs_inputs(cls, cfg: BaseJobConfig) -> bool:
        """Whether this job must be given ``input.paths`` (else it runs on the sample plays)."""
        return cls.needs_input_paths

    # ------------------------------------------------------------------ planning (driver)
    def inputs(self) -> list[str]:
        if self.cfg.input.paths or self.needs_inputs(self.cfg):
            return list(self.cfg.input.paths)
        from longread.assets import sample_books  # the sample corpus that scripts/setup.sh fetches

        return [str(p) for p in sample_books()]

    def read_options(self) -> ReadOptions:
        return self.cfg.input.read_options()

    def plan(self, sources: list[SourceFile]) -> list[StreamTask]:
        i = self.cfg.input
        return plan_files(
            self.name,
            sources,
            storage=self.storage,
            split_parts=1 if i.split_parts == "auto" else i.split_parts,
            min_split_bytes=i.min_split_bytes,
            records_are_streams=self.records_are_streams,
        )

    def line_grouping(self) -> GroupedInput | None:
        """Set when each stream gathers the lines that share a key (the driver shuffles them first)."""
        return None

    # ------------------------------------------------------------------ streams (actors)
    def streams(
        self, unit: StreamTask, lines: list[str] | None = None, meter: Meter | None = None
    ) -> Iterator[Stream]:
        """The streams of ``unit`` (``lines``: a shuffle's lines of it; ``meter``: told how far reading
        got)."""
        raise NotImplementedError

    def documents(
        self, unit: StreamTask, meter: Meter | None = None
    ) -> Iterator[tuple[StreamInfo, Document]]:
        """The documents of a descriptor (a file, a part of one, or its records), each with its identity.

        A file that cannot be read raises ``InputError`` here (the worker writes one error row for it);
        a bad record comes as a document carrying its error (its program raises it).
        """
        from actors.context import StreamInfo

        src = unit.sources[0]
        opts = self.read_options()
        inputs = ((src.uri, src.size),)
        for doc in iter_documents(
            src, self.storage, opts, unit.byte_range, unit.row_groups, unit.every, meter
        ):
            yield StreamInfo(doc.stream_id, doc.source_uri, unit.part, unit.parts, doc.record, inputs), doc


# ---------------------------------------------------------------------------------- settings helpers
def max_new_tokens_shorthand(data: Any, aliases: dict[str, str]) -> Any:
    """Before a task section validates: each flat ``alias: N`` (the keys of earlier configs, e.g.
    ``qa.max_new_tokens``) becomes ``section.max_new_tokens: N`` of that output's ``Decoding``."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for alias, section in aliases.items():
        if alias not in data:
            continue
        value = data.pop(alias)
        given = data.get(section)
        sub = dict(given.model_dump(exclude_unset=True) if isinstance(given, BaseModel) else given or {})
        if sub.get("max_new_tokens", value) != value:
            raise ValueError(
                f"{alias}={value} and {section}.max_new_tokens={sub['max_new_tokens']} disagree: set one "
                f"({alias} is shorthand for {section}.max_new_tokens)"
            )
        sub["max_new_tokens"] = value
        data[section] = sub
    return data


def check_template(text: str, allowed: set[str], name: str, required: frozenset[str] = frozenset()) -> None:
    """A prompt template may use only ``allowed`` placeholders and must use the ``required`` ones."""
    fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    unknown = fields - allowed
    if unknown:
        raise ValueError(f"{name} uses unknown placeholders {sorted(unknown)}; available: {sorted(allowed)}")
    missing = required - fields
    if missing:
        raise ValueError(f"{name} must contain {', '.join('{' + m + '}' for m in sorted(missing))}")


def check_regex(value: str | None, name: str) -> None:
    if value:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{name} is not a valid regex: {exc}") from None
