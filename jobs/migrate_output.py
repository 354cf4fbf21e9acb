"""Rewrite an output folder of the earlier layout (one Parquet file per stream) into the current one.

    python -m jobs.migrate_output OUTPUT [--rows-per-part N] [--endpoint-url URL] [--region R]

Each ``part-<key>.parquet`` / ``err-<key>.parquet`` file becomes rows of parts of about ``--rows-per-part``
rows (numbered by ``row_index``, their streams ended in the parts' manifests), and is deleted once its
part is committed. Run it while no job writes to the folder; interrupted, run it again (it finishes what
it started and rewrites nothing twice). A job run on an unmigrated folder resumes correctly too: the
earlier layout's streams count as done (``pipeline.output.manifest``), so migrating is about readers:
fewer files, and one schema (``row_index``) for pandas and DuckDB.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.config import StorageSettings
from pipeline.output.parts import COMMIT_ROWS, migrate_layout
from pipeline.output.writer import OutputError, PartWriter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.migrate_output", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("output", help="the output folder or s3:// prefix to rewrite")
    parser.add_argument(
        "--rows-per-part", type=int, default=COMMIT_ROWS, help=f"rows per part (default {COMMIT_ROWS:,})"
    )
    parser.add_argument("--endpoint-url", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL)")
    parser.add_argument("--region", help="S3 region (default: AWS_REGION)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    storage = StorageSettings(endpoint_url=args.endpoint_url, region=args.region).to_storage()
    try:
        files, parts = migrate_layout(PartWriter(args.output, storage), args.rows_per_part)
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    print(f"{args.output}: {files} files of the earlier layout rewritten into {parts} parts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
