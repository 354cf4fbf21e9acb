"""Incremental readers: the lines of a file (or of a byte range of it), and its documents.

Contract:

* Reading is incremental: ``iter_lines`` reads through a 1 MiB buffer and yields decoded lines, so a 10 GB
  log is never held in memory. Compression goes through fsspec's codec registry. A ``byte_range``
  ``(start, end)`` of an uncompressed file yields exactly the lines whose first byte lies in
  ``[start, end)``: contiguous ranges partition the file's lines.
* ``iter_documents`` yields a file's documents: a text file is one (its lines, lazily), a JSONL or Parquet
  file one per record (``Document.text``), with the record's questions when ``ReadOptions`` names a column.
* Every way an input can be bad raises ``InputError`` (see ``pipeline.sources``); a bad record becomes a
  ``Document`` carrying its error, so the other records of the file still stream.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal

from fsspec.compression import compr
from fsspec.utils import seek_delimiter

from pipeline.fs import Storage, get_fs, protocol_of
from pipeline.sources import InputError, ReadOptions, SourceFile

GZIP_MAGIC = b"\x1f\x8b"
BLOCK = 1 << 20
SNIFF = 8192
# Control bytes that do not occur in text; a first block with many of them is binary even without NULs.
_TEXT_CONTROLS = {7, 8, 9, 10, 12, 13, 27}


def _open(src: SourceFile, storage: Storage | None) -> BinaryIO:
    fs, path = get_fs(src.uri, storage)
    where = src.display
    try:
        return fs.open(path, "rb")
    except FileNotFoundError:
        what = "S3 key" if protocol_of(src.uri) in ("s3", "s3a") else "file"
        raise InputError(
            "missing", f"{where}: no such {what}; check the path (and the bucket and key) or remove it."
        ) from None
    except IsADirectoryError:
        raise InputError("unreadable", f"{where} is a directory, not a file; point at its files.") from None
    except PermissionError:
        raise InputError(
            "unreadable", f"{where}: permission denied; grant read access or remove it."
        ) from None
    except OSError as exc:
        raise InputError("unreadable", f"{where}: cannot be opened ({exc}); check the path.") from None


def _looks_binary(head: bytes) -> bool:
    if not head:
        return False
    if b"\x00" in head:
        return True
    controls = sum(1 for b in head if b < 32 and b not in _TEXT_CONTROLS)
    return controls > 0.1 * len(head)


def iter_raw_lines(
    src: SourceFile,
    storage: Storage | None = None,
    byte_range: tuple[int, int] | None = None,
    *,
    compression: Literal["infer", "gzip", "none"] = "infer",
) -> Iterator[tuple[int, bytes]]:
    """``(offset, line)`` pairs, the line without its newline, read through a 1 MiB buffer."""
    if src.error:
        raise InputError(*src.error)
    where = src.display
    with _open(src, storage) as raw:
        try:
            gz = src.compression == "gzip" or (compression == "infer" and raw.read(2) == GZIP_MAGIC)
            raw.seek(0)
        except OSError as exc:
            raise InputError("unreadable", f"{where}: read failed ({exc}); check the file.") from None
        if gz and byte_range is not None:
            raise InputError(
                "unreadable",
                f"{where} is gzip-compressed (by its content), so it cannot be split into byte ranges; "
                "give it a .gz suffix or set input.split_parts: 1.",
            )
        # fsspec's codec registry (what its open(compression=...) uses); either way a buffered reader, so
        # lines come from the C line splitter, whatever the filesystem's own read size.
        buffered: Any = raw  # an fsspec file: a RawIOBase in all but name
        stream: BinaryIO = compr["gzip"](raw, mode="rb") if gz else io.BufferedReader(buffered, BLOCK)
        start, end = byte_range if byte_range else (0, None)
        offset = 0
        try:
            if start > 0:
                # The line that straddles `start` belongs to the previous range: skip through its newline
                # (none to skip when `start` begins a line). fsspec's read_block aligns ranges this way, but
                # returns a whole range at once; a part of a 10 GB file must stream.
                stream.seek(start - 1)
                if stream.read(1) != b"\n":
                    seek_delimiter(stream, b"\n", BLOCK)
                offset = stream.tell()
            head = stream.read(SNIFF)
            if _looks_binary(head):
                hint = "" if gz else " If it is compressed, give it a .gz suffix."
                raise InputError(
                    "binary",
                    f"{where} looks like binary data, not text (NUL or control bytes near byte {offset})."
                    f" Remove it from the inputs or convert it to text.{hint}",
                )
            stream.seek(offset)
            for line in stream:
                if end is not None and offset >= end:
                    return
                yield offset, line[:-1] if line.endswith(b"\n") else line
                offset += len(line)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise InputError(
                "corrupt_gzip",
                f"{where}: corrupt or truncated gzip data after {offset} decompressed bytes ({exc}); "
                "re-create the archive, or drop the .gz suffix if the file is not compressed.",
            ) from None
        except OSError as exc:
            raise InputError("unreadable", f"{where}: read failed ({exc}); check the file.") from None


def iter_lines(
    src: SourceFile,
    storage: Storage | None = None,
    opts: ReadOptions | None = None,
    byte_range: tuple[int, int] | None = None,
) -> Iterator[str]:
    """Decoded lines (no newline, ``\\r`` stripped). Invalid bytes raise ``InputError('encoding')``."""
    for _, line in iter_lines_at(src, storage, opts, byte_range):
        yield line


def iter_lines_at(
    src: SourceFile,
    storage: Storage | None = None,
    opts: ReadOptions | None = None,
    byte_range: tuple[int, int] | None = None,
) -> Iterator[tuple[int, str]]:
    """``(byte offset, decoded line)`` pairs; see ``iter_lines``."""
    opts = opts or ReadOptions()
    for number, (offset, line) in enumerate(
        iter_raw_lines(src, storage, byte_range, compression=opts.compression)
    ):
        if offset == 0 and line.startswith(codecs.BOM_UTF8):
            line = line[3:]
        if line.endswith(b"\r"):
            line = line[:-1]
        try:
            yield offset, line.decode(opts.encoding, opts.encoding_errors)
        except UnicodeDecodeError as exc:
            raise InputError(
                "encoding",
                f"{src.display}: invalid {opts.encoding} at byte {offset + exc.start} "
                f"(line {number + 1} of this read): {exc.reason}. Re-encode it as UTF-8 (e.g. "
                "`iconv -f latin1 -t utf-8`), or set input.encoding to its real encoding, or "
                "input.encoding_errors: replace.",
            ) from None


# --------------------------------------------------------------------------------------------- documents
@dataclass
class Document:
    """One stream's text: either a lazy line iterator (text files) or a whole record's text."""

    stream_id: str
    source_uri: str
    record: str | None = None
    text: str | None = None
    lines: Iterator[str] | None = None
    questions: list[str] = field(default_factory=list)
    error: InputError | None = None

    def iter_lines(self) -> Iterator[str]:
        if self.lines is not None:
            yield from self.lines
        elif self.text is not None:
            lines = self.text.split("\n")
            if len(lines) > 1 and lines[-1] == "":
                lines.pop()  # a final newline ends the last line, as when reading a file
            yield from lines


def stream_id_for(src: SourceFile, byte_range: tuple[int, int] | None = None) -> str:
    return src.uri if byte_range is None else f"{src.uri}#bytes={byte_range[0]}-{byte_range[1]}"


def parse_questions(value: Any, field_name: str) -> list[str]:
    """A question column's value: a string, a list of strings, or a list of mappings with ``field_name``."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    out: list[str] = []
    for item in value:
        if isinstance(item, str):
            text = item
        elif isinstance(item, dict) and isinstance(item.get(field_name), str):
            text = item[field_name]
        else:
            raise ValueError(
                f"a question must be a string or a mapping with {field_name!r}, got {item!r:.80}"
            )
        if text.strip():
            out.append(text)
    return out


