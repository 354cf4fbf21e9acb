"""Inputs: expand paths, globs and prefixes into file descriptors, and say how to read them.

Contract:

* ``expand_inputs`` turns local paths, directories, globs and ``s3://`` keys/prefixes/globs into
  ``SourceFile`` descriptors (URI, format, compression) without reading them. A pattern that matches nothing
  becomes a descriptor carrying its error, so it ends up as an error row like any other bad input.
* Formats: plain text, JSONL (one document per line, text in ``text_column``) and Parquet (text column),
  each optionally gzip-compressed (``.gz``, or sniffed from the magic bytes when ``compression="infer"``).
  ``TextFormat`` holds the reading settings once: the job's ``input`` section and the readers'
  ``ReadOptions`` both extend it. The readers themselves are in ``pipeline.inputs.readers``.
* Every way an input can be bad raises ``InputError(kind, message)`` with a message naming the input and the
  fix: ``missing``, ``access_denied``, ``credentials``, ``unreadable``, ``binary``, ``encoding``,
  ``corrupt_gzip``, ``corrupt_parquet``, ``bad_record``, ``empty``. Callers turn it into an error row;
  nothing else is affected. ``input_error`` names what an exception met while listing, opening or reading
  an input means (permission denied, S3 credentials missing or refused, I/O error), so that even an
  ``s3://`` input without credentials is one error row, not a failed job.
"""

from __future__ import annotations

