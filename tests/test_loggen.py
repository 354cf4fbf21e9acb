"""The synthetic nightly logs (``actors.tasks.logs.synth``): the data is what labels.json says.

Every test name contains ``incident`` (``pytest -k incident``). One small data set (a few MB) is written
once per module and every line of it is parsed with the real ``LogParser``; the checks never trust the
generator's own bookkeeping where the files can be read instead.
"""

from __future__ import annotations

import gzip
import itertools
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pytest

from actors.tasks.logs.formats import detect_format, get_format
from actors.tasks.logs.stats import LogParser
from actors.tasks.logs.synth import (
    DAY,
    SERVICES,
    _stamps,
    generate,
    host_context,
    line_template,
    main,
    parse_size,
    render,
    template_infos,
)

SIZE = 3_000_000
HOSTS = 8
NIGHTS = 3
SEED = 0
PER_KIND = 3
#: a burst's alert lines per second in its span over the host's rate of alert lines elsewhere tonight
BURST_MIN_RATIO = 5


@dataclass
class ParsedFile:
    fmt: str
    lines: list[str]
    seconds: list[int] = field(default_factory=list)  # second of the night of each line
    templates: list[str] = field(default_factory=list)
    alerts: list[bool] = field(default_factory=list)
    levels: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("loggen")
    labels = generate(out, SIZE, HOSTS, NIGHTS, SEED, prev_fraction=0.1, incidents=PER_KIND, workers=1)
    return out, labels


@pytest.fixture(scope="module")
def parsed(data) -> dict[str, ParsedFile]:
    """Every file, every line, parsed with LogParser in the host's format (keyed by relative path)."""
    out, labels = data
    files: dict[str, ParsedFile] = {}
    for night in labels["nights"]:
        for host, entry in night["hosts"].items():
            fmt = get_format(labels["hosts"][host]["parser_format"])
            lines = (out / entry["file"]).read_text(encoding="ascii").splitlines()
            pf = ParsedFile(fmt.name, lines)
            parser = LogParser(log_format=fmt)
            for line in lines:
                parsed_line = parser.parse(line)
                assert parsed_line.ts is not None, line
                pf.seconds.append(int(parsed_line.ts) % DAY)
                pf.templates.append(parsed_line.template)
                pf.alerts.append(parsed_line.alert)
                pf.levels.append(parsed_line.level)
            files[entry["file"]] = pf
    return files


def _second(epoch: float) -> int:
    return int(epoch) % DAY


def _tonight_file(labels, host: str) -> str:
    return labels["nights"][-1]["hosts"][host]["file"]


