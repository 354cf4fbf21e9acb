"""Inputs, sharding and log statistics: incremental readers, byte ranges, bad inputs, chapters, windows."""

from __future__ import annotations

import gzip
import itertools
import json
import random
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers_pipeline import SHARED_DATA, book_text, write_bad_corpus

from actors.tasks.logs.grouping import group_by_path_key
from actors.tasks.logs.stats import LogParser, WindowStats, mask_template
from longread.text import ChapterSplitter
from pipeline.inputs.readers import Damage, iter_documents, iter_lines, iter_lines_at, iter_log_lines
from pipeline.inputs.sources import InputError, ReadOptions, SourceFile, expand_inputs, input_error
from pipeline.job.plan import StreamTask, plan_files, split_ranges, spread_records

OPTS = ReadOptions()


def _src(path: Path) -> SourceFile:
    return expand_inputs([str(path)], None, OPTS)[0]


# ------------------------------------------------------------------------------------------ expansion
def test_expand_folders_globs_formats_and_hidden_files(tmp_path):
    (tmp_path / "a.txt").write_text("a\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl.gz").write_bytes(gzip.compress(b'{"text": "b"}\n'))
    (tmp_path / "sub" / "c.parquet").write_bytes(b"")
    (tmp_path / ".tmp-x.parquet").write_text("partial")
    (tmp_path / "_jobs").mkdir()
    (tmp_path / "_jobs" / "j.json").write_text("{}")
    found = {Path(s.uri).name: (s.format, s.compression) for s in expand_inputs([str(tmp_path)], None, OPTS)}
    assert found == {"a.txt": ("text", None), "b.jsonl.gz": ("jsonl", "gzip"), "c.parquet": ("parquet", None)}
    globbed = expand_inputs([str(tmp_path / "**" / "*.gz")], None, OPTS)
    assert [Path(s.uri).name for s in globbed] == ["b.jsonl.gz"]
    none = expand_inputs([str(tmp_path / "*.nothing")], None, OPTS)
    assert len(none) == 1 and none[0].error and none[0].error[0] == "missing"
    assert "no input matches" in none[0].error[1]


# ------------------------------------------------------------------------------------------ reading
def test_lines_crlf_bom_and_gzip_sniffed_without_suffix(tmp_path):
    (tmp_path / "crlf.txt").write_bytes(b"\xef\xbb\xbfone\r\ntwo\r\n\r\nthree")
    assert list(iter_lines(_src(tmp_path / "crlf.txt"))) == ["one", "two", "", "three"]
    (tmp_path / "packed.log").write_bytes(gzip.compress(b"x\ny\n"))  # gzip data, no .gz suffix
    assert list(iter_lines(_src(tmp_path / "packed.log"))) == ["x", "y"]


def test_byte_ranges_partition_the_lines_exactly(tmp_path):
    rng = random.Random(0)
    lines = ["".join(rng.choice("abcdé \t") for _ in range(rng.randint(0, 40))) for _ in range(500)]
    path = tmp_path / "big.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    src = _src(path)
    size = path.stat().st_size
    for parts in (1, 2, 3, 7, 64):
        got: list[str] = []
        for byte_range in split_ranges(size, parts):
            got += list(iter_lines(src, byte_range=byte_range))
        assert got == lines, parts
    # Cut points that land exactly on a newline or inside a multi-byte character.
    cuts = sorted({0, size, *rng.sample(range(1, size), 40)})
    got = []
    for a, b in itertools.pairwise(cuts):
        got += list(iter_lines(src, byte_range=(a, b)))
    assert got == lines


def test_reading_is_incremental(tmp_path):
    """A 24 MB file streams with a few MB of Python allocations: it is never held whole."""
    path = tmp_path / "large.log"
    line = "2024-01-05 10:00:01,123 INFO web-1 " + "x" * 90 + "\n"
    with path.open("w") as fh:
        for _ in range(200):
            fh.write(line * 1000)
    tracemalloc.start()
    count = sum(1 for _ in iter_log_lines(_src(path)))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 200_000
    assert peak < 8 * 2**20, (
        f"peak {peak / 2**20:.1f} MiB while reading {path.stat().st_size / 2**20:.0f} MiB"
    )