def _record_document(
    src: SourceFile, index: int, rec: Any, opts: ReadOptions, where: str, key: str | None = None
) -> Document:
    record_id = str(index)
    if isinstance(rec, dict) and opts.id_column and rec.get(opts.id_column) is not None:
        record_id = str(rec[opts.id_column])
    key = f"id={record_id}" if opts.id_column else key or f"record={index}"
    doc = Document(stream_id=f"{src.uri}#{key}", source_uri=src.display, record=record_id)
    if not isinstance(rec, dict):
        doc.error = InputError("bad_record", f"{where}: record {index} is not an object; expected {{...}}.")
        return doc
    text = rec.get(opts.text_column)
    if not isinstance(text, str):
        have = ", ".join(sorted(map(str, rec))[:12])
        problem = "has no" if text is None else "has a non-string"
        doc.error = InputError(
            "bad_record",
            f"{where}: record {index} {problem} {opts.text_column!r} field; set input.text_column to the "
            f"field that holds the text (it has: {have}).",
        )
        return doc
    doc.text = text
    if opts.question_column:
        try:
            doc.questions = parse_questions(rec.get(opts.question_column), opts.question_field)
        except ValueError as exc:
            doc.error = InputError("bad_record", f"{where}: record {index}: {exc}")
    return doc