def test_incident_data_is_deterministic_for_a_seed(data, tmp_path):
    out, labels = data
    again = tmp_path / "again"
    # another worker count: the bytes must not depend on it
    labels2 = generate(again, SIZE, HOSTS, NIGHTS, SEED, prev_fraction=0.1, incidents=PER_KIND, workers=2)
    assert labels2 == labels
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = generate(tmp_path / "other", SIZE // 3, HOSTS, NIGHTS, SEED + 1, workers=1)
    assert other["incidents"] != labels["incidents"]


def test_incident_layout_and_tonight_size(data):
    out, labels = data
    dates = [n["date"] for n in labels["nights"]]
    assert dates == ["2026-12-01", "2026-12-02", "2026-12-03"] and labels["tonight"] == dates[-1]
    assert sorted(p.name for p in out.iterdir()) == [*dates, "labels.json"]
    tonight = labels["nights"][-1]
    assert len(tonight["hosts"]) == HOSTS
    assert abs(tonight["bytes"] / SIZE - 1) < 0.03
    for night in labels["nights"][:-1]:
        assert len(night["hosts"]) == HOSTS - 1
        assert abs(night["bytes"] / (0.1 * SIZE) - 1) < 0.05
    on_disk = sum(p.stat().st_size for p in (out / tonight["date"]).rglob("*.log"))
    assert on_disk == tonight["bytes"]
    for host, entry in tonight["hosts"].items():
        service = SERVICES[labels["hosts"][host]["format"]]
        assert entry["file"] == f"{tonight['date']}/{host}/{service.file}.log"
        assert host.startswith(service.role + "-")


def test_incident_formats_detected_and_every_line_timestamped(data, parsed):
    _, labels = data
    for night in labels["nights"]:
        day = date.fromisoformat(night["date"])
        for host, entry in night["hosts"].items():
            pf = parsed[entry["file"]]
            intended = labels["hosts"][host]["parser_format"]
            assert detect_format(pf.lines).name == intended, entry["file"]
            assert detect_format(pf.lines[:50]).name == intended, entry["file"]
            fmt = get_format(intended)
            assert all(fmt.match(line) is not None for line in pf.lines), entry["file"]
            assert pf.seconds == sorted(pf.seconds), f"{entry['file']}: timestamps go back"
            parser = LogParser(log_format=fmt)
            first, last = parser.parse(pf.lines[0]).ts, parser.parse(pf.lines[-1]).ts
            assert first is not None and last is not None
            for ts in (first, last):  # the right day (year-less formats: month and day)
                moment = datetime.fromtimestamp(ts, UTC)
                assert (moment.month, moment.day) == (day.month, day.day)
                if intended not in ("syslog", "openssh"):
                    assert moment.year == day.year
            if fmt.has_level:
                assert "NONE" not in pf.levels, entry["file"]


def test_incident_line_counts_and_template_counts_match_labels(data, parsed):
    out, labels = data
    for night in labels["nights"]:
        for entry in night["hosts"].values():
            pf = parsed[entry["file"]]
            assert entry["lines"] == len(pf.lines)
            assert entry["bytes"] == (out / entry["file"]).stat().st_size == entry["file_bytes"]
            assert entry["alerts"] == sum(pf.alerts)
            assert entry["template_counts"] == dict(Counter(pf.templates))
        assert night["lines"] == sum(e["lines"] for e in night["hosts"].values())


def test_incident_kinds_counts_and_fields(data):
    out, labels = data
    kinds = Counter(i["kind"] for i in labels["incidents"])
    assert kinds == {"error_burst": 3, "new_template": 3, "silence": 3, "rate_change": 3, "new_host": 1}
    tonight = labels["tonight"]
    spans: dict[str, list[tuple[float, float]]] = {}
    for inc in labels["incidents"]:
        assert inc["night"] == tonight and inc["file"] == _tonight_file(labels, inc["host"])
        assert inc["start"].startswith(tonight) and inc["start_epoch"] < inc["end_epoch"]
        assert datetime.fromisoformat(inc["start"]).timestamp() == inc["start_epoch"]
        assert datetime.fromisoformat(inc["end"]).timestamp() == inc["end_epoch"]
        assert inc["duration_s"] == inc["end_epoch"] - inc["start_epoch"]
        if inc["kind"] != "new_host":
            spans.setdefault(inc["host"], []).append((inc["start_epoch"], inc["end_epoch"]))
        if inc["template"] is not None:
            fmt = get_format(labels["hosts"][inc["host"]]["parser_format"])
            assert LogParser(log_format=fmt).parse(inc["example"]).template == inc["template"]
            assert (out / inc["file"]).read_text(encoding="ascii").count(inc["example"] + "\n") >= 1
    for host, host_spans in spans.items():  # one host's incidents do not overlap
        host_spans.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(host_spans)), host
    assert json.loads((out / "labels.json").read_text()) == labels


def test_incident_error_bursts_are_in_the_data(data, parsed):
    _, labels = data
    bursts = [i for i in labels["incidents"] if i["kind"] == "error_burst"]
    for inc in bursts:
        pf = parsed[inc["file"]]
        lo, hi = _second(inc["start_epoch"]), _second(inc["end_epoch"])
        seconds = np.array(pf.seconds)
        alerts = np.array(pf.alerts)
        inside = (seconds >= lo) & (seconds < hi)
        span = hi - lo
        alert_in = int(alerts[inside].sum())
        template_in = sum(1 for t, ok in zip(pf.templates, inside) if ok and t == inc["template"])
        normal_rate = alerts[~inside].sum() / (DAY - span)
        assert inc["alert"] is True and template_in >= inc["burst_lines"] >= 30
        assert alert_in == inc["observed_alert_lines"]
        assert alert_in / span > BURST_MIN_RATIO * normal_rate, inc["id"]
        assert inc["factor"] >= 10 and inc["factor_vs_mean"] >= 10
        assert inc["observed_normal_alert_rate"] == pytest.approx(normal_rate)