@pytest.mark.parametrize("kind", ["encoding", "empty", "binary", "corrupt_gzip", "missing", "unreadable"])
def test_every_bad_input_raises_its_kind_with_the_file_and_a_fix(tmp_path, kind):
    files = write_bad_corpus(tmp_path)
    src = _src(files[kind])
    if kind == "empty":  # the reader yields blank lines; the task decides the document is empty
        assert not "".join(iter_lines(src)).strip()
        return
    with pytest.raises(InputError) as info:
        list(iter_lines(src))
    assert info.value.kind == kind
    assert str(files[kind]) in info.value.message
    fixes = ("re-encode", "remove", "re-create", "check", "convert", "grant")
    assert any(word in info.value.message.lower() for word in fixes), info.value.message


@pytest.mark.parametrize("name", ["bzip2", "xz"])
def test_other_compressions_are_named_with_the_fix(tmp_path, name):
    import bz2
    import lzma

    packed = {"bzip2": bz2.compress, "xz": lzma.compress}[name](b"Call me Ishmael.\n" * 50)
    (tmp_path / "book.txt").write_bytes(packed)  # whatever its suffix
    with pytest.raises(InputError, match=f"is {name}-compressed, .*recompress it with gzip") as info:
        list(iter_lines(_src(tmp_path / "book.txt")))
    assert info.value.kind == "binary"


def test_encoding_option_reads_latin1(tmp_path):
    files = write_bad_corpus(tmp_path)
    opts = ReadOptions(encoding="latin-1")
    assert next(iter_lines(_src(files["encoding"]), opts=opts)) == "Café au lait"
    replaced = list(iter_lines(_src(files["encoding"]), opts=ReadOptions(encoding_errors="replace")))
    assert replaced[0] == "Caf\ufffd au lait"


def test_jsonl_records_are_documents_and_bad_records_are_errors(tmp_path):
    path = tmp_path / "docs.jsonl"
    rows = [
        json.dumps({"id": "x", "text": "first", "questions": [{"question_text": "Q1?"}, "Q2?"]}),
        "{not json",
        json.dumps({"id": "y", "body": "no text field"}),
        "",
        json.dumps({"id": "z", "text": "third"}),
    ]
    path.write_text("\n".join(rows) + "\n")
    opts = ReadOptions(id_column="id", question_column="questions")
    docs = list(iter_documents(_src(path), opts=opts))
    assert [d.stream_id.split("#")[1] for d in docs] == ["id=x", "record=1", "id=y", "id=z"]
    assert docs[0].text == "first" and docs[0].questions == ["Q1?", "Q2?"] and docs[0].error is None
    assert (
        docs[1].error is not None and docs[1].error.kind == "bad_record" and "line 2" in docs[1].error.message
    )
    assert docs[2].error is not None and "'text'" in docs[2].error.message and "body" in docs[2].error.message
    assert docs[3].text == "third"


def test_parquet_text_column_and_corrupt_parquet(tmp_path):
    table = pa.table({"doc": ["a\nb", "c"], "key": ["k1", "k2"]})
    pq.write_table(table, tmp_path / "docs.parquet")
    docs = list(
        iter_documents(_src(tmp_path / "docs.parquet"), opts=ReadOptions(text_column="doc", id_column="key"))
    )
    assert [(d.record, list(d.iter_lines())) for d in docs] == [("k1", ["a", "b"]), ("k2", ["c"])]
    with pytest.raises(InputError, match="no column 'text'"):
        list(iter_documents(_src(tmp_path / "docs.parquet")))
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError) as info:
        list(iter_documents(_src(tmp_path / "bad.parquet")))
    assert info.value.kind == "corrupt_parquet"


# ------------------------------------------------------------------------------------------ sharding
def test_chapters_are_detected_and_pieces_keep_the_text():
    text = book_text()
    pieces = list(ChapterSplitter(piece_chars=200).pieces(text.split("\n")))
    assert "".join(p.text for p in pieces) == text + "\n"  # every line, plus the final newline
    assert [p.heading for p in pieces if p.heading] == ["CHAPTER I.", "CHAPTER II.", "CHAPTER III."]
    splitter = ChapterSplitter()
    for heading in ("ACT I.", "SCENE II. A Camp near Forres.", "Chapter 12", "STAVE ONE", "XIV.", "EPILOGUE"):
        assert splitter.is_heading(heading), heading
    for prose in ("Act of God, he said.", "I saw the book.", "Part of me wanted to stay", "ACTION!"):
        assert not splitter.is_heading(prose), prose


