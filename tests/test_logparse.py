"""The fast log parsing paths against the slow ones: ``LogParser.parse`` (tuned) against the frozen copy
of the per-line code it replaced (tests/reference/logstats_ref.py), ``parse_batch`` against ``parse``
field by field, ``WindowStats.add_batch`` against ``add`` line by line -- on every Loghub file, on
random lines and on edge cases (New Year, lines back in time, no timestamps, custom patterns, a 1 MB line,
non-ASCII text)."""

from __future__ import annotations

import dataclasses
import itertools
import random
import string

import pytest
from conftest import SHARED_DATA

from actors.tasks.logs.formats import FORMATS, GENERIC, detect_format, get_format
from actors.tasks.logs.stats import (
    LogLine,
    LogParser,
    ParsedBatch,
    WindowStats,
    _mask,
    mask_template,
)
from tests.reference import logstats_ref as ref

LOGHUB = SHARED_DATA / "loghub"
LOGHUB_NAMES = sorted(p.name.removesuffix("_2k.log") for p in LOGHUB.glob("*_2k.log"))
needs_loghub = pytest.mark.skipif(not LOGHUB.is_dir(), reason="../shared/data/loghub is absent")


def loghub_lines(name: str) -> list[str]:
    return (LOGHUB / f"{name}_2k.log").read_text(encoding="utf-8", errors="replace").splitlines()


def fields(x: LogLine | ref.LogLine) -> tuple:
    return (x.text, x.ts, x.ts_text, x.level, x.template, x.alert)


def stats_state(st: WindowStats | ref.WindowStats) -> tuple:
    """Everything a WindowStats holds, dictionaries with their order."""
    d = dataclasses.asdict(st)
    return tuple((k, list(v.items()) if isinstance(v, dict) else v) for k, v in d.items())


def per_line(parser: LogParser, lines: list[str]) -> tuple[list[LogLine], WindowStats]:
    stats = WindowStats()
    parsed = []
    for line in lines:
        parsed.append(parser.parse(line))
        stats.add(parsed[-1])
    return parsed, stats


def in_batches(parser: LogParser, lines: list[str], rng: random.Random, stats: WindowStats) -> list[LogLine]:
    """parse_batch over random-sized batches; each batch added to ``stats`` in random pieces."""
    out: list[LogLine] = []
    i = 0
    while i < len(lines):
        size = rng.choice([1, 2, 7, 64, 500, 3000])
        batch = parser.parse_batch(lines[i : i + size])
        assert isinstance(batch, ParsedBatch) and len(batch) == len(lines[i : i + size])
        cuts = sorted({0, len(batch), *(rng.randrange(len(batch) + 1) for _ in range(rng.randrange(3)))})
        for a, b in itertools.pairwise(cuts):
            stats.add_batch(batch, a, b)
        out += batch.lines()
        i += size
    return out


def check_batch_equals_per_line(make: object, lines: list[str], seed: int = 0) -> list[LogLine]:
    """parse_batch == parse field by field, equal parser memory, add_batch == add."""
    assert callable(make)
    one, many = make(), make()
    want, want_stats = per_line(one, lines)
    got_stats = WindowStats()
    got = in_batches(many, lines, random.Random(seed), got_stats)
    for i, (w, g) in enumerate(zip(want, got)):
        assert fields(g) == fields(w), f"line {i}: {lines[i]!r}"
    assert len(got) == len(want)
    assert many.memory() == one.memory()
    assert stats_state(got_stats) == stats_state(want_stats)
    assert got_stats.bursts(5) == want_stats.bursts(5)
    assert got_stats.top_templates(10) == want_stats.top_templates(10)
    return want


# ------------------------------------------------------------------------------------- Loghub files
@needs_loghub
@pytest.mark.parametrize("name", LOGHUB_NAMES)
def test_loghub_per_line_equals_reference_and_batch_equals_per_line(name):
    lines = loghub_lines(name)
    fmt = detect_format(lines[:128])
    old = ref.LogParser(log_format=fmt)
    old_stats = ref.WindowStats()
    old_lines = []
    for line in lines:
        old_lines.append(old.parse(line))
        old_stats.add(old_lines[-1])
    new = check_batch_equals_per_line(lambda: LogParser(log_format=fmt), lines, seed=len(name))
    assert [fields(x) for x in new] == [fields(x) for x in old_lines]
    parser, stats = LogParser(log_format=fmt), WindowStats()
    per_line(parser, lines)
    assert parser.memory() == old.memory()
    _, stats = per_line(LogParser(log_format=fmt), lines)
    assert stats_state(stats) == stats_state(old_stats)
    # printable ASCII throughout: only the first line (the state changes from "no format yet") falls back
    batch = LogParser(log_format=fmt).parse_batch(lines)
    assert int(batch.fallback.sum()) == 1


