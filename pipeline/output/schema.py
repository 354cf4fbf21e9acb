"""The output schema: one explicit pyarrow schema for every row of every task, defined here only.

Row kinds: ``segment`` (summary of one chapter or N-token segment), ``final`` (summary of the whole
stream), ``answer`` (one question), ``window`` (one log window's report and statistics), ``summary`` (a
log stream's night: its numbers and report) and ``error`` (the stream failed; ``error_kind`` and
``error`` say why and how to fix it). docs/pipeline.md documents
every column; ``tests/test_pipeline_writer.py`` checks that the table there matches this schema.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = "2"  # 2: row_index
ROW_KINDS = ("segment", "final", "answer", "window", "summary", "error")

_TEMPLATE = pa.struct([pa.field("template", pa.string()), pa.field("count", pa.int64())])
_NOTABLE = pa.struct(
    [
        pa.field("template", pa.string()),
        pa.field("count", pa.int64()),
        pa.field("alerts", pa.int64()),
        pa.field("level", pa.string()),
        pa.field("first", pa.string()),
        pa.field("last", pa.string()),
    ]
)
_BURST = pa.struct(
    [
        pa.field("start", pa.string()),
        pa.field("end", pa.string()),
        pa.field("lines", pa.int64()),
        pa.field("alerts", pa.int64()),
        pa.field("rate_ratio", pa.float64()),
    ]
)


_WINDOW_LINES = pa.struct(
    [pa.field("start", pa.float64()), pa.field("lines", pa.int64()), pa.field("seconds", pa.float64())]
)
_SILENCE = pa.struct(
    [pa.field("start", pa.string()), pa.field("end", pa.string()), pa.field("seconds", pa.float64())]
)


def _f(name: str, type_: pa.DataType, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable)


SCHEMA = pa.schema(
    [
        # identity
        _f("job_id", pa.string(), False),
        _f("stream_id", pa.string(), False),
        _f("source_uri", pa.string(), False),
        _f("task", pa.string(), False),
        _f("row_kind", pa.string(), False),
        _f("segment_index", pa.int32()),
        _f("segment_title", pa.string()),
        _f("token_start", pa.int64()),
        _f("token_end", pa.int64()),
        _f("part_index", pa.int32(), False),
        _f("part_count", pa.int32(), False),
        _f("record_id", pa.string()),
        _f("row_index", pa.int64()),  # the row's place in its stream: 0, 1, ... (null in files before 2)
        # what the model was asked and wrote
        _f("question", pa.string()),
        _f("output_text", pa.string()),
        _f("stop_reason", pa.string()),
        # how
        _f("model", pa.string(), False),
        _f("policy", pa.string(), False),
        _f("policy_params", pa.string(), False),
        _f("budget", pa.int32()),
        _f("stride", pa.int32(), False),
        # stream and cache state when the row was produced
        _f("tokens_streamed", pa.int64()),
        _f("truncated", pa.bool_()),
        _f("cache_tokens", pa.int32()),
        _f("cache_bytes", pa.int64()),
        _f("cache_oldest_position", pa.int64()),
        _f("policy_stats", pa.string()),
        # exact log statistics (window rows only)
        _f("log_lines", pa.int64()),
        _f("log_levels", pa.map_(pa.string(), pa.int64())),
        _f("log_top_templates", pa.list_(_TEMPLATE)),
        _f("log_first_timestamp", pa.string()),
        _f("log_last_timestamp", pa.string()),
        _f("log_alert_lines", pa.int64()),
        _f("log_out_of_order_lines", pa.int64()),
        _f("log_format", pa.string()),
        _f("log_notable_templates", pa.list_(_NOTABLE)),
        _f("log_bursts", pa.list_(_BURST)),
        _f("log_alert_bursts", pa.list_(_BURST)),
        _f("log_host", pa.string()),
        _f("log_new_templates", pa.list_(pa.string())),
        _f("log_new_host", pa.bool_()),
        _f("log_templates", pa.list_(_TEMPLATE)),
        _f("log_silences", pa.list_(_SILENCE)),
        _f("log_rate_ratio", pa.float64()),
        _f("log_busiest_windows", pa.list_(pa.int32())),
        _f("log_window_lines", pa.list_(_WINDOW_LINES)),
        _f("log_report", pa.string()),
        # timings
        _f("feed_seconds", pa.float64()),
        _f("generate_seconds", pa.float64()),
        _f("stream_seconds", pa.float64()),
        _f("tokens_per_second", pa.float64()),
        # failure
        _f("error_kind", pa.string()),
        _f("error", pa.string()),
        # provenance
        _f("worker", pa.string()),
        _f("created_at", pa.timestamp("us", tz="UTC"), False),
    ],
    metadata={"longread.schema_version": SCHEMA_VERSION},
)
COLUMNS = tuple(SCHEMA.names)
REQUIRED = tuple(f.name for f in SCHEMA if not f.nullable)


def rows_to_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Rows (dicts keyed by column) as a table of exactly ``SCHEMA``; unknown keys are bugs: they raise."""
    rows = list(rows)
    for row in rows:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise KeyError(f"columns not in the output schema: {sorted(unknown)}")
        if row.get("row_kind") not in ROW_KINDS:
            raise ValueError(f"row_kind {row.get('row_kind')!r} is not one of {ROW_KINDS}")
        missing = [c for c in REQUIRED if row.get(c) is None]
        if missing:  # pyarrow does not enforce nullable=False on conversion: check it here
            raise ValueError(f"required columns missing from a row: {missing}")
    return pa.Table.from_pylist([{c: row.get(c) for c in COLUMNS} for row in rows], schema=SCHEMA)
