"""The logs task's settings section (``logs:`` in a job's config): grouping, windows, the feed, the log's
format, what counts as a silence or a rate change, the look-back over earlier nights, the report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from actors.tasks.base import check_regex, check_template, max_new_tokens_shorthand
from actors.tasks.logs.formats import FORMAT_NAMES, GENERIC, get_format
from pipeline.config import Decoding, Section

if TYPE_CHECKING:
    from actors.tasks.logs.stats import LogParser  # pyarrow: loaded when lines are parsed, not for --help

LOG_PROMPT_FIELDS = {
    "source",
    "window",
    "lines",
    "first",
    "last",
    "levels",
    "templates",
    "alerts",
    "format",
    "statistics",
}
#: The instruction after each window, by feed. The raw feed's model read lines, so it is given the
#: window's statistics; the condensed feed's model just read them (and the new messages, alerts, bursts),
#: and repeating them would double the tokens of a report, which are the night's cost on CPU.
REPORT_PROMPTS = {
    "raw": (
        "Statistics of the log lines above ({source}, window {window}, {format} log):\n{statistics}\n\n"
        "In two or three sentences, tell an on-call engineer what happened in this window and whether "
        "anything needs attention."
    ),
    "condensed": (
        "In two or three sentences, tell an on-call engineer what happened in the window above ({source}, "
        "window {window}) and whether anything needs attention."
    ),
}
#: Windows of the condensed feed when none is set: an hour of log time.
CONDENSED_WINDOW_SECONDS = 3600.0


class ReportGeneration(Decoding):
    """A window's summary: a few sentences; log loops are short ("A: A: A:"), so a 3-gram ban."""

    max_new_tokens: int = Field(default=128, ge=1, description="length cap of a report")
    no_repeat_ngram_size: int = Field(default=3, ge=0, description="never repeat an n-gram; 0 = off")


