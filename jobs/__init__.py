"""Command-line jobs, ``python -m jobs.<name>``; the pipeline jobs share ``jobs.config``."""