def _iter_jsonl(
    src: SourceFile, storage: Storage | None, opts: ReadOptions, byte_range: tuple[int, int] | None
) -> Iterator[Document]:
    # A byte range does not know how many records precede it: its records are named by byte offset.
    index = 0
    for number, (offset, line) in enumerate(iter_lines_at(src, storage, opts, byte_range), start=1):
        if not line.strip():
            continue
        if opts.max_records_per_file is not None and index >= opts.max_records_per_file:
            return
        key = f"offset={offset}" if byte_range else None
        where = f"{src.display} byte {offset}" if byte_range else f"{src.display} line {number}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Document(
                stream_id=f"{src.uri}#{key or f'record={index}'}",
                source_uri=src.display,
                record=str(index),
                error=InputError(
                    "bad_record", f"{where}: not valid JSON ({exc.msg}); fix or remove the line."
                ),
            )
        else:
            yield _record_document(src, index, rec, opts, where, key)
        index += 1


def _parquet_file(src: SourceFile, storage: Storage | None) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if src.error:
        raise InputError(*src.error)
    raw = _open(src, storage)
    try:
        handle: Any = compr["gzip"](raw, mode="rb") if src.compression == "gzip" else raw
        if src.compression == "gzip":  # Parquet needs random access: decompress into memory once
            handle = pa.BufferReader(handle.read())
        return pq.ParquetFile(handle)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError, EOFError, zlib.error) as exc:
        raw.close()
        raise InputError(
            "corrupt_parquet", f"{src.display}: not a readable Parquet file ({exc}); re-write or remove it."
        ) from None


def parquet_row_groups(src: SourceFile, storage: Storage | None) -> list[int]:
    """Rows per row group (from the footer only), for splitting a Parquet file into parts."""
    pf = _parquet_file(src, storage)
    return [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]


def _iter_parquet(
    src: SourceFile, storage: Storage | None, opts: ReadOptions, row_groups: tuple[int, int] | None
) -> Iterator[Document]:
    pf = _parquet_file(src, storage)
    names = pf.schema_arrow.names
    if opts.text_column not in names:
        raise InputError(
            "bad_record",
            f"{src.display}: no column {opts.text_column!r}; set input.text_column to one of {names[:12]}.",
        )
    columns = [c for c in (opts.text_column, opts.id_column, opts.question_column) if c and c in names]
    groups = list(range(*row_groups)) if row_groups else None
    # Records keep their index in the whole file, so a split file names them as an unsplit one does.
    index = sum(pf.metadata.row_group(i).num_rows for i in range(row_groups[0])) if row_groups else 0
    for batch in pf.iter_batches(batch_size=16, columns=columns, row_groups=groups):
        for rec in batch.to_pylist():
            if opts.max_records_per_file is not None and index >= opts.max_records_per_file:
                return
            yield _record_document(src, index, rec, opts, f"{src.display} row {index}")
            index += 1


def iter_documents(
    src: SourceFile,
    storage: Storage | None = None,
    opts: ReadOptions | None = None,
    byte_range: tuple[int, int] | None = None,
    row_groups: tuple[int, int] | None = None,
) -> Iterator[Document]:
    """The documents of one file (or of a byte range / row-group range of it): a text file is one,
    JSONL/Parquet one per record."""
    opts = opts or ReadOptions()
    if src.format == "text":
        yield Document(
            stream_id=stream_id_for(src, byte_range),
            source_uri=src.display,
            lines=iter_lines(src, storage, opts, byte_range),
        )
    elif src.format == "jsonl":
        yield from _iter_jsonl(src, storage, opts, byte_range)
    else:
        yield from _iter_parquet(src, storage, opts, row_groups)


def iter_log_lines(
    src: SourceFile,
    storage: Storage | None = None,
    opts: ReadOptions | None = None,
    byte_range: tuple[int, int] | None = None,
) -> Iterator[str]:
    """A log file's lines; for JSONL/Parquet logs, the lines of each record's text column in order."""
    opts = opts or ReadOptions()
    if src.format == "text":
        yield from iter_lines(src, storage, opts, byte_range)
        return
    for doc in iter_documents(src, storage, opts):
        if doc.error:
            raise doc.error
        yield from doc.iter_lines()
