"""The Ray pipeline: corpora of books or logs become continuous streams, run on actors, saved as Parquet.

Modules, in the order data flows through them (none knows the tasks: they live in ``actors.tasks``):

* ``pipeline.config``   -- the settings sections every job shares (model, policy, input, output ...).
* ``pipeline.fs``       -- local paths and ``s3://`` through fsspec; credentials never logged.
* ``pipeline.sources``  -- input expansion (paths, globs, prefixes), format detection, ``InputError``.
* ``pipeline.readers``  -- readers: lines (byte ranges, gzip) and documents (text, JSONL, Parquet).
* ``pipeline.sharding`` -- stream descriptors (``StreamTask``), contiguous parts, path keys, chapters.
* ``pipeline.shuffle``  -- streams keyed by a match in each line, through a Ray Data groupby.
* ``pipeline.logstats`` -- exact log statistics without a model: timestamps, levels, message templates.
* ``pipeline.schema``   -- the one explicit pyarrow schema of every output row.
* ``pipeline.writer``   -- atomic per-stream Parquet parts, the resume check, reading results back.
* ``pipeline.driver``   -- Ray Data scheduling over an actor pool and progress, with ``cluster`` (Ray
  start-up, actor sizing), ``preflight`` (checks before Ray), ``metrics`` and ``report``.

The actors that run the model live in ``actors/``; the command-line jobs in ``jobs/``.
"""
