"""The Ray pipeline: corpora of books or logs become continuous streams, run on actors, saved as Parquet.

Sub-packages by reason to change, each importing only those above it in this list (tests/test_layers.py):

* ``pipeline.storage``  -- local paths and ``s3://`` through fsspec; credentials never logged.
* ``pipeline.inputs``   -- ``sources`` (paths, globs, prefixes -> files; format detection; ``InputError``) and
  ``readers`` (lines of byte ranges and gzip; documents of text, JSONL, Parquet), incremental.
* ``pipeline.output``   -- ``schema`` (the one pyarrow schema of every row) and ``writer`` (Parquet parts,
  checkpoints, job records, reading results back).
* ``pipeline.config``   -- the settings sections every job shares (model, policy, input, output ...).
* ``pipeline.cluster``  -- Ray plumbing: start or join a cluster, size actors, the stop flag, metrics.
* ``pipeline.job``      -- the job: ``plan`` (stream descriptors), ``preflight`` (checks before Ray),
  ``driver`` (Ray Data scheduling, progress), ``report`` (what the run tells and records).

None knows the tasks: they live in ``actors.tasks`` (the log analysis with the logs task), the actors that
run the model in ``actors/``, the command-line jobs in ``jobs/``.
"""
