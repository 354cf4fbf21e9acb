"""Command-line jobs, ``python -m jobs.<name>``: the entry points of the pipeline (``jobs.run``) and their
configuration files (``jobs.config``, ``jobs/configs/``). Research experiments live in ``experiments/``."""
