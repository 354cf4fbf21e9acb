"""Incremental readers: the lines of a file (or of a byte range of it), and its documents.

Contract:

* Reading is incremental: ``iter_lines`` reads through a 1 MiB buffer and yields decoded lines, so a 10 GB
  log is never held in memory. Compression goes through fsspec's codec registry. A ``byte_range``
  ``(start, end)`` of an uncompressed file yields exactly the lines whose first byte lies in
  ``[start, end)``: contiguous ranges partition the file's lines.
* ``iter_documents`` yields a file's documents: a text file is one (its lines, lazily), a JSONL or Parquet
  file one per record (``Document.text``), with the record's questions when ``ReadOptions`` names a column.
* Every way an input can be bad raises ``InputError`` (see ``pipeline.inputs.sources``); a bad record becomes
  a ``Document`` carrying its error, so the other records of the file still stream.
"""

from __future__ import annotations

import codecs
import functools
import gzip
import io
import json
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal

from fsspec.compression import compr
from fsspec.utils import seek_delimiter

from pipeline.inputs.sources import (
    ACCESS_ERRORS,
    CREDENTIAL_ERRORS,
    InputError,
    ReadOptions,
    SourceFile,
    explain_forbidden,
    input_error,
    not_a_regular_file,
    special_file,
)
from pipeline.storage import Storage, get_fs, protocol_of

GZIP_MAGIC = b"\x1f\x8b"
#: Other compressed formats, by their magic bytes: named in the error, since only gzip is read.
OTHER_COMPRESSIONS = {
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PK\x03\x04": "zip",
    b"7z\xbc\xaf\x27\x1c": "7z",
}
BLOCK = 1 << 20
#: A ``Meter`` learns how far a read got every this many bytes of lines (every line of records).
METER_STEP = 1 << 16
#: Lines longer than this come in pieces (``iter_raw_lines``' ``max_line``).
MAX_LINE = BLOCK
SNIFF = 8192
# Control bytes that do not occur in text; a first block with many of them is binary even without NULs.
_TEXT_CONTROLS = {7, 8, 9, 10, 12, 13, 27}
#: What damaged gzip data raises while it is read.
GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


class Meter:
    """How far the readers of one descriptor got: per input file, the furthest position read, in bytes of
    the file as stored (compressed bytes for gzip; from the start of the byte range for a part), for
    progress. The reading thread updates it every ``BLOCK`` bytes or so; another thread reads ``bytes``
    (a stale figure only delays the display)."""

    def __init__(self) -> None:
        self.positions: dict[str, int] = {}

    def at(self, uri: str, position: int) -> None:
        if position > self.positions.get(uri, 0):
            self.positions[uri] = position

    @property
    def bytes(self) -> int:
        return sum(self.positions.values())


def _open(src: SourceFile, storage: Storage | None) -> BinaryIO:
    fs, path = get_fs(src.uri, storage)
    if protocol_of(src.uri) == "file":
        return _open_local(path, src.display)
    try:
        return fs.open(path, "rb")
    except ACCESS_ERRORS as exc:  # missing, access denied, no S3 credentials, ...: this input's error row
        raise input_error(explain_forbidden(fs, path, exc), src.display) from None


def _open_local(path: str, where: str) -> BinaryIO:
    """A local regular file, opened for reading. A pipe, device or socket is refused before it is opened
    (opening a named pipe waits for a writer, forever); the file is opened non-blocking and checked again,
    so one swapped in after the listing (or after the ``stat``) cannot block the reader either."""
    try:
        what = special_file(os.stat(path).st_mode)
        if what is not None:
            raise not_a_regular_file(where, what)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:  # missing, access denied, a folder ...: this input's error row
        raise input_error(exc, where) from None
    try:
        what = special_file(os.fstat(fd).st_mode)
        if what is None:
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb", buffering=0)  # unbuffered: the readers put their own buffer on top
    except OSError as exc:  # a folder (FileIO refuses it) ...
        os.close(fd)
        raise input_error(exc, where) from None
    os.close(fd)
    raise not_a_regular_file(where, what)


#: Byte-order marks of the wide Unicode encodings (UTF-32 first: its LE mark starts with UTF-16 LE's).
_WIDE_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32 LE", "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32 BE", "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16 LE", "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16 BE", "UTF-16"),
)