class LogsSettings(Section):
    """Log analysis: streams by file, path key or line key, windows by time, lines or tokens, the feed, the
    log's format, and the look-back over earlier nights."""

    group_by: Literal["file", "path", "line"] = Field(
        default="file",
        description="a stream per file, per key found in the paths (a host's files, merged in time order), "
        "or per key found in each line (a shuffle)",
    )
    key_pattern: str | None = Field(
        default=None, description="regex with (?P<key>...) on the path or on each line"
    )
    feed: Literal["condensed", "raw"] = Field(
        default="condensed",
        description="what the model reads: 'condensed', each window as an operator would skim it (its "
        "statistics, new messages, deduplicated alerts, bursts, silences, rate changes: it grows with "
        "what is new, not with the lines), or 'raw', every line",
    )
    window_tokens: int | None = Field(
        default=None,
        ge=8,
        description="raw feed: a window closes once it holds this many tokens (default 1024 when "
        "window_seconds is unset)",
    )
    window_seconds: float | None = Field(
        default=None,
        gt=0,
        description="a window is this much log time (default 3600 for the condensed feed)",
    )
    window_lines: int | None = Field(
        default=None, ge=1, description="a window also closes after this many lines (logs without time)"
    )
    max_lines: int | None = Field(
        default=None,
        ge=1,
        description="read at most this many lines per stream (statistics cover every line otherwise; "
        "reports say when they are capped)",
    )
    silence_seconds: float = Field(
        default=600.0, gt=0, description="no line from a stream for this long is a silence"
    )
    rate_change: float = Field(
        default=3.0,
        gt=1,
        description="a window whose lines per second are this many times (or 1/this) the previous "
        "windows' is a rate change",
    )
    history_nights: int = Field(
        default=0,
        ge=0,
        description="mark templates and hosts not seen in this many earlier nights' outputs (folders "
        "beside output.path); 0: no look-back",
    )
    history_prefix: str | None = Field(
        default=None, description="where the earlier nights' folders are; default: output.path's parent"
    )
    timestamp_pattern: str | None = Field(
        default=None, description="regex with (?P<ts>...); default: common formats"
    )
    timestamp_format: str | None = Field(
        default=None, description="strptime format of ts; unset: epoch seconds"
    )
    format: str = Field(
        default="auto",
        description="the log's format (actors.tasks.logs.formats: level, message, alert rule); "
        "auto: detected",
    )
    level_pattern: str | None = Field(default=None, description="regex with (?P<level>...)")
    alert_pattern: str | None = Field(
        default=None, description="regex: matching lines count as alerts; unset: the format's rule"
    )
    top_templates: int = Field(default=5, ge=1, description="templates listed per window")
    report_prompt: str | None = Field(
        default=None,
        description="the instruction after each window; placeholders: "
        + ", ".join(sorted(LOG_PROMPT_FIELDS))
        + "; unset: the feed's (the raw feed's gives the window's statistics; the condensed feed's does "
        "not repeat what the model just read)",
    )
    summary_prompt: str = Field(
        default=(
            "The night of {source} in numbers:\n{statistics}\n\nIn three or four sentences, tell an on-call "
            "engineer what happened on this host tonight, naming anything new or unusual."
        ),
        description="the instruction at the end of a stream (its summary row); placeholders: source, "
        "statistics",
    )
    generation: ReportGeneration = Field(
        default_factory=lambda: ReportGeneration(), description="the reports' length and repetition controls"
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return max_new_tokens_shorthand(data, {"max_new_tokens": "generation"})

    @model_validator(mode="after")
    def _check(self) -> LogsSettings:
        if self.window_tokens is not None and self.window_seconds is not None:
            raise ValueError("set either window_tokens or window_seconds, not both")
        if self.feed == "condensed" and self.window_tokens is not None:
            raise ValueError(
                "window_tokens counts the tokens of the raw feed; with feed: condensed, cut windows by time "
                "(window_seconds) or lines (window_lines), or set feed: raw"
            )
        if self.window_tokens is None and self.window_seconds is None:
            if self.feed == "condensed":
                self.window_seconds = CONDENSED_WINDOW_SECONDS
            else:
                self.window_tokens = 1024
        if self.group_by in ("path", "line") and not self.key_pattern:
            raise ValueError(f"group_by={self.group_by!r} needs key_pattern, e.g. '(?P<key>host-\\w+)'")
        for name in ("key_pattern", "timestamp_pattern", "level_pattern", "alert_pattern"):
            check_regex(getattr(self, name), name)
        if self.timestamp_pattern and "(?P<ts>" not in self.timestamp_pattern:
            raise ValueError("timestamp_pattern needs a named group (?P<ts>...)")
        if self.level_pattern and "(?P<level>" not in self.level_pattern:
            raise ValueError("level_pattern needs a named group (?P<level>...)")
        if self.report_prompt is None:
            self.report_prompt = REPORT_PROMPTS[self.feed]
        check_template(self.report_prompt, LOG_PROMPT_FIELDS, "report_prompt")
        check_template(self.summary_prompt, {"source", "statistics"}, "summary_prompt")
        if self.format not in FORMAT_NAMES:
            raise ValueError(f"unknown log format {self.format!r}; choose one of {list(FORMAT_NAMES)}")
        return self

    @property
    def alert_rule(self) -> str | None:
        """How alerts are counted when ``alert_pattern`` overrides the format's rule (else None)."""
        return f"lines matching alert_pattern {self.alert_pattern!r}" if self.alert_pattern else None

    def parser(self) -> LogParser:
        """A parser of this stream's lines (``format: auto``: generic until the format is detected)."""
        from actors.tasks.logs.stats import LogParser

        return LogParser(
            timestamp_pattern=self.timestamp_pattern,
            timestamp_format=self.timestamp_format,
            level_pattern=self.level_pattern,
            alert_pattern=self.alert_pattern,
            log_format=get_format(self.format) if self.format != "auto" else GENERIC,
        )
