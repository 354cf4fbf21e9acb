"""What earlier nights saw: the templates and hosts in the nights' outputs beside this one's.

Contract: a nightly job writes each night to its own folder under one prefix (``.../incidents/2026-12-03/``);
each night's ``summary`` rows (one per host) list every template the host logged (``log_templates``).
``History.load(output, nights)`` reads the summary rows of the ``nights`` folders next to ``output`` whose
names sort before it (the nights before; by default the output's parent is the prefix, or
``logs.history_prefix``), and answers which hosts and which of a host's templates were seen then. A
folder without summary rows (another job's, or a night that failed) is skipped; none at all is an empty
history (the first night: everything is new). Only the summary rows' three columns are read.
"""

from __future__ import annotations

import logging
import posixpath
import statistics
from dataclasses import dataclass, field

import pyarrow.dataset as ds

from pipeline.storage import Storage, display_uri, get_fs, protocol_of

log = logging.getLogger(__name__)

#: An earlier night's window is a baseline for tonight's rate only with at least this many lines.
MIN_BASELINE_LINES = 30


@dataclass
class History:
    nights: list[str] = field(default_factory=list)  # the folders read, oldest first
    templates: dict[str, set[str]] = field(default_factory=dict)  # host -> templates seen
    #: host -> window start (seconds of the day) -> its (lines, seconds), one per night
    rates: dict[str, dict[int, list[tuple[int, float]]]] = field(default_factory=dict)

    @property
    def hosts(self) -> set[str]:
        return set(self.templates)

    def new_templates(self, host: str, templates: list[str]) -> list[str]:
        """Of ``templates``, those the host never logged in the nights read (all of them for a new host)."""
        seen = self.templates.get(host, set())
        return [t for t in templates if t not in seen]

    def is_new_host(self, host: str) -> bool:
        return bool(self.nights) and host not in self.templates

    def rate(self, host: str, day: float) -> float | None:
        """The host's usual lines per second in the window that starts ``day`` seconds into the day (the
        median of the earlier nights'), or None when no earlier night had that window with at least
        ``MIN_BASELINE_LINES`` lines (fewer make a baseline of noise)."""
        windows = self.rates.get(host, {}).get(int(day))
        if not windows or statistics.median(n for n, _ in windows) < MIN_BASELINE_LINES:
            return None
        return statistics.median(n / s for n, s in windows)

    @classmethod
    def load(
        cls, output: str, nights: int, prefix: str | None = None, storage: Storage | None = None
    ) -> History:
        if nights <= 0:
            return cls()
        fs, path = get_fs(output, storage)
        path = path.rstrip("/")
        parent = prefix.rstrip("/") if prefix else posixpath.dirname(path)
        parent_path = get_fs(parent, storage)[1].rstrip("/") if prefix else parent
        here = posixpath.basename(path)
        try:
            folders = sorted(
                posixpath.basename(p.rstrip("/"))
                for p in fs.ls(parent_path, detail=False)
                if fs.isdir(p) and posixpath.basename(p.rstrip("/")) < here
            )
        except FileNotFoundError:
            folders = []
        history = cls()
        for name in folders[-nights:]:
            history._read(fs, f"{parent_path}/{name}", protocol_of(output))
        log.info("history: %d earlier nights under %s, %d hosts", len(history.nights), display_uri(parent),
                 len(history.templates))  # fmt: skip
        return history

    def _read(self, fs: object, folder: str, protocol: str) -> None:
        files = [f for f in fs.find(folder, maxdepth=1) if f.endswith(".parquet")]  # type: ignore[attr-defined]
        if not files:
            return
        try:
            table = ds.dataset(files, format="parquet", filesystem=fs).to_table(
                columns=["row_kind", "log_host", "log_templates", "log_window_lines"],
                filter=ds.field("row_kind") == "summary",
            )
        except Exception as exc:  # another job's folder, or an older schema: not a night of this job
            log.info("history: %s skipped (%s)", folder, exc)
            return
        if not table.num_rows:
            return
        self.nights.append(folder if protocol == "file" else f"{protocol}://{folder}")
        hosts, lists = table.column("log_host").to_pylist(), table.column("log_templates").to_pylist()
        for host, templates in zip(hosts, lists):
            self.templates.setdefault(str(host), set()).update(t["template"] for t in templates or [])
        for host, windows in zip(hosts, table.column("log_window_lines").to_pylist()):
            per_day = self.rates.setdefault(str(host), {})
            for w in windows or []:
                if w["seconds"]:
                    per_day.setdefault(int(w["start"]), []).append((int(w["lines"]), float(w["seconds"])))