def _wide_encoding(head: bytes, at_start: bool) -> tuple[str, str, str] | None:
    """``(name, how it shows, iconv's name)`` when ``head`` is UTF-16 or UTF-32 text: by its byte-order mark
    (only at the file's start), else by where its NUL bytes fall (ASCII-range text in UTF-16 LE has a NUL
    after every character, in UTF-32 LE three). Such text is full of NULs, which would look binary."""
    if at_start:
        for bom, name, iconv in _WIDE_BOMS:
            if head.startswith(bom):
                return name, "by its byte-order mark", iconv
    sample = head[: len(head) // 4 * 4]
    if len(sample) < 8:
        return None
    for width, name in ((4, "UTF-32"), (2, "UTF-16")):
        zero = [sum(1 for b in sample[i::width] if b == 0) / (len(sample) / width) for i in range(width)]
        # LE: the character's low byte first, then NULs; BE: NULs, then the low byte last.
        for order, text_at in (("LE", 0), ("BE", width - 1)):
            if zero[text_at] < 0.1 and all(z > 0.9 for i, z in enumerate(zero) if i != text_at):
                return f"{name} {order}", "by the NUL bytes between its characters", f"{name}{order}"
    return None


def _wide_text_error(where: str, found: tuple[str, str, str]) -> InputError:
    name, how, iconv = found
    return InputError(
        "encoding",
        f"{where} is {name} text ({how}), which is not read: only UTF-8 and other ASCII-compatible "
        f"encodings are (input.encoding). Convert it to UTF-8 first, e.g. `iconv -f {iconv} -t UTF-8 "
        "FILE > FILE.utf8.txt`.",
    )


def _looks_binary(head: bytes) -> bool:
    if not head:
        return False
    if b"\x00" in head:
        return True
    controls = sum(1 for b in head if b < 32 and b not in _TEXT_CONTROLS)
    return controls > 0.1 * len(head)


def _pieces(stream: BinaryIO, limit: int | None) -> Iterator[tuple[bytes, bool]]:
    """``(bytes, ends_a_line)``: the stream's lines, each cut into pieces of about ``limit`` bytes."""
    if limit is None:
        for line in stream:
            yield line, True
        return
    carry = b""  # the start of a character cut off the previous piece (at most 3 bytes)
    while True:
        want = max(limit - len(carry), 1)
        chunk = stream.readline(want)
        if not chunk:
            if carry:
                yield carry, True
            return
        data, carry = carry + chunk, b""
        if data.endswith(b"\n") or len(chunk) < want:  # a whole line, or the file's last one
            yield data, True
            continue
        cut = _utf8_cut(data)
        data, carry = data[:cut], data[cut:]
        yield data, False


def _utf8_cut(data: bytes) -> int:
    """Where to cut ``data`` so that no UTF-8 character is split: before an incomplete last character."""
    i = len(data) - 1
    while i > 0 and len(data) - i < 4 and data[i] & 0xC0 == 0x80:  # back over continuation bytes
        i -= 1
    lead = data[i]
    size = 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
    return len(data) if i + size <= len(data) or i == 0 else i


def _read_head(stream: BinaryIO, size: int) -> tuple[bytes, Exception | None]:
    """Up to ``size`` bytes, and the gzip error that cut them short, if any (the bytes before it are kept)."""
    chunks: list[bytes] = []
    got = 0
    try:
        while got < size:
            chunk = stream.read1(size - got)  # type: ignore[attr-defined]  # buffered, gzip: both have it
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except GZIP_ERRORS as exc:
        return b"".join(chunks), exc
    return b"".join(chunks), None


def _gzip_damage(where: str, offset: int, exc: Exception) -> InputError:
    if offset == 0:
        return InputError(
            "corrupt_gzip",
            f"{where}: corrupt or truncated gzip data, nothing decompresses ({exc}); re-create the archive, "
            "or drop the .gz suffix if the file is not compressed.",
        )
    return InputError(
        "corrupt_gzip",
        f"{where}: the gzip data is truncated or corrupt after {offset:,} decompressed bytes ({exc}); the "
        f"stream holds the text up to the last complete line before that point (bytes 0-{offset:,}). "
        "Re-create the archive to read the rest.",
    )


def _is_gzip(raw: Any, src: SourceFile, compression: str, byte_range: tuple[int, int] | None) -> bool:
    """Whether the file is gzip (by its suffix or, under ``infer``, its first bytes); a gzip file has no
    byte ranges."""
    try:
        gz = src.compression == "gzip" or (compression == "infer" and raw.read(2) == GZIP_MAGIC)
        raw.seek(0)
    except ACCESS_ERRORS as exc:
        raise input_error(exc, src.display) from None
    if gz and byte_range is not None:
        raise InputError(
            "unreadable",
            f"{src.display} is gzip-compressed (by its content), so it cannot be split into byte ranges; "
            "give it a .gz suffix or set input.split_parts: 1.",
        )
    return gz


def _check_head(stream: BinaryIO, where: str, offset: int) -> None:
    """Refuse, from the bytes at ``offset``, text this reader cannot read: UTF-16/32, binary data, other
    compressions."""
    head, damage = _read_head(stream, SNIFF)
    if damage is not None and b"\n" not in head:
        raise damage
    wide = _wide_encoding(head, at_start=offset == 0)
    if wide is not None:
        raise _wide_text_error(where, wide)
    if _looks_binary(head):
        packed = next((n for m, n in OTHER_COMPRESSIONS.items() if head.startswith(m)), None)
        if packed is not None and offset == 0:
            raise InputError(
                "binary",
                f"{where} is {packed}-compressed, which is not read; decompress it, or "
                "recompress it with gzip (read with or without a .gz suffix).",
            )
        raise InputError(
            "binary",
            f"{where} looks like binary data, not text (NUL or control bytes near byte {offset})."
            " Remove it from the inputs or convert it to text.",
        )


def _first_line(stream: BinaryIO, where: str, begin: int, start: int | None) -> tuple[int, bool]:
    """Seek to where reading begins; ``(offset, whether it starts a line)``."""
    if start is not None and start > begin:
        # A resumed read: `start` begins a line or a piece of a long one (this reader yielded it); gzip
        # decompresses up to it. The file was sniffed when first read.
        stream.seek(start - 1)
        at_line_start = stream.read(1) == b"\n"
        return start, at_line_start
    offset = 0
    if begin > 0:
        # The line that straddles `begin` belongs to the previous range: skip through its newline (none to
        # skip when `begin` starts a line). fsspec's read_block aligns ranges this way, but returns a whole
        # range at once; a part of a 10 GB file must stream.
        stream.seek(begin - 1)
        if stream.read(1) != b"\n":
            seek_delimiter(stream, b"\n", BLOCK)
        offset = stream.tell()
    _check_head(stream, where, offset)
    stream.seek(offset)
    return offset, True


def iter_raw_lines(
    src: SourceFile,
    storage: Storage | None = None,
    byte_range: tuple[int, int] | None = None,
    *,
    compression: Literal["infer", "gzip", "none"] = "infer",
    start: int | None = None,
    on_damage: Callable[[InputError], None] | None = None,
    max_line: int | None = MAX_LINE,
    meter: Meter | None = None,
) -> Iterator[tuple[int, bytes]]:
    """``(offset, line)`` pairs, the line without its newline, read through a 1 MiB buffer.

    ``max_line``: a longer line comes in pieces of at most this many bytes (cut between UTF-8
    characters), so a file without newlines (minified text, old Mac line ends) streams in bounded memory
    too; None yields whole lines (a JSONL record must be parsed whole). A piece belongs to the byte range
    its line starts in.
    ``start``: resume at this offset (one this reader yielded: a line's or a piece's first byte, counted
    in the decompressed stream for gzip) instead of the range's start; the file is not sniffed again.
    ``on_damage``: where gzip data that breaks off after some complete lines (a truncated download) is
    reported (``InputError('corrupt_gzip')`` saying how much was read); the lines before the damage are
    yielded and iteration ends normally. Without it, or when nothing decompresses, the error is raised.
    ``meter``: told how far the read got (see ``Meter``).
    """
    if src.error:
        raise InputError(*src.error)
    where = src.display
    with _open(src, storage) as raw:
        gz = _is_gzip(raw, src, compression, byte_range)
        # fsspec's codec registry (what its open(compression=...) uses); either way a buffered reader, so
        # lines come from the C line splitter, whatever the filesystem's own read size.
        buffered: Any = raw  # an fsspec file: a RawIOBase in all but name
        stream: BinaryIO = compr["gzip"](raw, mode="rb") if gz else io.BufferedReader(buffered, BLOCK)
        begin, end = byte_range if byte_range else (0, None)
        offset = 0
        try:
            offset, at_line_start = _first_line(stream, where, begin, start)
            mark = offset
            for line, ends in _pieces(stream, max_line):
                # Only a line's first piece can end the range: the rest of a long line belongs to it.
                if end is not None and at_line_start and offset >= end:
                    break
                if meter is not None and offset >= mark:
                    meter.at(src.uri, (raw.tell() if gz else offset) - begin)
                    mark = offset + METER_STEP if max_line is not None else offset  # records: each
                yield offset, line[:-1] if line.endswith(b"\n") else line
                offset += len(line)
                at_line_start = ends
            if meter is not None:  # read to the end of the range (or of the file)
                meter.at(src.uri, (raw.tell() if gz else offset if end is None else end) - begin)
        except GZIP_ERRORS as exc:
            damage_error = _gzip_damage(where, offset, exc)
            if on_damage is None or offset == 0:
                raise damage_error from None
            on_damage(damage_error)
        except ACCESS_ERRORS as exc:
            raise input_error(exc, where) from None


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
    *,
    start: int | None = None,
    on_damage: Callable[[InputError], None] | None = None,
    meter: Meter | None = None,
) -> Iterator[tuple[int, str]]:
    """``(byte offset, decoded line)`` pairs; see ``iter_lines`` (and ``iter_raw_lines`` for ``start``,
    ``on_damage`` and ``meter``)."""
    opts = opts or ReadOptions()
    raw = iter_raw_lines(
        src,
        storage,
        byte_range,
        compression=opts.compression,
        start=start,
        on_damage=on_damage,
        max_line=MAX_LINE if cuttable(opts.encoding) else None,
        meter=meter,
    )
    for number, (offset, line) in enumerate(raw):
        yield offset, _decode(src, opts, offset, number, line)


