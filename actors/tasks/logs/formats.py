"""Log formats: how a line of each known format splits into level, component and message, and which
lines are alerts. One entry per format in ``FORMATS``.

Contract:

* ``LogFormat.match(line)`` -> ``Header`` (label, level, component, message) or None when the line is not
  of this format (a continuation line, another format). Levels are normalized (``normalize_level``:
  ``WARNING`` -> ``WARN``, Android's ``E`` -> ``ERROR`` ...).
* ``LogFormat.is_alert(header)`` is the format's alert rule, one of three kinds: a *label* column
  (BGL, Thunderbird: Loghub's alert label, ``-`` for a normal line), the *level* (at least ERROR: the
  formats that write one), or *keywords* in the message (formats without a usable level: syslog, OpenSSH,
  HPC, HealthApp, Proxifier, Windows CBS, whose lines are all ``Info``). A WARN line is not an alert; it
  is counted under its level.
* ``detect_format(lines)`` -> the format that matches most of a sample of lines (at least half of those
  with text; ties go to the earlier, more specific entry), else ``GENERIC`` (any line matches; the level
  is searched for, alerts by level).

The line shapes follow Loghub's published format strings for its 16 sample logs (Zhu et al., "Tools and
Benchmarks for Automated Log Parsing", 2019); the 16 files (../shared/data/loghub) are the tests' fixture.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

LEVEL_NAMES = {
    "WARNING": "WARN",
    "ERR": "ERROR",
    "CRIT": "CRITICAL",
    "EMERGENCY": "EMERG",
    "V": "VERBOSE",
    "D": "DEBUG",
    "I": "INFO",
    "W": "WARN",
    "E": "ERROR",
    "F": "FATAL",
    "A": "ASSERT",
}
#: Levels whose lines are alerts (a WARN line is not: it is counted under its level).
ALERT_LEVELS = frozenset(
    {"ERROR", "SEVERE", "FATAL", "FAILURE", "CRITICAL", "ALERT", "EMERG", "PANIC", "ASSERT"}
)
#: Levels at which a line is worth listing among a window's notable messages.
NOTABLE_LEVELS = ALERT_LEVELS | {"WARN"}

DEFAULT_LEVEL_PATTERN = (
    r"\b(?P<level>TRACE|DEBUG|INFO|NOTICE|WARN(?:ING)?|ERROR|ERR|SEVERE|CRIT(?:ICAL)?|FATAL|ALERT|"
    r"EMERG(?:ENCY)?|PANIC)\b"
)
_DEFAULT_LEVEL = re.compile(DEFAULT_LEVEL_PATTERN, re.IGNORECASE)
LEVEL_CHARS = 160


def normalize_level(name: str) -> str:
    name = name.upper()
    return LEVEL_NAMES.get(name, name)


def search_level(line: str) -> str | None:
    """The first level word in the head of ``line`` (normalized), or None."""
    m = _DEFAULT_LEVEL.search(line[:LEVEL_CHARS])
    return normalize_level(m.group("level")) if m else None


@dataclass(frozen=True)
class Header:
    """What a matching line says besides its timestamp."""

    level: str | None
    component: str | None
    message: str
    label: str | None = None


AlertRule = Literal["label", "level", "keywords"]


@dataclass(frozen=True)
class LogFormat:
    name: str
    description: str
    #: named groups: ``message`` (required), ``level``, ``component``, ``label`` (optional)
    line: re.Pattern[str] | None
    alert_rule: AlertRule = "level"
    #: keywords rule: a message matching this is an alert (case-insensitive)
    keywords: re.Pattern[str] | None = None
    alert_levels: frozenset[str] = field(default=ALERT_LEVELS)

    @property
    def has_level(self) -> bool:
        """The format writes a level on each line (else a line's level is ``NONE``)."""
        return self.line is None or "level" in self.line.groupindex

    def match(self, line: str) -> Header | None:
        if self.line is None:  # generic: the whole line is the message; the level is searched for
            return Header(search_level(line), None, line)
        m = self.line.match(line)
        if m is None:
            return None
        groups = m.groupdict()
        level = groups.get("level")
        component = groups.get("component")
        return Header(
            normalize_level(level) if level else None,
            component.strip() if component else None,
            groups["message"].strip(),
            groups.get("label"),
        )

    @property
    def alert_text(self) -> str:
        """The alert rule in a few words, for reports."""
        return {
            "label": "lines with an alert label",
            "level": "lines at level ERROR or above",
            "keywords": "lines with failure words",
        }[self.alert_rule]

    def is_alert(self, header: Header) -> bool:
        if self.alert_rule == "label":
            return header.label not in (None, "-")
        if self.alert_rule == "keywords":
            assert self.keywords is not None  # checked in FORMATS below
            return bool(self.keywords.search(header.message))
        return header.level in self.alert_levels


def _k(words: str) -> re.Pattern[str]:
    return re.compile(words, re.IGNORECASE)


_SYSLOG = r"^(?:\w{3}) +\d{1,2} \d{2}:\d{2}:\d{2} (?P<host>\S+) "
_SYSLOG_WORDS = (
    r"authentication failure|\bfail(?:s|ed|ure)?\b|\berror|\bdenied\b|\bdeny\b|refused|\binvalid\b|"
    r"unknown user|timed? ?out|\bpanic|segfault|out of memory|\boom\b|critical|unable to|cannot|can't|"
    r"couldn't|\bcorrupt"
)

GENERIC = LogFormat("generic", "any text log: level words where present, alerts by level", None)

#: Known formats, most specific first (detection breaks ties by this order).
FORMATS: dict[str, LogFormat] = {
    f.name: f
    for f in (
        LogFormat(
            "bgl",
            "Blue Gene/L RAS log: label, epoch, date, node, time, node, type, component, level, message",
            re.compile(
                r"^(?P<label>\S+) \d{9,10} \d{4}\.\d{2}\.\d{2} \S+ \d{4}-\d{2}-\d{2}-[\d.]+ \S+ \S+ "
                r"(?P<component>\S+) (?P<level>[A-Z]+) (?P<message>.*)$"
            ),
            alert_rule="label",
        ),
        LogFormat(
            "thunderbird",
            "Thunderbird supercomputer syslog with Loghub's alert label in front",
            re.compile(
                r"^(?P<label>\S+) \d{9,10} \d{4}\.\d{2}\.\d{2} \S+ \w{3} +\d{1,2} [\d:]{8} \S+ "
                r"(?P<component>\S+?)(?:\[\d+\])?: (?P<message>.*)$"
            ),
            alert_rule="label",
        ),
        LogFormat(
            "hdfs",
            "Hadoop HDFS: yymmdd hhmmss pid level component: message",
            re.compile(r"^\d{6} \d{6} \d+ (?P<level>[A-Z]+) (?P<component>[^:]+): (?P<message>.*)$"),
        ),
        LogFormat(
            "hadoop",
            "Hadoop MapReduce (log4j): date time,ms level [thread] component: message",
            re.compile(
                r"^\d{4}-\d{2}-\d{2} [\d:]{8},\d+ (?P<level>[A-Z]+) \[[^\]]*\] (?P<component>[^:]+): "
                r"(?P<message>.*)$"
            ),
        ),
        LogFormat(
            "zookeeper",
            "ZooKeeper (log4j): date time,ms - level [thread:component@line] - message",
            re.compile(
                r"^\d{4}-\d{2}-\d{2} [\d:]{8},\d+ - (?P<level>[A-Z]+) +\[.*:(?P<component>[^:@\]]+)@\d+\] - "
                r"(?P<message>.*)$"
            ),
        ),
        LogFormat(
            "openstack",
            "OpenStack (oslo.log): file date time pid level component [request] message",
            re.compile(
                r"^\S+ \d{4}-\d{2}-\d{2} [\d:.]+ \d+ (?P<level>[A-Z]+) (?P<component>\S+) (?:\[[^\]]*\] )?"
                r"(?P<message>.*)$"
            ),
        ),
        LogFormat(
            "spark",
            "Spark (log4j): yy/mm/dd time level component: message",
            re.compile(
                r"^\d{2}/\d{2}/\d{2} [\d:]{8} (?P<level>[A-Z]+) (?P<component>[^:]+): (?P<message>.*)$"
            ),
        ),
        LogFormat(
            "android",
            "Android logcat (threadtime): date time pid tid level tag: message",
            re.compile(
                r"^\d{2}-\d{2} [\d:.]+ +\d+ +\d+ (?P<level>[VDIWEFA]) (?P<component>[^:]*?) ?: "
                r"(?P<message>.*)$"
            ),
        ),
        LogFormat(
            "windows",
            "Windows CBS/CSI: date time, level component message (every line 'Info': alerts by keyword)",
            re.compile(r"^\d{4}-\d{2}-\d{2} [\d:]{8}, (?P<level>\w+) +(?P<component>\S+) +(?P<message>.*)$"),
            alert_rule="keywords",
            keywords=_k(r"^Failed\b|\bError\b|\bfailed\b|\bcorrupt|HRESULT = 0x8"),
        ),
        LogFormat(
            "apache",
            "Apache error log: [date] [level] message",
            re.compile(r"^\[\w{3} \w{3} +\d{1,2} [\d:]{8} \d{4}\] \[(?P<level>\w+)\] (?P<message>.*)$"),
            alert_levels=ALERT_LEVELS | {"CRIT", "EMERG"},
        ),
        LogFormat(
            "hpc",
            "HPC cluster event log: id node component state epoch flag message (no level: keywords)",
            re.compile(r"^\d+ (?P<node>\S+) (?P<component>\S+ \S+) \d{9,10} -?\d+ (?P<message>.*)$"),
            alert_rule="keywords",
            keywords=_k(
                r"unavailable|\berror|fail|not responding|\bdown\b|temphigh|fdmn\.full|no_server|not_served|"
                r"critical|panic|\bwarning\b"
            ),
        ),
        LogFormat(
            "healthapp",
            "HealthApp (Android app): yyyymmdd-time|component|pid|message (no level: keywords)",
            re.compile(r"^\d{8}-[\d:]+\|(?P<component>[^|]*)\|\d+\|(?P<message>.*)$"),
            alert_rule="keywords",
            keywords=_k(r"\bfail(?:ed|ure)?\b|\berror|exception|\binvalid\b|denied"),
        ),
        LogFormat(
            "proxifier",
            "Proxifier: [mm.dd time] program - message (no level: keywords)",
            re.compile(r"^\[\d{2}\.\d{2} [\d:]{8}\] (?P<component>.+?) - (?P<message>.*)$"),
            alert_rule="keywords",
            keywords=_k(r"\berror\b|could not|\bfailed\b|timed? ?out|refused"),
        ),
        LogFormat(
            "openssh",
            "OpenSSH server (syslog, sshd only; no level: keywords)",
            re.compile(_SYSLOG + r"(?P<component>sshd)\[\d+\]: (?P<message>.*)$"),
            alert_rule="keywords",
            keywords=_k(
                r"Failed (?:password|publickey|none)|Invalid user|invalid user|BREAK-IN|"
                r"authentication failure|\berror\b|Did not receive identification|Bad protocol|"
                r"not allowed|maximum authentication"
            ),
        ),
        LogFormat(
            "syslog",
            "BSD syslog (Linux, macOS): month day time host program[pid]: message (no level: keywords)",
            re.compile(_SYSLOG + r"(?P<component>[^:\[]+?)(?:\[\d+\])?(?: \([^)]*\))?: (?P<message>.*)$"),
            alert_rule="keywords",
            keywords=_k(_SYSLOG_WORDS),
        ),
    )
}
FORMAT_NAMES = ("auto", *FORMATS, GENERIC.name)


def get_format(name: str) -> LogFormat:
    if name == GENERIC.name:
        return GENERIC
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown log format {name!r}; choose one of {list(FORMAT_NAMES)}") from None


def detect_format(lines: Iterable[str]) -> LogFormat:
    """The known format matching most of ``lines`` (at least half of those with text), else ``GENERIC``."""
    sample = [line for line in lines if line.strip()]
    if not sample:
        return GENERIC
    best, hits = GENERIC, 0
    for fmt in FORMATS.values():
        n = sum(fmt.match(line) is not None for line in sample)
        if n > hits:
            best, hits = fmt, n
    return best if 2 * hits >= len(sample) else GENERIC
