"""Task ``logs``: a log stream's windows reported, and the night summed up, with exact statistics
(``python -m jobs.analyze_logs``).

Contract: a stream is a file (``group_by: file``), the files whose paths share a key (``path``: a host's
files, merged in time order while read incrementally, see ``grouping.merge_in_time_order``), or the lines
that share a key (``line``: gathered and time-sorted by the driver's shuffle, ``shuffle``). The stream's
"host" is its key, or its file's name. Its program (``program.LogsRun``) parses every line into exact
statistics (``stats``: levels, alerts by the format's rule (``formats``, detected unless ``logs.format``
names one), message templates, bursts; ``skim``: new templates, silences, rate changes), feeds the model
either the window as an operator would skim it (``logs.feed: condensed``, the default) or every line
(``raw``), and writes a ``window`` row per window and a ``summary`` row per stream. With
``logs.history_nights``, templates and hosts are marked new against the earlier nights' summary rows
under the same output prefix (``history``), read once per process.
"""

from __future__ import annotations

import argparse
import posixpath
from collections.abc import Iterator
from typing import TYPE_CHECKING

from actors.tasks.base import Stream, Task
from actors.tasks.logs.settings import LogsSettings
from pipeline.inputs.readers import Damage, Meter, Position, PositionedLines, iter_log_lines_at
from pipeline.inputs.sources import InputError, SourceFile
from pipeline.job.plan import StreamTask

if TYPE_CHECKING:  # the parsers (pyarrow) and the stream programs' side (torch) load with the task's work,
    # not with the settings: ``--help`` and the dry run import this module
    from actors.context import TaskContext
    from actors.tasks.logs.grouping import LineOpener
    from actors.tasks.logs.history import History
    from actors.tasks.logs.shuffle import LineGrouping
    from longread.scheduler import Program


class Logs(Task):
    name = "logs"
    job_name = "analyze_logs"
    Settings = LogsSettings
    row_kinds = ("window", "summary")
    preview_kind = "window"
    records_are_streams = False  # a log in JSONL/Parquet is one stream of its records' lines
    default_config = "analyze_logs.yaml"
    splits_by_default = True
    needs_input_paths = False  # without input.paths: the generated sample night (synth.sample_night)

    @property
    def settings(self) -> LogsSettings:
        return self.cfg.logs  # type: ignore[attr-defined]

    def inputs(self) -> list[str]:
        if self.cfg.input.paths:
            return list(self.cfg.input.paths)
        from actors.tasks.logs.synth import sample_night  # generated once, a few seconds

        return [str(sample_night())]

    def history(self) -> History:
        """The earlier nights (``logs.history_nights``), read once per process."""
        if not hasattr(self, "_history"):
            from actors.tasks.logs.history import History

            s, out = self.settings, self.cfg.output.path
            self._history = History.load(out or "", s.history_nights, s.history_prefix, self.storage)
        return self._history

    @classmethod
    def add_flags(cls, parser: argparse.ArgumentParser) -> None:
        add = parser.add_argument
        add("--feed", dest="logs.feed", choices=["condensed", "raw"])
        add("--window-tokens", type=int, dest="logs.window_tokens", metavar="N")
        add("--window-seconds", type=float, dest="logs.window_seconds", metavar="S")
        add("--group-by", dest="logs.group_by", choices=["file", "path", "line"])
        add("--key-pattern", dest="logs.key_pattern", metavar="REGEX")

    # ------------------------------------------------------------------ planning
    def plan(self, sources: list[SourceFile]) -> list[StreamTask]:
        s = self.settings
        if s.group_by == "path":
            assert s.key_pattern is not None  # the settings check it
            from actors.tasks.logs.grouping import group_by_path_key

            return group_by_path_key(self.name, sources, s.key_pattern)
        return super().plan(sources)

    def line_grouping(self) -> LineGrouping | None:
        s = self.settings
        if s.group_by != "line":
            return None
        assert s.key_pattern is not None  # the settings check it
        from actors.tasks.logs.shuffle import LineGrouping

        return LineGrouping(self.name, s.key_pattern, s.timestamp_pattern, s.timestamp_format)

    # ------------------------------------------------------------------ streams
    def streams(
        self, unit: StreamTask, lines: list[str] | None = None, meter: Meter | None = None
    ) -> Iterator[Stream]:
        from actors.context import StreamInfo
        from actors.tasks.logs.program import LogsRun

        src = unit.sources[0]
        info = StreamInfo(unit.stream_id or src.uri, src.display, unit.part, unit.parts)
        info.inputs = tuple((s.uri, s.size) for s in unit.sources)
        label = f"{unit.key} ({len(unit.sources)} files)" if unit.key else src.display
        if unit.key:
            info.source_uri = ", ".join(s.display for s in unit.sources)[:2000]
        host = unit.key or posixpath.basename(src.uri.split("#", 1)[0])

        def program(ctx: TaskContext) -> Program[None]:
            run = LogsRun(ctx, self.settings, label, host, self.history())
            return run.run(self._lines(unit, lines, meter))

        yield Stream(info, program)

    def _lines(self, unit: StreamTask, lines: list[str] | None, meter: Meter | None = None) -> LineOpener:
        """The stream's lines, as a source that opens at a position (see ``LineOpener``)."""
        if lines is not None:  # grouped by a key in each line: the driver's shuffle sorted them already
            if unit.error is not None:
                raise InputError(*unit.error)
            grouped = lines

            def from_list(start: Position, damage: Damage | None) -> PositionedLines:
                first = int(start or 0)
                done = sum(len(line) + 1 for line in grouped[:first])  # progress: bytes of lines read
                for i in range(first, len(grouped)):
                    done += len(grouped[i]) + 1
                    if meter is not None and i % 4096 == 4095:
                        meter.at("lines", done)
                    yield i, grouped[i]
                if meter is not None:
                    meter.at("lines", done)

            return from_list
        opts = self.read_options()

        def opener(src: SourceFile, byte_range: tuple[int, int] | None = None) -> LineOpener:
            def read(start: Position, damage: Damage | None) -> PositionedLines:
                return iter_log_lines_at(
                    src, self.storage, opts, byte_range, start=start, damage=damage, meter=meter
                )

            return read

        if len(unit.sources) == 1:
            return opener(unit.sources[0], unit.byte_range)
        openers = [opener(s) for s in unit.sources]

        from actors.tasks.logs.grouping import merge_in_time_order

        def merged(start: Position, damage: Damage | None) -> PositionedLines:
            return merge_in_time_order(openers, self.settings.parser, start, damage)

        return merged