import codecs
import logging
import posixpath
import stat
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from botocore.exceptions import (
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from fsspec.core import has_magic
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.storage import Storage, display_uri, get_fs, normalize_uri, protocol_of

log = logging.getLogger(__name__)

Format = Literal["text", "jsonl", "parquet"]
ERROR_KINDS = (
    "missing",
    "access_denied",
    "credentials",
    "unreadable",
    "binary",
    "encoding",
    "corrupt_gzip",
    "corrupt_parquet",
    "bad_record",
    "empty",
    "no_questions",
    "internal",
)


class InputError(Exception):
    """A bad input. ``kind`` is one of ``ERROR_KINDS``; ``message`` names the input and the fix."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


#: S3 error codes that mean the credentials themselves are missing, unknown, wrong or expired (not "this
#: key is not yours to read", which is AccessDenied).
CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "TokenRefreshRequired",
        "InvalidToken",
        "MissingSecurityHeader",
        "AuthorizationHeaderMalformed",
        "UnrecognizedClientException",
    }
)


#: botocore's "no usable credentials" errors: raised by s3fs untranslated (they are not ``OSError``s).
CREDENTIAL_ERRORS: tuple[type[BaseException], ...] = (
    NoCredentialsError,
    PartialCredentialsError,
    CredentialRetrievalError,
)
#: botocore's "the endpoint cannot be reached" errors (refused, unreachable, timed out, connection closed),
#: raised after its retries (``storage.retries``); s3fs passes them on untranslated (not ``OSError``s).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (BotoConnectionError, HTTPClientError)
#: What opening, listing or reading an input (or writing the output) may raise besides ``InputError``.
ACCESS_ERRORS: tuple[type[BaseException], ...] = (OSError, *CREDENTIAL_ERRORS, *CONNECTION_ERRORS)


def s3_error_code(exc: BaseException) -> str | None:
    """The S3 error code behind ``exc`` (s3fs raises ``PermissionError`` from botocore's ``ClientError``)."""
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code") or "") or None
        seen = seen.__cause__ or seen.__context__
    return None


def explain_forbidden(fs: Any, path: str, exc: BaseException) -> BaseException:
    """S3 answers a HEAD request (how s3fs opens a key) with a bare 403 and no error code: ask once more
    with a one-byte GET, whose answer says whether the credentials or the permissions are at fault."""
    if not isinstance(exc, PermissionError) or s3_error_code(exc) not in (None, "403"):
        return exc
    try:
        fs.cat_file(path, start=0, end=1)
    except ACCESS_ERRORS as better:
        return better if s3_error_code(better) not in (None, "403") else exc
    return exc


def is_credential_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the S3 credentials are missing or invalid (not: access denied)."""
    return isinstance(exc, CREDENTIAL_ERRORS) or s3_error_code(exc) in CREDENTIAL_CODES


def input_error(exc: BaseException, where: str) -> InputError:
    """What ``exc``, met while listing, opening or reading the input ``where``, means for that input."""
    if isinstance(exc, InputError):
        return exc
    if is_credential_error(exc):
        return InputError(
            "credentials",
            f"{where}: no valid S3 credentials ({_short(exc)}); set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
            "or AWS_PROFILE where the job runs (every node), or storage.key/storage.secret, or "
            "storage.anon: true for a public bucket.",
        )
    if isinstance(exc, CONNECTION_ERRORS):
        return InputError(
            "unreadable",
            f"{where}: the S3 endpoint cannot be reached ({_short(exc)}); check storage.endpoint_url (or "
            "AWS_ENDPOINT_URL) and the network where the job runs.",
        )
    if isinstance(exc, PermissionError):
        if where.startswith(("s3://", "s3a://")):
            fix = "grant s3:GetObject (and s3:ListBucket for prefixes) to the job's credentials"
        else:
            fix = "grant the job's user read access"
        return InputError("access_denied", f"{where}: access denied ({_short(exc)}); {fix}, or remove it.")
    if isinstance(exc, FileNotFoundError) and s3_error_code(exc) == "NoSuchBucket":
        bucket = where.partition("://")[2].split("/", 1)[0]
        return InputError(
            "missing",
            f"{where}: the bucket {bucket!r} does not exist; check the bucket name (and "
            "storage.endpoint_url, if the bucket lives on another S3 service) or remove the input.",
        )
    if isinstance(exc, FileNotFoundError):
        what = "S3 key" if where.startswith(("s3://", "s3a://")) else "file"
        return InputError(
            "missing", f"{where}: no such {what}; check the path (and the bucket and key) or remove it."
        )
    if isinstance(exc, IsADirectoryError):
        return InputError("unreadable", f"{where} is a directory, not a file; point at its files.")
    return InputError("unreadable", f"{where}: cannot be read ({_short(exc)}); check the path.")


#: Local files that are not regular files, by their mode: opening or reading one can block forever (a named
#: pipe waits for a writer), never end (``/dev/zero``) or fail obscurely (a socket).
_SPECIAL_FILES: tuple[tuple[Any, str], ...] = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def special_file(mode: int) -> str | None:
    """What a local file of this ``st_mode`` is when it is neither a regular file nor a folder, else None."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return next((what for test, what in _SPECIAL_FILES if test(mode)), "a special file")


def not_a_regular_file(where: str, what: str) -> InputError:
    """The error of an input that is a pipe, device or socket: refused before it is opened."""
    return InputError(
        "unreadable",
        f"{where} is {what}, not a regular file: reading it could wait forever or never end, so it is not "
        "opened. Remove it from the inputs, or copy what it holds into a regular file and read that.",
    )


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "..."


class TextFormat(BaseModel):
    """How input files are decoded: the settings the job's ``input`` section and ``ReadOptions`` share."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    format: Literal["auto", "text", "jsonl", "parquet"] = Field(
        default="auto", description="auto: by suffix (.jsonl/.ndjson/.json, .parquet/.pq, else text)"
    )
    compression: Literal["infer", "gzip", "none"] = Field(
        default="infer", description="infer: a .gz suffix or gzip's magic bytes"
    )
    encoding: str = Field(
        default="utf-8", description="any ASCII-compatible encoding (latin-1, cp1252 ...); not UTF-16/32"
    )
    encoding_errors: Literal["strict", "replace", "ignore"] = Field(
        default="strict", description="strict: invalid bytes make an encoding error row"
    )
    text_column: str = Field(
        default="text", description="JSONL/Parquet field holding the document (for logs: lines)"
    )
    id_column: str | None = Field(
        default=None, description="JSONL/Parquet field naming each record (#id=ID); unset: its position"
    )
    max_records_per_file: int | None = Field(
        default=None, ge=1, description="read at most this many records per JSONL/Parquet file (per part)"
    )

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, value: str) -> str:
        return check_encoding(value)

    def read_options(self, **questions: Any) -> ReadOptions:
        """These settings as ``ReadOptions`` (``questions``: ``question_column``/``question_field``)."""
        return ReadOptions(**{name: getattr(self, name) for name in TextFormat.model_fields}, **questions)


class ReadOptions(TextFormat):
    """What the readers need: the text format, and where records keep their questions (``qa`` only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    question_column: str | None = None
    question_field: str = "question_text"


@dataclass(frozen=True)
class SourceFile:
    uri: str
    format: Format = "text"
    compression: Literal["gzip"] | None = None
    size: int | None = None
    #: (kind, message) when the input is known to be bad before reading it (e.g. a glob that matched nothing)
    error: tuple[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceFile:
        error = data.get("error")
        return cls(**{**data, "error": tuple(error) if error else None})

    @property
    def display(self) -> str:
        return display_uri(self.uri)


def check_encoding(encoding: str) -> str:
    """Only ASCII-compatible encodings work with byte-level line splitting; say so up front."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise ValueError(f"unknown text encoding {encoding!r}; use e.g. utf-8, latin-1 or cp1252") from None
    if name.startswith(("utf-16", "utf-32")):
        raise ValueError(
            f"encoding {encoding!r} is not ASCII-compatible; convert the input to UTF-8 first "
            f"(e.g. `iconv -f {encoding} -t utf-8`)."
        )
    return encoding


def detect_format(uri: str, opts: TextFormat) -> tuple[Format, Literal["gzip"] | None]:
    name = posixpath.basename(uri.rstrip("/")).lower()
    compression: Literal["gzip"] | None = None
    if opts.compression == "gzip" or (opts.compression == "infer" and name.endswith((".gz", ".gzip"))):
        compression = "gzip"
    if name.endswith((".gz", ".gzip")):
        name = name.rsplit(".", 1)[0]
    if opts.format != "auto":
        return opts.format, compression
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl", compression
    if name.endswith((".parquet", ".pq")):
        return "parquet", compression
    return "text", compression


def _hidden(relative: str) -> bool:
    """Hidden files and folders (``.x``, ``_x``: temp files, markers) are not inputs."""
    return any(part.startswith((".", "_")) for part in relative.strip("/").split("/") if part)


def _is_file(name: str, info: dict[str, Any]) -> bool:
    """A listing entry that is a file: not a directory, nor the empty ``prefix/`` object that S3
    consoles create as a folder marker."""
    return info.get("type") != "directory" and not name.endswith("/")


def _exists(fs: Any, path: str) -> bool:
    try:
        return bool(fs.exists(path))
    except ACCESS_ERRORS:
        return False  # the glob below reports it


class _Found:
    """The files found so far, each once, in the order found, with an error row for each unreadable input."""

    def __init__(self, opts: TextFormat) -> None:
        self.opts = opts
        self.out: list[SourceFile] = []
        self.seen: set[str] = set()

    def add(
        self,
        uri: str,
        size: int | None = None,
        error: tuple[str, str] | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        if uri in self.seen:
            return
        self.seen.add(uri)
        what = special_file(info["mode"]) if info and info.get("type") == "other" and "mode" in info else None
        if what is not None and error is None:  # a local pipe, device or socket: never opened
            refused = not_a_regular_file(display_uri(uri), what)
            error = (refused.kind, refused.message)
        fmt, compression = detect_format(uri, self.opts)
        self.out.append(SourceFile(uri, fmt, compression, size, error))

    def unreadable(self, exc: BaseException, uri: str) -> None:
        error = input_error(exc, display_uri(uri))
        self.add(uri, error=(error.kind, error.message))


def _child_uri(name: str, parent_uri: str) -> str:
    """A path fsspec listed under ``parent_uri``, as a URI of the same protocol."""
    protocol = protocol_of(parent_uri)
    return name if protocol == "file" else f"{protocol}://{name}"


def _expand_glob(found: _Found, fs: Any, path: str, uri: str) -> None:
    try:
        matches = fs.glob(path, detail=True)
    except ACCESS_ERRORS as exc:
        found.unreadable(exc, uri)
        return
    files = sorted(n for n, info in matches.items() if _is_file(n, info))
    if not files:
        found.add(uri, error=("missing", f"no input matches {display_uri(uri)}; check the pattern and path."))
    for name in files:
        found.add(_child_uri(name, uri), matches[name].get("size"), info=matches[name])


def _expand_path(found: _Found, fs: Any, path: str, uri: str) -> None:
    """A file as itself, a directory as its files (searched recursively, hidden ones skipped)."""
    try:
        info = fs.info(path)
    except FileNotFoundError as exc:  # this input's error row, known before any actor starts
        found.unreadable(exc, uri)
        return
    except ACCESS_ERRORS as exc:  # no credentials, access denied ...
        found.unreadable(explain_forbidden(fs, path, exc), uri)
        return
    if info is None or info.get("type") != "directory":
        found.add(uri, info.get("size") if info else None, info=info)
        return
    try:
        listed = fs.find(path, detail=True)
    except ACCESS_ERRORS as exc:
        found.unreadable(exc, uri)
        return
    names = sorted(n for n, i in listed.items() if _is_file(n, i) and not _hidden(n[len(path) :]))
    if not names:
        found.add(uri, error=("missing", f"directory {display_uri(uri)} holds no input files."))
    for name in names:
        found.add(_child_uri(name, uri), listed[name].get("size"), info=listed[name])


def expand_inputs(paths: Iterable[str], storage: Storage | None, opts: TextFormat) -> list[SourceFile]:
    """Files named by ``paths`` (files, directories searched recursively, globs), in a stable order."""
    found = _Found(opts)
    for spec in paths:
        uri = normalize_uri(str(spec))
        fs, path = get_fs(uri, storage)
        if has_magic(path) and not _exists(fs, path):  # "book [2024].txt" is a name, not a pattern
            _expand_glob(found, fs, path, uri)
        else:
            _expand_path(found, fs, path, uri)
    return found.out


def file_size(src: SourceFile, storage: Storage | None) -> int | None:
    if src.size is not None:
        return src.size
    fs, path = get_fs(src.uri, storage)
    try:
        return int(fs.size(path))
    except (TypeError, ValueError):
        return None
    except ACCESS_ERRORS:
        return None