@functools.cache
def cuttable(encoding: str) -> bool:
    """Whether a long line in ``encoding`` can be cut into pieces without splitting a character: UTF-8
    (cut between characters) and single-byte codecs can; multibyte ones (gbk, shift_jis ...) are read in
    whole lines."""
    name = codecs.lookup(encoding).name
    if name in ("utf-8", "utf-8-sig"):
        return True
    return len(bytes(range(256)).decode(name, "replace")) == 256


def _decode(src: SourceFile, opts: ReadOptions, offset: int, number: int, line: bytes) -> str:
    """One raw line as text (BOM and ``\\r`` dropped); invalid bytes raise ``InputError('encoding')``."""
    if offset == 0 and line.startswith(codecs.BOM_UTF8):
        line = line[3:]
    if line.endswith(b"\r"):
        line = line[:-1]
    try:
        return line.decode(opts.encoding, opts.encoding_errors)
    except UnicodeDecodeError as exc:
        raise InputError(
            "encoding",
            f"{src.display}: invalid {opts.encoding} at byte {offset + exc.start} "
            f"(line {number + 1} of this read): {exc.reason}. Re-encode it as UTF-8 (e.g. "
            "`iconv -f latin1 -t utf-8`), or set input.encoding to its real encoding, or "
            "input.encoding_errors: replace.",
        ) from None