def test_plan_files_splits_large_text_and_group_by_path_key(tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("line\n" * 1000)
    small = tmp_path / "small.txt"
    small.write_text("x\n")
    sources = expand_inputs([str(tmp_path)], None, OPTS)
    tasks = plan_files("summarize", sources, split_parts=3, min_split_bytes=1000)
    parts = [t for t in tasks if t.sources[0].uri == str(big)]
    assert [(t.part, t.parts) for t in parts] == [(0, 3), (1, 3), (2, 3)]
    assert parts[0].byte_range == (0, 1667) and parts[-1].byte_range == (3334, 5000)
    assert all(t.stream_id and "#bytes=" in t.stream_id for t in parts)
    assert StreamTask.from_json(parts[1].to_json()) == parts[1]
    whole = [t for t in tasks if t.sources[0].uri == str(small)]
    assert len(whole) == 1 and whole[0].byte_range is None

    logs = tmp_path / "logs"
    logs.mkdir()
    for name in ("web-1.0.log", "web-1.1.log", "db-1.0.log"):
        (logs / name).write_text("2024-01-05 10:00:00 INFO x\n")
    groups = group_by_path_key("logs", expand_inputs([str(logs)], None, OPTS), r"(?P<key>\w+-\d)\.\d")
    assert {t.stream_id: len(t.sources) for t in groups} == {"logs:key=db-1": 1, "logs:key=web-1": 2}


# ------------------------------------------------------------------------------------------ log stats
@pytest.mark.parametrize(
    ("line", "text", "epoch"),
    [
        ("2015-10-18 18:01:47,978 INFO [main] x", "2015-10-18 18:01:47,978", 1445191307.978),
        ("081109 203615 148 INFO dfs.DataNode x", "081109 203615", 1226262975.0),
        ("- 1117838570 2005.06.03 R02 2005-06-03-15.42.50.675872 R02 RAS", "1117838570", 1117838570.0),
        ("[Sun Dec 04 04:47:44 2005] [notice] workerEnv.init() ok", "Sun Dec 04 04:47:44 2005", 1133671664.0),
        ("17/06/09 20:10:40 INFO executor.Backend", "17/06/09 20:10:40", 1497039040.0),
        ("20171223-22:15:29:606|Step_LSC|30002312|x", "20171223-22:15:29:606", 1514067329.606),
        ("Jun 14 15:16:01 combo sshd(pam_unix)[19939]: x", "Jun 14 15:16:01", 960995761.0),
        ("03-17 16:13:38.811  1702  2395 D WindowManager: x", "03-17 16:13:38.811", 953309618.811),
        ("[10.30 16:49:06] chrome.exe - proxy", "10.30 16:49:06", 972924546.0),
        ("2024-01-05T10:00:00Z GET /", "2024-01-05T10:00:00Z", 1704448800.0),
        ("2024-01-05T10:00:00.5+02:00 GET /", "2024-01-05T10:00:00.5+02:00", 1704441600.5),
        ("2024-01-05 10:00:00-0530 GET /", "2024-01-05 10:00:00-0530", 1704468600.0),
        ("2024-01-05 10:00:00 - INFO no zone", "2024-01-05 10:00:00", 1704448800.0),
        ("no timestamp here", None, None),
    ],
)
def test_timestamp_formats(line, text, epoch):
    ts, ts_text, _ = LogParser().timestamp(line)
    assert ts_text == text
    assert ts == pytest.approx(epoch) if epoch else ts is None


def test_custom_timestamp_format_keeps_its_zone():
    """An Apache access log's ``%z`` offset is the time's zone; a format without one is UTC."""
    parser = LogParser(timestamp_pattern=r"\[(?P<ts>[^\]]+)\]", timestamp_format="%d/%b/%Y:%H:%M:%S %z")
    east, _, _ = parser.timestamp('1.2.3.4 - - [05/Jan/2024:10:00:00 +0200] "GET / HTTP/1.1" 200')
    west, _, _ = parser.timestamp('1.2.3.4 - - [05/Jan/2024:09:30:00 -0100] "GET / HTTP/1.1" 200')
    assert (east, west) == (1704441600.0, 1704450600.0)  # 08:00 and 10:30 UTC: east is the earlier
    naive = LogParser(timestamp_pattern=r"^(?P<ts>\S+ \S+)", timestamp_format="%Y-%m-%d %H:%M:%S")
    assert naive.timestamp("2024-01-05 10:00:00 x")[0] == 1704448800.0


def test_levels_templates_and_window_stats():
    parser = LogParser(alert_pattern=r"^(?!- )")
    lines = [
        "- 1117838570 2005.06.03 R02-M1 RAS KERNEL INFO instruction cache parity error corrected",
        "- 1117838575 2005.06.03 R02-M2 RAS KERNEL INFO instruction cache parity error corrected",
        "APPREAD 1117838580 2005.06.03 R02-M3 RAS APP FATAL ciod: failed to read message prefix",
        "- 1117838500 2005.06.03 R02-M4 RAS KERNEL WARNING going back in time",
        "03-17 16:13:38.811  1702  2395 W WindowManager: x",
    ]
    stats = WindowStats()
    for line in lines:
        stats.add(parser.parse(line))
    assert stats.lines == 5 and stats.alerts == 2
    assert dict(stats.levels) == {"INFO": 2, "FATAL": 1, "WARN": 2}
    assert stats.top_templates(1) == [
        ("- <*> R<*>-M<*> RAS KERNEL INFO instruction cache parity error corrected", 2)
    ]
    assert stats.first_ts_text == "1117838570" and stats.last_ts_text == "03-17 16:13:38.811"
    assert stats.out_of_order == 2  # 1117838500 after 1117838580, and the year-less Android line
    assert mask_template("user 42 from 10.0.0.1:22 id 9f4ef63 uuid 123e4567-e89b-12d3-a456-426614174000") == (
        "user <*> from <*> id <*> uuid <*>"
    )


@pytest.mark.skipif(not (SHARED_DATA / "loghub").is_dir(), reason="../shared/data/loghub is absent")
def test_every_loghub_line_gets_a_timestamp():
    for path in sorted((SHARED_DATA / "loghub").glob("*.log")):
        parser = LogParser()
        missing = [line for line in iter_log_lines(_src(path)) if parser.timestamp(line)[0] is None]
        assert not missing, (path.name, missing[:3])


# ------------------------------------------------------------------------- damage, positions, access
def test_truncated_gzip_streams_what_decompresses_and_says_how_much(tmp_path):
    lines = [f"line {i}: " + "the ship sailed on " * (i % 7) for i in range(3000)]
    whole = gzip.compress(("\n".join(lines) + "\n").encode())
    path = tmp_path / "cut.txt.gz"
    path.write_bytes(whole[: len(whole) // 2])  # a download that broke off half-way
    src = _src(path)
    with pytest.raises(InputError, match="truncated") as info:
        list(iter_lines(src))  # without a damage handler: an error, as before
    assert info.value.kind == "corrupt_gzip"
    damage = Damage()
    got = [line for _, line in iter_lines_at(src, on_damage=damage)]
    assert 100 < len(got) < len(lines) and got == lines[: len(got)]  # every complete line before the cut
    [error] = damage.errors
    streamed = sum(len(line) + 1 for line in got)
    assert error.kind == "corrupt_gzip" and f"{streamed:,} decompressed bytes" in error.message
    assert str(path) in error.message and "re-create" in error.message.lower()
    # Nothing decompresses at all: still an error, whatever the handler.
    path.write_bytes(whole[:20])
    with pytest.raises(InputError, match="nothing decompresses"):
        list(iter_lines_at(_src(path), on_damage=Damage()))


@pytest.mark.parametrize("name", ["plain.txt", "packed.txt.gz"])
def test_reading_resumes_at_any_position_it_yielded(tmp_path, name):
    lines = [f"{i} " + "é" * (i % 5) for i in range(400)]
    data = ("\n".join(lines) + "\n").encode()
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    src = _src(path)
    pairs = list(iter_lines_at(src))
    for k in (0, 1, 57, 399):
        assert [line for _, line in iter_lines_at(src, start=pairs[k][0])] == lines[k:]
    # In a byte range too: resuming inside a part reads to the part's end only.
    if not name.endswith(".gz"):
        size = path.stat().st_size
        first, _ = split_ranges(size, 2)
        part = list(iter_lines_at(src, byte_range=first))
        assert [line for _, line in iter_lines_at(src, byte_range=first, start=part[9][0])] == [
            line for _, line in part[9:]
        ]
    docs = list(iter_documents(src))
    assert [line for _, line in docs[0].lines_at(pairs[57][0])] == lines[57:]


def test_long_lines_stream_in_pieces_and_ranges_still_partition_them(tmp_path):
    """A line longer than MAX_LINE (a file without newlines) comes in pieces cut between UTF-8
    characters, in bounded memory; byte ranges and resumed reads keep every piece exactly once."""
    from pipeline.inputs.readers import MAX_LINE

    long = ("é€a" * (3 * MAX_LINE // 6 + 7))[:-1]  # ~3 MiB of 1-, 2- and 3-byte characters
    lines = ["first", long, "", "last"]
    path = tmp_path / "one-line.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    src = _src(path)
    pairs = list(iter_lines_at(src))
    pieces = [line for _, line in pairs]
    assert len(pieces) > 6 and max(len(p.encode()) for p in pieces) <= MAX_LINE
    assert pieces[0] == "first" and "".join(pieces[1:-2]) == long and pieces[-2:] == ["", "last"]
    size = path.stat().st_size
    rng = random.Random(1)
    for cuts in ([0, size], [0, MAX_LINE // 2, 2 * MAX_LINE + 5, size],
                 sorted({0, size, *rng.sample(range(1, size), 9)})):  # fmt: skip
        got = [p for a, b in itertools.pairwise(cuts) for _, p in iter_lines_at(src, byte_range=(a, b))]
        assert got == pieces, cuts
    assert [line for _, line in iter_lines_at(src, start=pairs[3][0])] == pieces[3:]
    # Bounded memory: a 24 MiB line is never held whole.
    big = tmp_path / "minified.txt"
    with big.open("w") as fh:
        for _ in range(24):
            fh.write("x" * 2**20)
    tracemalloc.start()
    count = sum(1 for _ in iter_lines(_src(big)))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 24 and peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_jsonl_line_with_invalid_bytes_is_that_records_error(tmp_path):
    path = tmp_path / "docs.jsonl"
    bad = json.dumps({"text": "Caf\u00e9"}).encode().replace(b"\\u00e9", b"\xe9")  # latin-1 byte
    path.write_bytes(
        b"\n".join([json.dumps({"text": "one"}).encode(), bad, json.dumps({"text": "three"}).encode()])
    )
    docs = list(iter_documents(_src(path)))
    assert [(d.stream_id.split("#")[1], d.text) for d in docs] == [
        ("record=0", "one"), ("record=1", None), ("record=2", "three")
    ]  # fmt: skip
    assert docs[1].error is not None and docs[1].error.kind == "encoding" and "byte" in docs[1].error.message


def test_jsonl_blank_lines_with_a_bom_or_unicode_spaces_are_skipped(tmp_path):
    """Blank lines do not count as records (names stay as before): a lone BOM line, CRLF, U+00A0."""
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b"\xef\xbb\xbf\r\n" + b'{"text": "a"}\n' + "\u00a0 \n".encode() + b'{"text": "b"}\n\n')
    docs = list(iter_documents(_src(path)))
    assert [(d.stream_id.split("#")[1], d.text, d.error) for d in docs] == [
        ("record=0", "a", None), ("record=1", "b", None)
    ]  # fmt: skip


def test_long_lines_in_multibyte_encodings_are_read_whole(tmp_path):
    """A cut could split a gbk character: lines in such encodings are not cut (UTF-8 and single-byte
    codecs are)."""
    from pipeline.inputs.readers import MAX_LINE, cuttable

    assert cuttable("utf-8") and cuttable("UTF8") and cuttable("latin-1") and cuttable("cp1252")
    assert not cuttable("gbk") and not cuttable("shift_jis")
    path = tmp_path / "long-gbk.txt"
    line = "中" * (MAX_LINE // 2 + 100)  # over MAX_LINE bytes in gbk
    path.write_bytes((line + "\nend\n").encode("gbk"))
    assert list(iter_lines(_src(path), opts=ReadOptions(encoding="gbk"))) == [line, "end"]


def test_malformed_questions_are_that_records_error(tmp_path):
    path = tmp_path / "qa.jsonl"
    recs = [{"text": "a", "q": ["Who?"]}, {"text": "b", "q": 5},
            {"text": "c", "q": {"question_text": "Why?"}}, {"text": "d", "q": "What?"}]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    docs = list(iter_documents(_src(path), opts=ReadOptions(question_column="q")))
    assert [d.error.kind if d.error else d.questions for d in docs] == [
        ["Who?"], "bad_record", "bad_record", ["What?"]
    ]  # fmt: skip
    assert "must be a string or a list" in docs[1].error.message and "line 2" in docs[1].error.message


def test_record_names_never_collide_and_split_parts_keep_limits(tmp_path):
    """Records without an id keep their positional name (never another record's ``id=``); a record of a
    split JSONL part has no file index (its name is its byte offset); max_records_per_file counts per part
    for JSONL and Parquet alike."""
    path = tmp_path / "docs.jsonl"
    recs = [{"id": "3", "text": "a"}, {"id": "x", "text": "b"}, {"text": "no id"}, {"text": "no id"}]
    recs += [{"id": f"d{i}", "text": f"t{i}"} if i % 3 else {"text": f"t{i}"} for i in range(40)]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    opts = ReadOptions(id_column="id")
    src = _src(path)
    whole = list(iter_documents(src, opts=opts))
    names = [d.stream_id.split("#")[1] for d in whole]
    assert names[:4] == ["id=3", "id=x", "record=2", "record=3"] and len(set(names)) == len(recs)
    assert [d.record for d in whole[:4]] == ["3", "x", "2", "3"]
    tasks = plan_files("qa", [src], split_parts=4, min_split_bytes=1)
    assert len(tasks) == 4
    parts = [d for t in tasks for d in iter_documents(t.sources[0], opts=opts, byte_range=t.byte_range)]
    assert [d.text for d in parts] == [r["text"] for r in recs]
    assert len({d.stream_id for d in parts}) == len(recs)
    assert all(d.record is None for d, r in zip(parts, recs) if "id" not in r)  # not a part-local index
    limited = ReadOptions(max_records_per_file=2)
    assert [
        len(list(iter_documents(t.sources[0], opts=limited, byte_range=t.byte_range))) for t in tasks
    ] == [2] * 4
    pq.write_table(
        pa.table({"text": [f"t{i}" for i in range(40)]}), tmp_path / "s.parquet", row_group_size=10
    )
    ptasks = plan_files("qa", [_src(tmp_path / "s.parquet")], split_parts=4, min_split_bytes=1)
    counts = [len(list(iter_documents(t.sources[0], opts=limited, row_groups=t.row_groups))) for t in ptasks]
    assert counts == [2] * 4


def test_split_jsonl_log_parts_read_each_line_once(tmp_path):
    from pipeline.inputs.readers import iter_log_lines_at

    path = tmp_path / "app.jsonl"
    lines = [f"2024-01-05 10:00:{i % 60:02d} INFO line {i}" for i in range(200)]
    path.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))
    tasks = plan_files("logs", [_src(path)], split_parts=4, min_split_bytes=1, records_are_streams=False)
    assert len(tasks) == 4
    got = [line for t in tasks for _, line in iter_log_lines_at(t.sources[0], byte_range=t.byte_range)]
    assert got == lines
    # Resuming inside a part reads on from there, to the part's end.
    first = list(iter_log_lines_at(tasks[1].sources[0], byte_range=tasks[1].byte_range))
    again = iter_log_lines_at(tasks[1].sources[0], byte_range=tasks[1].byte_range, start=first[7][0])
    assert [line for _, line in again] == [line for _, line in first[7:]]


def test_line_groups_carry_their_files_sizes():
    """A line-grouped stream's sources keep the sizes the listing saw (what its checkpoints compare)."""
    from actors.tasks.logs.shuffle import _pack_group

    table = pa.table({"key": ["k", "k"], "ts": [2.0, 1.0], "file": [1, 0], "line_no": [0, 0],
                      "line": ["later", "first"], "uri": ["/b.log", "/a.log"]})  # fmt: skip
    packed = _pack_group(table, "logs", {"/a.log": 10, "/b.log": 20})
    task = StreamTask.from_json(packed.column("task")[0].as_py())
    assert [(s.uri, s.size) for s in task.sources] == [("/a.log", 10), ("/b.log", 20)]
    assert packed.column("lines")[0].as_py() == ["first", "later"]


def test_names_with_glob_characters_are_literal_when_they_exist(tmp_path):
    (tmp_path / "book [2024].txt").write_text("Call me Ishmael.\n")
    (tmp_path / "other.txt").write_text("x\n")
    [src] = expand_inputs([str(tmp_path / "book [2024].txt")], None, OPTS)
    assert src.error is None and list(iter_lines(src)) == ["Call me Ishmael."]
    assert [s.uri for s in expand_inputs([str(tmp_path / "*.txt")], None, OPTS)] == [
        str(tmp_path / "book [2024].txt"), str(tmp_path / "other.txt")
    ]  # fmt: skip


def test_records_can_be_shared_by_readers_and_keep_their_names(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps({"text": f"story {i}"}) + "\n" for i in range(10)))
    whole = [d.stream_id for d in iter_documents(_src(path))]
    shares = [[d.stream_id for d in iter_documents(_src(path), every=(3, j))] for j in range(3)]
    assert sorted(s for share in shares for s in share) == sorted(whole) and shares[1] == whole[1::3]
    table = pa.table({"text": [f"t{i}" for i in range(7)]})
    pq.write_table(table, tmp_path / "s.parquet", row_group_size=2)
    whole = [d.stream_id for d in iter_documents(_src(tmp_path / "s.parquet"))]
    src = _src(tmp_path / "s.parquet")
    shares = [[d.stream_id for d in iter_documents(src, every=(2, j))] for j in (0, 1)]
    assert shares == [whole[0::2], whole[1::2]]
    tasks = plan_files("summarize", [_src(path)])
    spread = spread_records(tasks, 3)
    assert [t.every for t in spread] == [(3, 0), (3, 1), (3, 2)]
    assert spread_records(plan_files("summarize", [_src(tmp_path / "s.parquet")], split_parts=2,
                                     min_split_bytes=1), 3)[0].every is None  # fmt: skip


def test_display_uri_hides_every_form_of_credentials(monkeypatch):
    from pipeline.storage import display_uri, get_fs

    for uri in ["s3://AKIA:secret@bucket/out", "s3://user:p@ss@bucket/out", "s3://AKIA:wJal/K7MD@bucket/out"]:
        assert display_uri(uri) == "s3://bucket/out", uri
    assert display_uri("s3://bucket/a/b.txt") == "s3://bucket/a/b.txt"
    assert display_uri("/data/user@host/book.txt") == "/data/user@host/book.txt"
    # Without explicit storage, S3 clients see the standard environment, as the driver's do.
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://minio:9000")
    fs, _ = get_fs("s3://bucket/x")
    assert fs.client_kwargs == {"endpoint_url": "http://minio:9000", "region_name": "eu-central-1"}


def test_access_errors_name_their_kind_and_fix():
    from botocore.exceptions import ClientError, NoCredentialsError

    def s3_error(code: str) -> PermissionError:
        error = PermissionError(code)
        error.__cause__ = ClientError({"Error": {"Code": code, "Message": "no"}}, "HeadObject")
        return error

    where = "s3://bucket/key.txt"
    assert input_error(NoCredentialsError(), where).kind == "credentials"
    assert input_error(s3_error("InvalidAccessKeyId"), where).kind == "credentials"
    assert input_error(s3_error("ExpiredToken"), where).kind == "credentials"
    denied = input_error(s3_error("AccessDenied"), where)
    assert denied.kind == "access_denied" and "s3:GetObject" in denied.message and where in denied.message
    local = input_error(PermissionError(13, "Permission denied"), "/data/x.txt")
    assert local.kind == "access_denied" and "read access" in local.message
    assert input_error(FileNotFoundError(), where).kind == "missing"
    assert "AWS_ACCESS_KEY_ID" in input_error(NoCredentialsError(), where).message


def test_unreadable_local_inputs(tmp_path):
    files = write_bad_corpus(tmp_path)
    with pytest.raises(InputError) as info:
        list(iter_lines(_src(files["unreadable"])))
    assert info.value.kind == "unreadable"
    if "access_denied" in files:  # only when not root: root reads any file
        with pytest.raises(InputError) as info:
            list(iter_lines(_src(files["access_denied"])))
        assert info.value.kind == "access_denied"