@needs_loghub
def test_loghub_all_files_as_one_generic_stream():
    """Every format in one stream (the parser's timestamp format changes at each file)."""
    lines = [line for name in LOGHUB_NAMES for line in loghub_lines(name)[:300]]
    check_batch_equals_per_line(lambda: LogParser(), lines)
    check_batch_equals_per_line(lambda: LogParser(log_format=get_format("hdfs")), lines, seed=1)


# --------------------------------------------------------------------------------------- masking
ALPHABET = [*"0123456789abcdefABCDEFgxX_-.:,/ \t<*>", "<*>", "0x", "1.2.3.4", "10.0.0.1:8080"]
ALPHABET += ["12345678-1234-1234-1234-123456789012", "abcdef12-abcd-1234-abcd-123456abcdef"]


def random_text(rng: random.Random, alphabet: list[str], n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(n)))


def test_one_pass_mask_equals_the_four_substitutions():
    rng = random.Random(3)
    unicode = [*ALPHABET, "٣", "é", "\u00a0", "\x1c", "ſ", "\u2028", "K"]
    texts = [random_text(rng, ALPHABET, 50) for _ in range(12000)]
    texts += [random_text(rng, unicode, 50) for _ in range(8000)]
    texts += ["x" * 150 + " 1" * 100, " ".join(["0xdeadbeef"] * 80), "\t".join(["1.2.3.4:5"] * 40)]
    for text in texts:
        assert mask_template(text) == ref.mask_template(text), repr(text)
    ascii_texts = [t for t in texts if all(c == "\t" or " " <= c <= "~" for c in t)]
    import pyarrow as pa

    got = _mask(pa.array(ascii_texts, pa.large_string())).to_pylist()
    assert got == [ref.mask_template(t) for t in ascii_texts]


# ---------------------------------------------------------------------------------- random streams
def random_lines(rng: random.Random, n: int, samples: list[str]) -> list[str]:
    stamps = [
        "2024-02-29 23:59:59",
        "2024-13-01 00:00:00",
        "2023-06-01T10:00:00.123+02:00",
        "2023-06-01T10:00:00-0530",
        "2023-06-01 25:00:00Z",
        "Dec 31 23:59:58",
        "Jan  1 00:00:01",
        "Feb 29 12:00:00",
        "Feb 30 12:00:00",
        "12-31 23:59:59.999",
        "01-01 00:00:00.1",
        "[12.31 23:59:59]",
        "[01.01 00:00:00]",
        "081109 203615",
        "17/06/09 20:10:40",
        "20171223-22:15:29:606",
        "2005-06-03-15.42.50.675872",
        "[Sun Dec 04 04:47:44 2005]",
        "1117838570",
        "1117838570.25",
        "٢٠٢٤-01-01 00:00:00",  # Arabic-Indic digits: Python's \d matches them
    ]
    extras = ["", " ", "\t", "é", "\u00a0", "\x1c", "\u2028", "ERROR", "warn", "[error]", " E ", "Failed"]
    lines = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.45 and samples:
            line = rng.choice(samples)
        elif kind < 0.8:
            line = f"{rng.choice(stamps)} {rng.choice(['INFO', 'ERROR', 'W', 'x'])} " + random_text(
                rng, ALPHABET, 30
            )
        else:
            line = random_text(rng, ALPHABET + extras + stamps, 12)
        if rng.random() < 0.2:  # damage it: an inserted character anywhere
            at = rng.randrange(len(line) + 1)
            line = line[:at] + rng.choice(extras + list(string.printable)) + line[at:]
        lines.append(line)
    return lines


@pytest.mark.parametrize("fmt", ["generic", "hdfs", "syslog", "android", "bgl", "windows", "zookeeper"])
def test_random_streams_batch_equals_per_line_and_reference(fmt):
    rng = random.Random(fmt)
    samples = [line for name in LOGHUB_NAMES for line in loghub_lines(name)[:50]] if LOGHUB.is_dir() else []
    lines = random_lines(rng, 2000, samples)
    log_format = get_format(fmt)
    new = check_batch_equals_per_line(lambda: LogParser(log_format=log_format), lines, seed=7)
    old = ref.LogParser(log_format=log_format)
    assert [fields(x) for x in new] == [fields(old.parse(line)) for line in lines]