# --------------------------------------------------------------------------------------------- documents
#: Where a line source can resume: a byte offset in a file, a line index in a record's text, or a list of
#: those for sources made of several (JSON-able, so a checkpoint can hold it).
Position = Any
PositionedLines = Iterator[tuple[Position, str]]


class Damage:
    """Collects what readers report about inputs that ended early (``iter_raw_lines``' ``on_damage``): the
    stream keeps the lines read before the damage, and its rows say what was lost."""

    def __init__(self) -> None:
        self.errors: list[InputError] = []

    def __call__(self, error: InputError) -> None:
        self.errors.append(error)


@dataclass
class Document:
    """One stream's text: a file (or a part of one) read lazily, or a record's text.

    ``lines_at(start)`` yields ``(position, line)`` pairs: ``position`` is where reading would resume to
    yield that line again (a checkpoint's input offset), ``start`` one such position (None: the start).
    """

    stream_id: str
    source_uri: str
    record: str | None = None
    text: str | None = None
    questions: list[str] = field(default_factory=list)
    error: InputError | None = None
    #: reads a file from a position: (start, on_damage) -> (position, line) pairs
    reader: Callable[[Position, Damage | None], PositionedLines] | None = None

    def lines_at(self, start: Position = None, damage: Damage | None = None) -> PositionedLines:
        if self.reader is not None:
            yield from self.reader(start, damage)
        elif self.text is not None:
            yield from _text_lines(self.text, start)

    def iter_lines(self) -> Iterator[str]:
        for _, line in self.lines_at():
            yield line


