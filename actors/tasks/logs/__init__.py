"""The logs task and its log analysis: formats, exact statistics, report text, path grouping and the line
shuffle. ``Logs`` (``task``) is what ``actors.tasks.TASKS`` registers."""
