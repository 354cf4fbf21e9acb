"""Command-line jobs, ``python -m jobs.<name>``: the entry points of the pipeline (``jobs.run``) and their
configuration files (``jobs.config``, ``jobs/configs/``). Research experiments live in ``experiments/``.

Importing the package first checks that this interpreter has the project's dependencies: under
``ray job submit`` the entrypoint's bare ``python`` is whatever the Ray head's ``PATH`` finds, and a Python
without them would otherwise fail with a bare ``No module named 'torch'``.
"""

import importlib.util as _util
import sys as _sys

_missing = [name for name in ("torch", "transformers", "ray", "pydantic") if _util.find_spec(name) is None]
if _missing:
    raise SystemExit(
        f"error: {_sys.executable} lacks {', '.join(_missing)}: it is not the project's Python. Run jobs "
        "with .venv/bin/python; for `ray job submit`, start the head with ./scripts/ray_head.sh (it puts "
        ".venv/bin first on the head's PATH, so a job's `python` is the project's)."
    )
