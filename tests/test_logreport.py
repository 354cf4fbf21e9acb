"""Log formats, alert rules, window statistics (templates, bursts) and the incident report's text."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from conftest import SHARED_DATA

from actors.tasks.logs.formats import FORMATS, GENERIC, detect_format, get_format
from actors.tasks.logs.report import duration_text, render_report, statistics_text
from actors.tasks.logs.stats import LogParser, WindowStats

LOGHUB = SHARED_DATA / "loghub"
needs_loghub = pytest.mark.skipif(not LOGHUB.is_dir(), reason="../shared/data/loghub is absent")

#: Loghub file -> the format it must be detected as.
EXPECTED_FORMAT = {
    "Android": "android",
    "Apache": "apache",
    "BGL": "bgl",
    "HDFS": "hdfs",
    "HPC": "hpc",
    "Hadoop": "hadoop",
    "HealthApp": "healthapp",
    "Linux": "syslog",
    "Mac": "syslog",
    "OpenSSH": "openssh",
    "OpenStack": "openstack",
    "Proxifier": "proxifier",
    "Spark": "spark",
    "Thunderbird": "thunderbird",
    "Windows": "windows",
    "Zookeeper": "zookeeper",
}


def loghub_lines(name: str) -> list[str]:
    return (LOGHUB / f"{name}_2k.log").read_text(encoding="utf-8", errors="replace").splitlines()


def parse_all(lines: list[str]) -> tuple[LogParser, WindowStats]:
    parser = LogParser(log_format=detect_format(lines[:128]))
    stats = WindowStats()
    for line in lines:
        stats.add(parser.parse(line))
    return parser, stats


@needs_loghub
@pytest.mark.parametrize("name", sorted(EXPECTED_FORMAT))
def test_each_loghub_file_is_detected_and_no_file_is_all_alerts(name):
    lines = loghub_lines(name)
    parser, stats = parse_all(lines)
    assert parser.format.name == EXPECTED_FORMAT[name]
    matched = sum(parser.format.match(line) is not None for line in lines)
    assert matched >= 0.99 * len(lines), f"{name}: {len(lines) - matched} lines do not match its format"
    assert stats.alerts < stats.lines, f"{name}: every line counted as an alert"
    # The old shipped default (BGL's label rule for every log) marked every line of 14 files an alert.
    old = LogParser(alert_pattern=r"^(?!- )")
    assert sum(old.parse(line).alert for line in lines) == (
        len(lines) if name not in ("BGL", "Thunderbird") else sum(not line.startswith("- ") for line in lines)
    )


@needs_loghub
def test_alert_counts_equal_independent_counts():
    """Each kind of rule against a count written without the parser."""
    _, bgl = parse_all(loghub_lines("BGL"))  # label: Loghub's label column is not "-"
    assert bgl.alerts == sum(not line.startswith("- ") for line in loghub_lines("BGL")) == 143
    _, apache = parse_all(loghub_lines("Apache"))  # level: "[error]"
    assert apache.alerts == sum("] [error] " in line for line in loghub_lines("Apache"))
    android_lines = loghub_lines("Android")
    _, android = parse_all(android_lines)  # level: the letter after pid and tid, E/F/A
    assert android.alerts == sum(line.split()[4] in "EFA" for line in android_lines)
    assert android.levels["WARN"] == sum(line.split()[4] == "W" for line in android_lines)
    ssh_lines = loghub_lines("OpenSSH")
    _, ssh = parse_all(ssh_lines)  # keywords
    assert ssh.alerts >= sum("Failed password" in line for line in ssh_lines) > 0
    assert ssh.alerts < len(ssh_lines)  # "Received disconnect ... Bye Bye" is not an alert


def test_detection_falls_back_to_generic():
    assert detect_format([]) is GENERIC
    assert detect_format(["hello", "world", ""]) is GENERIC
    mixed = ["081109 203615 148 INFO dfs.DataNode: x"] + ["free text"] * 3
    assert detect_format(mixed) is GENERIC  # under half the lines match HDFS
    assert detect_format(mixed[:1] * 3 + ["free text"]).name == "hdfs"
    with pytest.raises(ValueError, match="unknown log format 'nope'"):
        get_format("nope")
    assert set(FORMATS) >= set(EXPECTED_FORMAT.values())


def test_format_parse_levels_templates_and_overrides():
    hdfs = get_format("hdfs")
    line = "081109 203807 222 ERROR dfs.DataNode$PacketResponder: PacketResponder 0 for block blk_-69 failed"
    parsed = LogParser(log_format=hdfs).parse(line)
    assert (parsed.level, parsed.alert, parsed.notable) == ("ERROR", True, True)
    assert parsed.template == "dfs.DataNode$PacketResponder: PacketResponder <*> for block blk_-<*> failed"
    assert parsed.ts_text == "081109 203807"
    # alert_pattern overrides the format's rule; a format without a level column reports NONE.
    assert not LogParser(log_format=hdfs, alert_pattern="WARN").parse(line).alert
    syslog = LogParser(log_format=get_format("syslog"))
    failure = syslog.parse("Jun 14 15:16:01 combo sshd(pam_unix)[19939]: authentication failure; uid=0")
    assert (failure.level, failure.alert) == ("NONE", True)
    assert failure.template == "sshd(pam_unix): authentication failure; uid=<*>"
    # A line that is not of the stream's format (a stack trace) is parsed as a generic one.
    trace = LogParser(log_format=hdfs).parse("java.io.IOException: ERROR reading block")
    assert (trace.level, trace.alert) == ("ERROR", True)


def _stamp(seconds: int) -> str:
    return (datetime(2024, 1, 5, 10, 0, tzinfo=UTC) + timedelta(seconds=seconds)).strftime(
        "%Y-%m-%d %H:%M:%S"
    )


def test_template_occurrences_and_bursts():
    # One line a minute for 100 minutes, and 40 ERROR lines within one second at minute 40.
    parser = LogParser()
    lines = [f"{_stamp(60 * i)} INFO served request {i}" for i in range(100)]
    lines[40:40] = [f"{_stamp(2400)} ERROR disk full on /dev/sd{i % 3}" for i in range(40)]
    stats = WindowStats()
    for line in lines:
        stats.add(parser.parse(line))
    assert stats.lines == 140 and stats.alerts == 40
    info = stats.template_stats["INFO served request <*>"]
    assert (info.count, info.first, info.last) == (100, _stamp(0), _stamp(5940))
    (template, err), *_ = stats.notable_templates(3)
    assert template == "ERROR disk full on /dev/sd<*>" and (err.count, err.alerts, err.level) == (
        40,
        40,
        "ERROR",
    )
    assert err.first == err.last == _stamp(2400)
    # By hand: 5,941 s of log need 300 s buckets (the finest resolution giving <= 60 buckets: 20); the
    # mean is 140 / 20 = 7 lines; only the bucket [2,400 s, 2,700 s) (40 + 5 lines) holds >= 4x that.
    (burst,) = stats.bursts()
    assert (burst.start, burst.end, burst.lines, burst.alerts) == (_stamp(2400), _stamp(2640), 45, 40)
    assert burst.rate_ratio == pytest.approx((45 / 300) / (140 / 5941))


def test_burst_rate_counts_the_lines_it_buckets():
    """Continuation lines (no timestamp) are no part of the bucketed rate, so not of its baseline either."""
    parser, stats = LogParser(), WindowStats()
    lines = [f"{_stamp(60 * i)} INFO served request {i}" for i in range(100)]
    lines[40:40] = [f"{_stamp(2400)} ERROR disk full" for _ in range(40)]
    lines[41:41] = ["    at com.example.Disk.write(Disk.java:42)"] * 500  # a stack trace: no timestamps
    for line in lines:
        stats.add(parser.parse(line))
    (burst,) = stats.bursts()
    assert burst.rate_ratio == pytest.approx((45 / 300) / (140 / 5941))  # as without the trace


def test_yearless_timestamps_cross_new_year_and_ids_are_not_times():
    """Syslog has no year: Jan 1 after Dec 31 is the next year (also for a resumed parser); in a stream
    with another format, a 10-digit id in a line is not an epoch time."""
    parser = LogParser()
    times = [parser.timestamp(line)[0] for line in
             ["Dec 31 23:59:58 host a", "Jan  1 00:00:01 host b", "Dec 31 23:59:59 host late"]]  # fmt: skip
    assert times[1] - times[0] == 3 and times[2] - times[0] == 1  # a line out of order stays in its year
    resumed = LogParser()
    resumed.remember(parser.memory())
    assert resumed.timestamp("Jan  2 00:00:01 host c")[0] == times[1] + 86400
    legacy = LogParser()
    legacy.remember(parser.memory()[0])  # a bare pattern, as older checkpoints hold
    assert legacy.timestamp("Jan  2 00:00:01 host c")[0] is not None
    iso = LogParser()
    assert iso.timestamp("2024-01-01 00:00:00 INFO start")[0] == 1704067200.0
    assert iso.timestamp("  Caused by: order 1999999999 not found") == (None, None, None)
    bgl = LogParser()
    assert bgl.timestamp("- 1117838570 2005.06.03 R02 RAS KERNEL INFO x")[0] == 1117838570.0
    assert bgl.timestamp("- 1117838571 2005.06.03 R02 RAS KERNEL INFO y")[0] == 1117838571.0


def test_bursts_against_a_brute_force_reference():
    """bursts() vs a direct computation over the same buckets, on irregular traffic."""
    import random

    rng = random.Random(7)
    seconds = sorted(rng.choice([rng.randrange(0, 3000), rng.randrange(1000, 1030)]) for _ in range(400))
    parser, stats = LogParser(), WindowStats()
    for s in seconds:
        stats.add(parser.parse(f"{_stamp(s)} WARN x"))
    got = [(b.lines, b.start, b.end) for b in stats.bursts(k=10)]
    lo, hi = seconds[0], seconds[-1]
    span = hi - lo + 1
    width = next(r for r in (1, 5, 10, 30, 60, 300, 600) if span / r <= 60)
    buckets = Counter((s - lo) // width for s in seconds)
    n = (span + width - 1) // width
    hot = [b for b in range(n) if buckets[b] >= 5 and buckets[b] >= 4 * len(seconds) / n]
    runs: list[list[int]] = []
    for b in hot:
        if runs and runs[-1][-1] == b - 1:
            runs[-1].append(b)
        else:
            runs.append([b])
    want = []
    for run in runs:
        inside = [s for s in seconds if run[0] <= (s - lo) // width <= run[-1]]
        want.append((len(inside), _stamp(inside[0]), _stamp(inside[-1])))
    assert got == want and want


def test_statistics_text_and_report():
    parser = LogParser(log_format=get_format("apache"))
    lines = [
        "[Sun Dec 04 04:47:44 2005] [notice] workerEnv.init() ok /etc/httpd/conf/workers2.properties",
        "[Sun Dec 04 04:47:44 2005] [error] mod_jk child workerEnv in error state 6",
        "[Sun Dec 04 05:51:08 2005] [error] mod_jk child workerEnv in error state 7",
    ]
    stats = WindowStats()
    for line in lines:
        stats.add(parser.parse(line))
    text = statistics_text(stats, parser.format.alert_text)
    assert "Time: Sun Dec 04 04:47:44 2005 .. Sun Dec 04 05:51:08 2005 (1 h 3 min), 3 lines" in text
    assert "Levels: ERROR 2, NOTICE 1" in text
    assert "Alerts: 2 lines (67%; lines at level ERROR or above)" in text
    assert re.search(
        r"Notable messages:\n  - 2x \[ERROR\] mod_jk child workerEnv in error state <\*> "
        r"\(first Sun Dec 04 04:47:44 2005, last Sun Dec 04 05:51:08 2005\)",
        text,
    )
    report = render_report("Incident report: x", text, "  Two errors.  ", "SmolLM2")
    assert report.startswith("Incident report: x\nTime:") and report.endswith(
        "Summary (SmolLM2): Two errors."
    )
    assert render_report("t", "s", "", "m").endswith("(the model wrote nothing)")
    quiet = WindowStats()
    quiet.add(LogParser().parse("no timestamp, just text"))
    assert "Time: no timestamps, 1 line\n" in statistics_text(quiet, "x")
    assert "Notable messages: none" in statistics_text(quiet, "x")
    assert "Most frequent messages" not in statistics_text(WindowStats(), "x")  # no header over nothing
    # Lines that go back in time: the window spans the earliest to the latest, not first to last.
    shuffled = WindowStats()
    for line in lines[:1] + lines[2:] + ["[Sun Dec 04 04:50:00 2005] [notice] late line"]:
        shuffled.add(parser.parse(line))
    assert "Time: Sun Dec 04 04:47:44 2005 .. Sun Dec 04 05:51:08 2005 (1 h 3 min), 3 lines" in (
        statistics_text(shuffled, "x")
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(5, "5 s"), (600, "10 min"), (3725, "1 h 2 min"), (7200, "2 h"), (3 * 86400, "3.0 days")],
)
def test_durations(seconds, text):
    assert duration_text(seconds) == text