def test_random_streams_with_custom_level_and_alert_patterns():
    rng = random.Random(11)
    lines = random_lines(rng, 800, [])
    for fmt in ("generic", "hdfs", "syslog"):
        log_format = get_format(fmt)
        make = lambda f=log_format: LogParser(  # noqa: E731
            log_format=f, level_pattern=r"(?P<level>[A-Z]{4,5})\b", alert_pattern=r"[Ee]rr|\d{3}"
        )
        new = check_batch_equals_per_line(make, lines, seed=3)
        old = ref.LogParser(
            log_format=log_format, level_pattern=r"(?P<level>[A-Z]{4,5})\b", alert_pattern=r"[Ee]rr|\d{3}"
        )
        assert [fields(x) for x in new] == [fields(old.parse(line)) for line in lines]


# ------------------------------------------------------------------------------------- edge cases
def test_new_year_crossing_and_lines_back_in_time_across_batches():
    lines = [
        "Dec 30 10:00:00 host a: x",
        "Dec 31 23:59:58 host a: x",
        "Jan  1 00:00:01 host a: y",
        "Dec 31 23:59:59 host a: late",  # back in time just after New Year: the year before
        "  continuation without a time",
        "Jan  2 00:00:01 host a: z",
        "Jan  1 00:00:00 host a: back a day",
        "Feb 29 00:00:00 host a: not in 2001",  # Feb 29 of the common year after 2000: no time
        "Jun  1 00:00:00 host a: mid-year",
        "Dec 31 00:00:00 host a: year end",
        "Jan  1 00:00:00 host a: second crossing",
    ] * 3
    for fmt in (GENERIC, FORMATS["syslog"]):
        parsed = check_batch_equals_per_line(lambda fmt=fmt: LogParser(log_format=fmt), lines)
        assert parsed[2].ts - parsed[1].ts == 3 and parsed[3].ts - parsed[1].ts == 1
        assert parsed[7].ts is None and parsed[7].ts_text == "Feb 29 00:00:00"
    stamps = [("12-31 23:59:59.500", "D"), ("01-01 00:00:00.100", "E"), ("12-31 23:59:59.900", "W")] * 4
    android = [f"{d} 1702  2395 {lv} Tag: msg {i}" for i, (d, lv) in enumerate(stamps)]
    check_batch_equals_per_line(lambda: LogParser(log_format=FORMATS["android"]), android)
    proxifier = ["[12.31 23:59:59] chrome.exe - open", "[01.01 00:00:01] chrome.exe - error x"] * 5
    check_batch_equals_per_line(lambda: LogParser(log_format=FORMATS["proxifier"]), proxifier)


def test_resumed_parser_continues_the_batch_path():
    lines = ["Dec 31 23:59:58 host a: x", "Jan  1 00:00:01 host a: y", "Jan  1 00:00:02 host a: z"] * 4
    whole = LogParser()
    want = [fields(whole.parse(line)) for line in lines]
    first = LogParser()
    got = first.parse_batch(lines[:5]).lines()
    second = LogParser()
    second.remember(first.memory())
    got += second.parse_batch(lines[5:]).lines()
    assert [fields(x) for x in got] == want and second.memory() == whole.memory()


def test_out_of_order_lines_without_timestamps_and_format_changes():
    lines = [
        "2024-01-05 10:00:00 INFO start",
        "2024-01-05 09:00:00 WARN back an hour",
        "java.lang.Exception: boom 1999999999",  # a 10-digit id in an ISO stream: no epoch time
        "    at com.example.Foo(Foo.java:42)",
        "",
        "Jan  5 10:00:00 host sshd[1]: Failed password",  # the stream's timestamps change format
        "2024-01-05 10:00:01 ERROR after the change",
        "1704448801 epoch now",
        "2024-01-05 10:00:02,123 INFO x [1.2.3.4] 0xdeadbeef",
    ] * 20
    check_batch_equals_per_line(lambda: LogParser(), lines)
    check_batch_equals_per_line(lambda: LogParser(log_format=FORMATS["hadoop"]), lines, seed=2)


