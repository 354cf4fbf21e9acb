"""The Ray pipeline: corpora of books or logs become continuous streams, run on actors, saved as Parquet.

Modules, in the order data flows through them:

* ``pipeline.fs``       -- local paths and ``s3://`` through fsspec; credentials never logged.
* ``pipeline.sources``  -- input expansion (paths, globs, prefixes), format detection and incremental readers.
* ``pipeline.sharding`` -- stream descriptors (``StreamTask``), contiguous parts, chapters, log windows.
* ``pipeline.logstats`` -- exact log statistics without a model: timestamps, levels, message templates.
* ``pipeline.schema``   -- the one explicit pyarrow schema of every output row.
* ``pipeline.writer``   -- atomic per-stream Parquet parts and the resume check.
* ``pipeline.driver``   -- Ray Data scheduling over an actor pool, progress and metrics.

The actors that run the model live in ``actors/``; the command-line jobs and their config in ``jobs/``.
"""
