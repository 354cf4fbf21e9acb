"""The tasks, in an explicit registry, and ``JobConfig``: the shared settings plus one section per task.

Adding a task: one module here (a ``Task`` subclass with its settings, planning, program, rows and flags,
see ``actors.tasks.base``), one line in ``TASKS``, an entry point ``jobs/<job_name>.py`` and its tests.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, create_model, field_validator, model_validator

from actors.tasks.base import Stream, Task
from actors.tasks.logs.task import Logs
from actors.tasks.qa import QA
from actors.tasks.summarize import Summarize
from pipeline.config import BaseJobConfig

TASKS: dict[str, type[Task]] = {
    Summarize.name: Summarize,
    QA.name: QA,
    Logs.name: Logs,
}


class _TaskJobConfig(BaseJobConfig):
    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        if value not in TASKS:
            raise ValueError(f"unknown task {value!r}; choose one of {sorted(TASKS)}")
        return value

    @model_validator(mode="after")
    def _defaults(self) -> _TaskJobConfig:
        task = TASKS[self.task]
        if self.output.path is None:
            self.output.path = f"output/{task.job_name}"
        if not self.input.paths and task.needs_inputs(self):
            raise ValueError(
                f"input.paths is empty: pass --input PATH (a file, folder, glob or s3:// URI) for {self.task}"
                + task.inputs_hint
            )
        return self

    @property
    def job_name(self) -> str:
        return TASKS[self.task].job_name


def _section(settings: type[Any]) -> Any:
    doc = (settings.__doc__ or "").strip().split("\n")[0]
    return (settings, Field(default_factory=settings, description=doc.rstrip(".")))


#: ``BaseJobConfig`` + one section per registered task (``summarize:``, ``qa:``, ``logs:`` ...).
JobConfig = create_model(
    "JobConfig",
    __base__=_TaskJobConfig,
    __module__=__name__,
    __doc__="The single description of a run: shared settings plus one section per task.",
    **{name: _section(task.Settings) for name, task in TASKS.items()},
)


def make_task(cfg: BaseJobConfig, storage: Any = None) -> Task:
    """The task object of a job (what the driver is handed, and what each actor builds)."""
    return TASKS[cfg.task](cfg, storage)


__all__ = ["TASKS", "JobConfig", "Stream", "Task", "make_task"]