def test_custom_patterns():
    lines = [f"t={1700000000 + i * 7}.5 lvl={'ERR' if i % 5 == 0 else 'ok'} message {i}" for i in range(300)]
    lines += ["t=oops lvl=ok broken time", "no time here", "t=nan lvl=ok", "t=inf lvl=ok", "t=1e3 é"]
    check_batch_equals_per_line(
        lambda: LogParser(timestamp_pattern=r"t=(?P<ts>\S+)", level_pattern=r"lvl=(?P<level>\w+)"), lines
    )
    dated = [f"[{d:02d}/03/2024:10:{m:02d}:00] hit {m}" for d in (1, 2) for m in range(50)]
    dated.append("[31/02/2024:10:00:00] x")
    make = lambda: LogParser(  # noqa: E731
        timestamp_pattern=r"\[(?P<ts>[^\]]+)\]", timestamp_format="%d/%m/%Y:%H:%M:%S", alert_pattern="hit 4"
    )
    parsed = check_batch_equals_per_line(make, dated)
    assert parsed[0].ts == 1709287200.0 and parsed[-1].ts is None and sum(x.alert for x in parsed) == 22
    check_batch_equals_per_line(lambda: LogParser(log_format=FORMATS["hdfs"], alert_pattern="blk"), dated)


def test_nan_and_infinite_custom_times_are_no_times():
    """Bug in the old per-line code: ``float("nan")`` became a time and WindowStats.add raised."""
    parser = LogParser(timestamp_pattern=r"t=(?P<ts>\S+)")
    for text in ("nan", "inf", "-Infinity"):
        line = parser.parse(f"t={text} x")
        assert line.ts is None and line.ts_text == text
        WindowStats().add(line)
    with pytest.raises((ValueError, OverflowError)):
        ref.WindowStats().add(ref.LogParser(timestamp_pattern=r"t=(?P<ts>\S+)").parse("t=nan x"))


def test_long_and_non_ascii_lines():
    words = (f"k{i}=0x{i:08x} 10.0.{i % 256}.1" for i in range(60000))
    long_line = "2024-01-01 00:00:00 INFO " + " ".join(words)
    assert len(long_line) > 1_000_000
    lines = [
        long_line,
        "2024-01-01 00:00:01 ERROR café crème 12 résumé",
        "2024-01-01 00:00:02\u00a0WARN non-breaking space 3",
        "٢٠٢٤-٠١-٠١ ٠٠:٠٠:٠٣ INFO Arabic-Indic digits ٣٤",
        "2024-01-01 00:00:04 INFO tab\tseparated\t5",
        "2024-01-01 00:00:05 INFO control \x1c char \x0b 6",
        "2024-01-01 00:00:06 INFO lone surrogate \ud800 7",
        "2024-01-01 00:00:07 INFO 日志 8 ERROR",
        "\u2028",
        "   ",
    ] * 3
    parsed = check_batch_equals_per_line(lambda: LogParser(), lines)
    assert parsed[3].ts == 1704067203.0  # Python's \d and int() read the Arabic-Indic digits
    batch = LogParser().parse_batch(lines)
    assert batch.fallback.sum() >= 6 * 3  # the non-ASCII and control-character lines (tabs are fine)
    assert not batch.fallback[4] and batch.fallback[5]
    assert list(batch.blank[-2:]) == [True, True]


def test_batch_api_slices_and_skip_blank():
    lines = [f"2024-01-01 00:00:0{i % 10} INFO line {i}" for i in range(40)]
    lines[5] = lines[17] = "   "
    batch = LogParser().parse_batch(lines)
    part = batch.slice(10, 20)
    assert len(part) == 10 and part[0] == batch[10] and part.lines() == batch.lines()[10:20]
    assert part.level == [x.level for x in batch.lines()[10:20]] and part.template[0] == batch[10].template
    whole, sliced = WindowStats(), WindowStats()
    whole.add_batch(batch, 10, 20, skip_blank=True)
    sliced.add_batch(part, skip_blank=True)
    by_line = WindowStats()
    for x in batch.lines()[10:20]:
        if x.text.strip():
            by_line.add(x)
    assert stats_state(whole) == stats_state(sliced) == stats_state(by_line) and whole.lines == 9
    empty = WindowStats()
    empty.add_batch(batch, 5, 5)
    empty.add_batch(batch, 5, 6, skip_blank=True)
    assert empty == WindowStats()
    filled = LogParser().parse_batch(["x", "2024-01-01 00:00:01 a", "y"]).ts_filled(5.0)
    assert filled.tolist() == [5.0, 1704067201.0, 1704067201.0]