def test_incident_silences_are_in_the_data(data, parsed):
    _, labels = data
    for inc in (i for i in labels["incidents"] if i["kind"] == "silence"):
        pf = parsed[inc["file"]]
        lo, hi = _second(inc["start_epoch"]), _second(inc["end_epoch"])
        assert 20 * 60 <= inc["silence_s"] == hi - lo <= 60 * 60
        assert not any(lo <= s < hi for s in pf.seconds), inc["id"]
        before = max(s for s in pf.seconds if s < lo)
        after = min(s for s in pf.seconds if s >= hi)
        assert inc["gap_s"] == after - before
        assert inc["observed_lines"] == 0 and inc["expected_lines"] >= 10  # by chance: p < e**-10


def test_incident_rate_changes_are_in_the_data(data, parsed):
    _, labels = data
    for inc in (i for i in labels["incidents"] if i["kind"] == "rate_change"):
        pf = parsed[inc["file"]]
        t0, window = _second(inc["start_epoch"]), inc["window_s"]
        assert inc["end"] == f"{date.fromisoformat(labels['tonight']).replace(day=4).isoformat()}T00:00:00Z"
        before = sum(1 for s in pf.seconds if t0 - window <= s < t0) / window
        after = sum(1 for s in pf.seconds if t0 <= s < t0 + window) / window
        assert before == pytest.approx(inc["observed_rate_before"])
        assert after == pytest.approx(inc["observed_rate_after"])
        factor = inc["factor"]
        assert factor >= 4 or factor <= 1 / 4
        expected = inc["expected_rate_after"] / inc["expected_rate_before"]
        observed = after / before
        # the hour before and after: the expected rates differ by >= 3, and the lines are counts drawn at
        # those rates (at this size a few dozen lines an hour: the observed ratio is noisier)
        for rate, mean in ((before, inc["expected_rate_before"]), (after, inc["expected_rate_after"])):
            lines, mean_lines = rate * window, mean * window
            assert abs(lines - mean_lines) <= 4 * mean_lines**0.5 + 3, (inc["id"], lines, mean_lines)
        if factor > 1:
            assert expected >= 3 and observed >= 2, inc["id"]
        else:
            assert expected <= 1 / 3 and observed <= 1 / 2, inc["id"]
        # sustained to the night's end: tonight's lines after t0 over the earlier nights' (same hours, same
        # diurnal curve), against the same ratio before t0
        earlier = [s for n in labels["nights"][:-1] for s in parsed[n["hosts"][inc["host"]]["file"]].seconds]
        tonight_after = sum(1 for s in pf.seconds if s >= t0) / sum(1 for s in pf.seconds if s < t0)
        earlier_after = sum(1 for s in earlier if s >= t0) / sum(1 for s in earlier if s < t0)
        sustained = tonight_after / earlier_after
        assert (sustained >= 3) if factor > 1 else (sustained <= 1 / 3), (inc["id"], sustained)


def test_incident_new_templates_are_new_tonight_only(data, parsed):
    _, labels = data
    new = [i for i in labels["incidents"] if i["kind"] == "new_template"]
    labelled: dict[str, set[str]] = {}
    for inc in new:
        labelled.setdefault(inc["host"], set()).add(inc["template"])
        pf = parsed[inc["file"]]
        at = [s for s, t in zip(pf.seconds, pf.templates) if t == inc["template"]]
        assert len(at) == inc["lines"] >= 20
        assert at[0] == _second(inc["start_epoch"]) and at[-1] + 1 == _second(inc["end_epoch"])
        for night in labels["nights"][:-1]:
            earlier = parsed[night["hosts"][inc["host"]]["file"]]
            assert inc["template"] not in earlier.templates, (inc["id"], night["date"])
    # and nothing else is new: on every old host, tonight's templates minus earlier ones are the labelled
    for host, info in labels["hosts"].items():
        if info["new_tonight"]:
            continue
        earlier_templates: set[str] = set()
        for night in labels["nights"][:-1]:
            earlier_templates |= set(parsed[night["hosts"][host]["file"]].templates)
        tonight_templates = set(parsed[_tonight_file(labels, host)].templates)
        assert tonight_templates - earlier_templates == labelled.get(host, set()), host
        bank = {t["template"] for t in info["templates"]}
        assert earlier_templates == bank  # every bank template on every night
        for night in labels["nights"][:-1]:
            assert set(parsed[night["hosts"][host]["file"]].templates) == bank