def _text_lines(text: str, start: Position = None) -> PositionedLines:
    """A text's lines as ``(line index, line)`` from line ``start``; a final newline ends the last line."""
    lines = text.split("\n")
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()
    for index in range(int(start or 0), len(lines)):
        yield index, lines[index]


def stream_id_for(src: SourceFile, byte_range: tuple[int, int] | None = None) -> str:
    return src.uri if byte_range is None else f"{src.uri}#bytes={byte_range[0]}-{byte_range[1]}"


def parse_questions(value: Any, field_name: str) -> list[str]:
    """A question column's value: a string, a list of strings, or a list of mappings with ``field_name``."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if not isinstance(value, (list, tuple)):
        raise ValueError(
            f"the questions must be a string or a list (of strings or mappings with {field_name!r}), "
            f"got {type(value).__name__} {value!r:.80}"
        )
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
    src: SourceFile, index: int | None, rec: Any, opts: ReadOptions, where: str, key: str
) -> Document:
    """One record as a document. ``index``: its index in the file (None for a record of a byte range,
    whose place in the file is unknown); ``key``: its position's name (``record=N`` or ``offset=B``).

    A record with a value in ``input.id_column`` is named by it (``id=...``); one without keeps its
    positional name, which no other record of the file shares (a fallback ``id=<index>`` could be
    another record's id, or the index of a record in another part)."""
    named = isinstance(rec, dict) and bool(opts.id_column) and rec.get(opts.id_column) is not None
    record_id = str(rec[opts.id_column]) if named else None if index is None else str(index)
    stream_key = f"id={record_id}" if named else key
    doc = Document(stream_id=f"{src.uri}#{stream_key}", source_uri=src.display, record=record_id)
    if not isinstance(rec, dict):
        doc.error = InputError("bad_record", f"{where}: the record is not an object; expected {{...}}.")
        return doc
    text = rec.get(opts.text_column)
    if not isinstance(text, str):
        have = ", ".join(sorted(map(str, rec))[:12])
        if opts.text_column not in rec:
            problem = f"has no {opts.text_column!r} field"
        elif text is None:
            problem = f"has {opts.text_column!r} = null (no text)"
        else:
            problem = f"has a non-string {opts.text_column!r} ({type(text).__name__})"
        doc.error = InputError(
            "bad_record",
            f"{where}: the record {problem}; set input.text_column to the field that holds the text (it "
            f"has: {have}), or fix the record.",
        )
        return doc
    doc.text = text
    if opts.question_column:
        try:
            doc.questions = parse_questions(rec.get(opts.question_column), opts.question_field)
        except ValueError as exc:
            doc.error = InputError("bad_record", f"{where}: {exc}")
    return doc


def _mine(index: int, every: tuple[int, int] | None) -> bool:
    """Whether record ``index`` belongs to this reader: all records, or every ``n``-th from ``phase``."""
    return every is None or index % every[0] == every[1]


def _iter_jsonl(
    src: SourceFile,
    storage: Storage | None,
    opts: ReadOptions,
    byte_range: tuple[int, int] | None,
    every: tuple[int, int] | None = None,
    meter: Meter | None = None,
) -> Iterator[Document]:
    # A byte range does not know how many records precede it: its records are named by byte offset, and
    # max_records_per_file counts the part's records. Lines are decoded one by one, so a line with invalid
    # bytes is that record's error, not the end of the file.
    index = 0
    raw = iter_raw_lines(src, storage, byte_range, compression=opts.compression, max_line=None, meter=meter)
    for number, (offset, data) in enumerate(raw):
        try:
            line: str | None = _decode(src, opts, offset, number, data)
            error: InputError | None = None
        except InputError as exc:
            line, error = None, exc
        if line is not None and not line.strip():  # blank (also a lone BOM, or non-ASCII spaces)
            continue
        if opts.max_records_per_file is not None and index >= opts.max_records_per_file:
            return
        if not _mine(index, every):  # another reader's record: not parsed
            index += 1
            continue
        key = f"offset={offset}" if byte_range else f"record={index}"
        position = None if byte_range else index
        where = f"{src.display} byte {offset}" if byte_range else f"{src.display} line {number + 1}"
        if error is None:
            try:
                rec = json.loads(line or "")
            except json.JSONDecodeError as exc:
                error = InputError(
                    "bad_record", f"{where}: not valid JSON ({exc.msg}); fix or remove the line."
                )
        if error is not None:
            record = None if position is None else str(position)
            yield Document(f"{src.uri}#{key}", src.display, record, error=error)
        else:
            yield _record_document(src, position, rec, opts, where, key)
        index += 1


#: Opening a Parquet file failed for a reason of access, not of content.
_NOT_READABLE: tuple[type[BaseException], ...] = (PermissionError, FileNotFoundError, *CREDENTIAL_ERRORS)


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
    except _NOT_READABLE as exc:
        raw.close()
        raise input_error(exc, src.display) from None
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
    src: SourceFile,
    storage: Storage | None,
    opts: ReadOptions,
    row_groups: tuple[int, int] | None,
    every: tuple[int, int] | None = None,
    meter: Meter | None = None,
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
    # max_records_per_file counts from the part's first row, as a JSONL part's does.
    limit = None if opts.max_records_per_file is None else index + opts.max_records_per_file
    # Progress: the share of this reading's rows done, in bytes of the file.
    first, total = index, sum(pf.metadata.row_group(i).num_rows for i in (groups or range(pf.num_row_groups)))
    for batch in pf.iter_batches(batch_size=16, columns=columns, row_groups=groups):
        if meter is not None and total:
            meter.at(src.uri, (src.size or 0) * (index - first) // total)
        # Only this reader's rows become Python objects (the others' are skipped unconverted).
        mine = [i for i in range(batch.num_rows) if _mine(index + i, every)]
        records = batch.to_pylist() if every is None else batch.take(mine).to_pylist()
        for i, rec in zip(mine, records):
            if limit is not None and index + i >= limit:
                return
            row = index + i
            yield _record_document(src, row, rec, opts, f"{src.display} row {row}", f"record={row}")
        index += batch.num_rows
        if limit is not None and index >= limit:
            return


def iter_documents(
    src: SourceFile,
    storage: Storage | None = None,
    opts: ReadOptions | None = None,
    byte_range: tuple[int, int] | None = None,
    row_groups: tuple[int, int] | None = None,
    every: tuple[int, int] | None = None,
    meter: Meter | None = None,
) -> Iterator[Document]:
    """The documents of one file (or of a byte range / row-group range of it): a text file is one,
    JSONL/Parquet one per record. ``every=(n, phase)``: only records whose index in the file is ``phase``
    modulo ``n`` (the file's records shared by ``n`` readers; the others are skipped unparsed). ``meter``:
    told how far the reading got (``Meter``)."""
    opts = opts or ReadOptions()
    if src.format == "text":

        def reader(start: Position, damage: Damage | None) -> PositionedLines:
            return iter_lines_at(src, storage, opts, byte_range, start=start, on_damage=damage, meter=meter)

        yield Document(stream_id=stream_id_for(src, byte_range), source_uri=src.display, reader=reader)
    elif src.format == "jsonl":
        yield from _iter_jsonl(src, storage, opts, byte_range, every, meter)
    else:
        yield from _iter_parquet(src, storage, opts, row_groups, every, meter)


def iter_log_lines(
    src: SourceFile,
    storage: Storage | None = None,
    opts: ReadOptions | None = None,
    byte_range: tuple[int, int] | None = None,
) -> Iterator[str]:
    """A log file's lines; for JSONL/Parquet logs, the lines of each record's text column in order."""
    for _, line in iter_log_lines_at(src, storage, opts, byte_range):
        yield line


def iter_log_lines_at(
    src: SourceFile,
    storage: Storage | None = None,
    opts: ReadOptions | None = None,
    byte_range: tuple[int, int] | None = None,
    *,
    start: Position = None,
    damage: Damage | None = None,
    meter: Meter | None = None,
) -> PositionedLines:
    """``iter_log_lines`` as ``(position, line)`` pairs, from ``start`` (a position it yielded): a byte
    offset for text files, ``[record, line]`` for the records' lines of JSONL/Parquet logs."""
    opts = opts or ReadOptions()
    if src.format == "text":
        yield from iter_lines_at(src, storage, opts, byte_range, start=start, on_damage=damage, meter=meter)
        return
    first_record, first_line = (int(start[0]), int(start[1])) if start else (0, 0)
    # A part of a split JSONL log reads the records that start in its byte range.
    for number, doc in enumerate(iter_documents(src, storage, opts, byte_range, meter=meter)):
        if number < first_record:
            continue
        if doc.error:
            raise doc.error
        for index, line in doc.lines_at(first_line if number == first_record else None):
            yield [number, index], line
