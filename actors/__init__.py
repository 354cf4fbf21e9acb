"""Actors of the pipeline: the tasks and the ``StreamWorker`` that runs their stream programs.

``actors.tasks`` holds the task registry (``TASKS``: summarize, qa, logs; one module each) and the job
configuration built from it; ``actors.context`` is what a stream program sees; ``actors.stream_worker``
loads a model and cache policy once and processes whole streams. Everything here is plain Python,
importable and testable without Ray; the driver (``pipeline.job.driver``) is handed the worker and a task.
"""
