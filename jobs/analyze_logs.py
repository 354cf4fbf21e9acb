"""Analyze logs: per window of a log stream, an incident report by the model plus exact statistics.

    python -m jobs.analyze_logs --config jobs/configs/analyze_logs.yaml [flags]
    python -m jobs.analyze_logs --input 'logs/*.log.gz' --window-tokens 2048
    ray job submit --working-dir . -- python -m jobs.analyze_logs --config FILE.yaml

A stream is a file, or all files / lines sharing a key (``logs.group_by: path | line`` with
``logs.key_pattern``), in time order. docs/pipeline.md documents every setting and output column.
"""

from __future__ import annotations

import sys

from jobs.run import main

if __name__ == "__main__":
    sys.exit(main("logs"))
