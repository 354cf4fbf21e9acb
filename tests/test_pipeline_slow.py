"""The real main job on the embedded SmolLM2-135M-Instruct, as a user runs it, with a small token limit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def set_up():
    try:
        from longread.assets import default_model_dir, gguf_path, sample_books

        gguf_path()
        default_model_dir()
        books = sample_books()
    except (FileNotFoundError, RuntimeError) as exc:
        pytest.skip(f"embedded SmolLM2 or sample books not set up ({exc}); run scripts/setup.sh")
    return books


def test_main_job_summarizes_the_sample_books(set_up, tmp_path):
    out = tmp_path / "summaries"
    cmd = [sys.executable, "-m", "jobs.summarize_books", "--output", str(out), "--max-tokens", "600",
           "--segment-tokens", "300", "--set", "summarize.min_segment_tokens=100",
           "--set", "summarize.segment_max_new_tokens=24", "--set", "summarize.final_max_new_tokens=32",
           "--no-progress"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # A normal run is quiet: no error-level line (Ray's C++ "[... E pid tid]" or logging's ERROR).
    error_line = re.compile(r"^\[[^\]]* [EF] \d+ \d+\]|^\S+ \S+\s+(?:ERROR|CRITICAL)\s", re.M)
    assert not error_line.search(proc.stderr), proc.stderr
    assert f"Results: {out}" in proc.stdout and "Preview:" in proc.stdout
    assert "3 streams processed (3 ok, 0 errors)" in proc.stdout
    rows = pd.read_parquet(out)
    finals = rows[rows.row_kind == "final"]
    assert len(finals) == 3 and set(finals.stream_id.map(lambda s: Path(s).name)) == {p.name for p in set_up}
    assert (rows.model == "SmolLM2-135M-Instruct").all() and (rows.policy == "lacache").all()
    assert (finals.token_end == 600).all() and finals.truncated.all()
    assert rows.output_text.str.split().str.len().ge(3).all(), rows.output_text.tolist()
    assert (rows.cache_tokens <= 512).all()