def test_incident_new_host_has_no_previous_nights(data, parsed):
    out, labels = data
    (inc,) = [i for i in labels["incidents"] if i["kind"] == "new_host"]
    host = inc["host"]
    assert [h for h, info in labels["hosts"].items() if info["new_tonight"]] == [host]
    for night in labels["nights"][:-1]:
        assert host not in night["hosts"]
        assert not (out / night["date"] / host).exists()
    pf = parsed[inc["file"]]
    assert inc["lines"] == len(pf.lines) and inc["example"] == pf.lines[0]
    assert inc["templates"] == len(set(pf.templates))
    assert not any(i["host"] == host for i in labels["incidents"] if i["kind"] != "new_host")


def test_incident_template_banks_mask_consistently():
    """Each template masks to one template, alert flag and level whatever its values; banks are distinct."""
    rng = np.random.default_rng(1)
    for service in SERVICES.values():
        assert len(service.bank) >= 30 and len(service.reserve) >= 5, service.name
        ctx = host_context(0, 0, f"{service.role}-01", service)
        fmt = service.log_format
        parser = LogParser(log_format=fmt)
        infos = template_infos(ctx)
        stamps = _stamps(service.name, date(2026, 12, 3))
        for ct, info in zip(ctx.templates, infos):
            # values that could escape the mask now and then: hex digits without a decimal one
            # (after 0x, or right after a {hex:n} that starts with a decimal digit)
            for m in re.finditer(r"\{x:", ct.text):
                assert ct.text[: m.start()].endswith(("0x", "}")), ct.text
            assert all(int(n) >= 6 for n in re.findall(r"\{hex:(\d+)", ct.text)), ct.text
            secs = np.sort(rng.integers(0, DAY, 80))
            for line in render(ct, rng, secs, rng.random(80), ctx, stamps):
                assert line.isascii() and "\n" not in line
                assert line_template(fmt, line) == (info.template, info.alert, info.level), line
                assert parser.parse(line).template == info.template
        bank = [i.template for i in infos[: len(service.bank)]]
        reserve = [i.template for i in infos[len(service.bank) :]]
        assert len(set(bank)) == len(bank), service.name
        assert len(set(reserve)) == len(reserve) and not set(reserve) & set(bank), service.name
        alerts = [i.alert for i in infos[: len(service.bank)]]
        assert any(alerts) and not all(alerts), service.name


def test_incident_gzip_and_cli_write_the_same_lines(data, tmp_path):
    small = tmp_path / "plain"
    labels = generate(small, "400KB", 4, 2, 3, ["hdfs", "bgl"], incidents=1, workers=1)
    main(["--out", str(tmp_path / "gz"), "--size", "400KB", "--hosts", "4", "--nights", "2", "--seed", "3",
          "--formats", "hdfs,bgl", "--incidents", "1", "--workers", "1", "--gzip", "--quiet"])  # fmt: skip
    zipped = json.loads((tmp_path / "gz" / "labels.json").read_text())
    assert zipped["gzip"] and zipped["incidents"] == [
        {**i, "file": i["file"] + ".gz"} for i in labels["incidents"]
    ]
    for night in labels["nights"]:
        for entry in night["hosts"].values():
            plain = (small / entry["file"]).read_bytes()
            packed = (tmp_path / "gz" / (entry["file"] + ".gz")).read_bytes()
            assert gzip.decompress(packed) == plain
    assert {labels["hosts"][h]["format"] for h in labels["hosts"]} == {"hdfs", "bgl"}


def test_incident_size_parsing():
    assert parse_size("1GB") == 10**9 and parse_size("1GiB") == 2**30 and parse_size("500MB") == 5 * 10**8
    assert parse_size("2.5G") == 2_500_000_000 and parse_size("123") == 123 and parse_size(7) == 7
    with pytest.raises(ValueError):
        parse_size("lots")


def test_incident_previous_nights_scale(tmp_path):
    labels = generate(tmp_path, "1MB", 3, 2, 0, ["spark", "zookeeper", "linux"], prev_fraction=0.5, workers=1)
    first, tonight = labels["nights"]
    assert abs(first["bytes"] / 500_000 - 1) < 0.05 and abs(tonight["bytes"] / 1_000_000 - 1) < 0.05
    assert Path(tmp_path, "labels.json").exists()
