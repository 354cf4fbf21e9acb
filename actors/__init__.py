"""Actors of the pipeline: ``StreamWorker`` loads a model and cache policy once and processes whole streams.

Tasks: ``actors.summarize`` (progressive summaries), ``actors.qa`` (questions from copies of the cache
state) and ``actors.logs`` (incident reports per window with exact statistics). Everything here is plain
Python, importable and testable without Ray; the driver wraps ``StreamWorker`` in a Ray Data actor pool.
"""
