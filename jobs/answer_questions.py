"""Answer questions about long documents: stream each once, answer each question from a copy of the cache.

    python -m jobs.answer_questions --config jobs/configs/answer_questions.yaml [flags]   # the sample plays
    python -m jobs.answer_questions --input book.txt --question "Who is the narrator?"
    ray job submit --working-dir . -- python -m jobs.answer_questions --config FILE.yaml

Questions come from the records (``qa.question_column`` of JSONL/Parquet inputs), from ``qa.questions`` /
``--question`` (asked of every document), or from ``qa.questions_file``. The sample config asks the three
sample plays that set-up fetches the questions of ``jobs/configs/sample_questions.yaml`` (the first 4,000
tokens of each). docs/pipeline.md documents every setting and output column.
"""

from __future__ import annotations

import sys

from jobs.run import main

if __name__ == "__main__":
    sys.exit(main("qa"))
