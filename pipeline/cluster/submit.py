"""Running under ``ray job submit``: where a submitted driver stands, and what it refuses.

Contract:

* ``submitted_job()`` tells whether this process is the driver of a job that Ray's job API started
  (``ray job submit`` or ``JobSubmissionClient.submit_job``), from the job configuration Ray hands every
  such driver in ``RAY_JOB_CONFIG_JSON_ENV_VAR``: its submission id, and whether a ``working_dir`` was
  uploaded. Outside a submitted job it returns ``None``.
* A submitted driver runs in Ray's temporary copy of the uploaded working directory (inside the head's
  session folder, named after the package hash), or without one in the job supervisor's directory: never
  in the directory the job was submitted from, which may be on another machine. ``check_output_path``
  therefore refuses a relative local output there, with the fix (an absolute path or an ``s3://`` URI),
  instead of writing results where nobody looks and losing resume across submissions. Outside a submitted
  job relative paths keep meaning "relative to the current directory".
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from pipeline.storage import protocol_of

#: Set by Ray's job supervisor for the entrypoint of every submitted job (``ray._private.runtime_env``).
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


@dataclass(frozen=True)
class SubmittedJob:
    submission_id: str | None
    working_dir: str | None  # the uploaded package's URI (gcs://_ray_pkg_<hash>.zip), if any
    cwd: str


def submitted_job(environ: dict[str, str] | os._Environ[str] | None = None) -> SubmittedJob | None:
    env = os.environ if environ is None else environ
    raw = env.get(JOB_CONFIG_ENV)
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        data = {}
    runtime_env = data.get("runtime_env") or {}
    metadata = data.get("metadata") or {}
    return SubmittedJob(
        submission_id=metadata.get("job_submission_id"),
        working_dir=runtime_env.get("working_dir"),
        cwd=os.getcwd(),
    )


def check_output_path(path: str, job: SubmittedJob | None, field: str = "output.path") -> None:
    """Raise ``ValueError`` (naming the fix) for a relative local ``path`` in a submitted job."""
    if job is None or protocol_of(path) != "file":
        return
    local = path[len("file://") :] if path.startswith("file://") else path
    if os.path.isabs(os.path.expanduser(local)):
        return
    where = (
        f"Ray's temporary copy of the uploaded working directory ({job.cwd}), which is deleted with the "
        "Ray session and changes with every change to the code"
        if job.working_dir
        else f"the job supervisor's directory ({job.cwd}) on the head node"
    )
    name = os.path.normpath(local)
    raise ValueError(
        f"{field} {path!r} is relative, but this job (submission {job.submission_id or '?'}) was started by "
        f"`ray job submit` and runs in {where}, not where it was submitted from. Pass an absolute path "
        f'(on a single machine: --output "$PWD/{name}" on the submitting command line) or an s3:// URI '
        "(on a cluster)."
    )
