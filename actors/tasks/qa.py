"""Task ``qa``: answers to questions about each document, streamed once (``python -m jobs.answer_questions``).

Contract: the document is streamed through the bounded cache (up to ``max_tokens_per_stream``), then every
question is answered from its own copy of that state (one ``AskMany``), so an answer (or its question)
never influences the next one. One ``answer`` row per question, in order. Questions come from the record
(``qa.question_column``), from ``qa.questions`` (every document) and from ``qa.questions_file`` (read once
per process; a missing or malformed file fails the job before Ray starts). A document without questions
raises ``InputError('no_questions')``; one without text raises ``InputError('empty')``.

While the document streams, all the program knows is ``QAState`` (where the next piece of text starts,
whether there was text): a checkpoint before each piece holds it, and a resumed stream reads on from there.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import Field, field_validator, model_validator

from actors.checkpoint import allow
from actors.tasks.base import Stream, Task, check_template, max_new_tokens_shorthand
from longread.text import ChapterSplitter
from pipeline.config import BaseJobConfig, Decoding, Section
from pipeline.inputs.readers import Document, Meter, parse_questions
from pipeline.inputs.sources import ACCESS_ERRORS, InputError, ReadOptions, input_error, special_file
from pipeline.job.plan import StreamTask
from pipeline.storage import Storage, check_no_credentials, display_uri, get_fs, protocol_of

if TYPE_CHECKING:  # the stream programs' side (torch) is imported by the worker, not with the settings
    from actors.context import TaskContext
    from longread.scheduler import Program

Questions = list[str] | dict[str, list[str]]


class QASettings(Section):
    """Answers to questions about each document, each from its own copy of the streamed state."""

    questions: list[str] = Field(default_factory=list, description="asked of every document")
    questions_file: str | None = Field(
        default=None,
        description="local or s3:// YAML/JSON list (every document) or mapping (file name, record id or "
        "stream id -> list), or .txt (one per line)",
    )
    question_column: str | None = Field(
        default="questions", description="JSONL/Parquet field with the record's questions"
    )
    question_field: str = Field(default="question_text", description="key of the question in mapping items")
    prompt: str = Field(
        default=(
            "Answer the question about the text above in a short paragraph of three to five sentences.\n"
            "Question: {question}"
        ),
        description="instruction after the document; must contain {question}",
    )
    generation: Decoding = Field(
        default_factory=lambda: Decoding(), description="length and repetition controls of an answer"
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return max_new_tokens_shorthand(data, {"max_new_tokens": "generation"})

    @field_validator("questions_file")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        return None if value is None else check_no_credentials(value, "questions file")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        check_template(value, {"question"}, "prompt", required=frozenset({"question"}))
        return value


def load_questions_file(uri: str, storage: Storage | None, field_name: str) -> Questions:
    """A list of questions for every document, or a mapping document -> questions (YAML, JSON or .txt)."""
    where = f"qa.questions_file {display_uri(uri)}"
    fs, path = get_fs(uri, storage)
    try:
        if protocol_of(uri) == "file":  # a folder or a pipe is named, never opened (a pipe would block)
            mode = os.stat(path).st_mode
            what = "a folder" if stat.S_ISDIR(mode) else special_file(mode)
            if what is not None:
                raise ValueError(
                    f"{where} is {what}, not a file; point it at a YAML/JSON list or mapping of questions, "
                    "or a .txt file with one question per line (e.g. jobs/configs/sample_questions.yaml)."
                )
        data = fs.cat_file(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{where} does not exist; check the path (a relative one is relative to the current folder)."
        ) from None
    except ACCESS_ERRORS as exc:  # access denied, no S3 credentials, a folder on S3 ...
        raise ValueError(f"{where} cannot be read ({input_error(exc, path).message})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{where} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8, e.g. "
            f"`iconv -f latin1 -t UTF-8 {posixpath.basename(path)}` (with its real encoding after -f)."
        ) from None
    if path.endswith(".txt"):
        return [line.strip() for line in text.splitlines() if line.strip()]
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"qa.questions_file {display_uri(uri)} is not valid YAML/JSON: {exc}") from None
    try:
        if isinstance(data, list):
            return parse_questions(data, field_name)
        if isinstance(data, dict):
            return {str(k): parse_questions(v, field_name) for k, v in data.items()}
    except ValueError as exc:
        raise ValueError(f"qa.questions_file {display_uri(uri)}: {exc}") from None
    raise ValueError(f"qa.questions_file {display_uri(uri)} must hold a list, or a mapping document -> list")


@allow
@dataclass
class QAState:
    """All a qa stream knows while it streams (what its checkpoints hold)."""

    position: Any = None  # where the next piece of text starts (None: the document's start)
    has_text: bool = False


class QA(Task):
    name = "qa"
    job_name = "answer_questions"
    Settings = QASettings
    row_kinds = ("answer",)
    preview_kind = "answer"
    inputs_hint = (
        ", or --question / --questions-file to ask the sample plays (jobs/configs/answer_questions.yaml "
        "does, with questions about them)"
    )

    def __init__(self, cfg: BaseJobConfig, storage: Storage | None = None) -> None:
        super().__init__(cfg, storage)
        s = self.settings
        self.file_questions: Questions | None = None
        if s.questions_file:
            self.file_questions = load_questions_file(s.questions_file, storage, s.question_field)

    @property
    def settings(self) -> QASettings:
        return self.cfg.qa  # type: ignore[attr-defined]

    @classmethod
    def needs_inputs(cls, cfg: BaseJobConfig) -> bool:
        """Questions of its own (not from records) can be asked of the sample plays."""
        s: QASettings = cfg.qa  # type: ignore[attr-defined]
        return not (s.questions or s.questions_file)

    @classmethod
    def add_flags(cls, parser: argparse.ArgumentParser) -> None:
        add = parser.add_argument
        add("--question", action="append", dest="qa.questions", metavar="TEXT")
        add("--questions-file", dest="qa.questions_file", metavar="PATH")
        add("--question-column", dest="qa.question_column", metavar="FIELD")

    def read_options(self) -> ReadOptions:
        s = self.settings
        return self.cfg.input.read_options(question_column=s.question_column, question_field=s.question_field)

    def questions_for(self, doc: Document) -> list[str]:
        out = list(doc.questions) + list(self.settings.questions)
        file_questions = self.file_questions
        if isinstance(file_questions, list):
            out += file_questions
        elif isinstance(file_questions, dict):
            name = posixpath.basename(doc.source_uri.split("#", 1)[0])
            keys = [doc.stream_id, doc.source_uri, name]
            if doc.record is not None:
                keys += [doc.record, f"{name}#{doc.record}"]
            for key in keys:
                if key in file_questions:
                    out += file_questions[key]
                    break
        return out

    def no_questions(self, doc: Document) -> InputError:
        """The error of a document without questions, naming the record and where questions come from."""
        column = self.settings.question_column
        fragment = doc.stream_id.partition("#")[2]  # record=N, id=X or offset=B: which record of the file
        where = f"{doc.source_uri}#{fragment}" if fragment else doc.source_uri
        what = "record" if fragment else "document"
        if doc.record is not None:
            what += f" (id {doc.record}" + (f"; its {column!r} field is missing or empty)" if column else ")")
        return InputError(
            "no_questions",
            f"{where}: no questions for this {what}; set qa.questions, qa.question_column or "
            "qa.questions_file (a list for every document, or a mapping keyed by the file name, the record "
            "id or FILE#RECORD_ID).",
        )

    def streams(
        self, unit: StreamTask, lines: list[str] | None = None, meter: Meter | None = None
    ) -> Iterator[Stream]:
        for info, doc in self.documents(unit, meter):
            yield Stream(info, partial(self.program, doc=doc, questions=self.questions_for(doc)))

    def program(self, ctx: TaskContext, doc: Document, questions: list[str]) -> Program[None]:
        if doc.error is not None:
            raise doc.error
        if not questions:
            raise self.no_questions(doc)
        st: QAState = ctx.restored() or QAState()
        pieces = ChapterSplitter(None).pieces_at(doc.lines_at(st.position, ctx.damage))
        for piece in pieces:
            st.position = piece.start
            yield from ctx.checkpoint(st)  # all before this piece is streamed: a resumed stream reads on here
            st.has_text = st.has_text or bool(piece.text.strip())
            ids = ctx.encode(piece.text, max_tokens=ctx.room)
            fit, full = ctx.fit(ids)
            yield from ctx.feed(fit)
            if full:
                ctx.truncated = (len(fit) < len(ids) and ctx.left_over(piece.text, fit)) or any(
                    p.text.strip() for p in pieces
                )
                break
        if not st.has_text:
            raise InputError(
                "empty", f"{doc.source_uri}: empty document (no text); remove it or fix the export."
            )
        s = self.settings
        feed_seconds = ctx.feed_seconds
        # Every answer starts from the same streamed state: none sees another question or answer.
        results = yield from ctx.ask_many([s.prompt.format(question=q) for q in questions], s.generation)
        for index, (question, result) in enumerate(zip(questions, results)):
            yield from ctx.write(
                "answer",
                segment_index=index,
                token_start=0,
                token_end=ctx.tokens,
                question=question,
                output_text=result.text,
                stop_reason=result.stop_reason,
                feed_seconds=feed_seconds,
                generate_seconds=result.seconds,
            )
