"""How often a process aborts at exit right after reading Parquet, by how the bytes reach pyarrow.

    python benchmarks/bench_parquet_exit.py [--runs 200] [--files 30] [--modes ...] [--jobs 2] [--out F.json]

Writes ``--files`` small Parquet parts with the pipeline's writer, then starts ``--runs`` fresh Python
processes per mode; each reads every part and exits at once, as the driver does after its preview:

* ``file_object``: ``pq.read_table(io.BytesIO(data))`` (what the driver's preview and ``PartWriter.read``
  did before);
* ``read_table_buffer``: ``pq.read_table(pa.BufferReader(data), use_threads=False)`` (a buffer over the
  Python ``bytes``, still a dataset scan);
* ``dataset_fsspec``: ``pyarrow.dataset.dataset(paths, filesystem=<fsspec local>).to_table()`` (pyarrow
  reads through fsspec's Python file objects on its own threads);
* ``read_part``: ``pipeline.output.writer.read_part(data)`` (synchronous ``ParquetFile.read`` on an
  Arrow-owned copy).

A run fails when the process does not exit 0 (134 = SIGABRT: "terminate called without an active
exception"). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = ("file_object", "read_table_buffer", "dataset_fsspec", "read_part")
CHILD = """
import io, sys
sys.path.insert(0, {root!r})
import fsspec, pyarrow as pa, pyarrow.dataset as ds, pyarrow.parquet as pq
from pipeline.output.writer import read_part
mode, paths = sys.argv[1], sys.argv[2:]
if mode == "dataset_fsspec":
    assert ds.dataset(paths, format="parquet", filesystem=fsspec.filesystem("file")).to_table().num_rows
for path in paths if mode != "dataset_fsspec" else []:
    data = open(path, "rb").read()
    if mode == "file_object":
        table = pq.read_table(io.BytesIO(data))
    elif mode == "read_table_buffer":
        table = pq.read_table(pa.BufferReader(data), use_threads=False)
    else:
        table = read_part(data)
    assert table.num_rows > 0
"""


def write_parts(folder: Path, files: int) -> list[str]:
    from datetime import UTC, datetime

    from pipeline.output.writer import PartWriter

    writer = PartWriter(str(folder))
    writer.prepare()
    paths = []
    for i in range(files):
        rows = [
            {
                "job_id": "bench",
                "stream_id": f"stream-{i}",
                "source_uri": f"/books/{i}.txt",
                "task": "summarize",
                "row_kind": "segment",
                "segment_index": k,
                "part_index": 0,
                "part_count": 1,
                "model": "m",
                "policy": "lacache",
                "policy_params": "{}",
                "stride": 256,
                "output_text": "A summary sentence. " * 20,
                "created_at": datetime.now(UTC),
            }
            for k in range(50)
        ]
        paths.append(writer.write(f"stream-{i}", rows))
    return paths


def run_modes(args: argparse.Namespace, paths: list[str]) -> list[dict[str, Any]]:
    code = CHILD.format(root=str(ROOT))
    results: list[dict[str, Any]] = []
    for mode in args.modes:
        codes: Counter[int] = Counter()
        messages: Counter[str] = Counter()
        t0 = time.perf_counter()

        def one(mode: str = mode) -> tuple[int, list[str]]:
            cmd = [sys.executable, "-c", code, mode, *paths]
            proc = subprocess.run(cmd, capture_output=True, timeout=120)
            return proc.returncode, proc.stderr.decode(errors="replace").strip().splitlines()[:1]

        with ThreadPoolExecutor(args.jobs) as pool:
            for returncode, first_line in pool.map(lambda _: one(), range(args.runs)):
                codes[returncode] += 1
                if returncode:
                    messages[first_line[0] if first_line else "(no output)"] += 1
        failed = args.runs - codes[0]
        results.append(
            {
                "mode": mode,
                "runs": args.runs,
                "failed": failed,
                "exit_codes": dict(codes),
                "messages": dict(messages),
                "seconds": time.perf_counter() - t0,
            }
        )
        print(f"  {mode}: {failed}/{args.runs} failed {dict(codes)}", file=sys.stderr, flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--files", type=int, default=30)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--jobs", type=int, default=2, help="processes at a time")
    parser.add_argument("--out", type=Path, default=Path("results/bench_parquet_exit.json"))
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-parquet-exit-"))
    try:
        results = run_modes(args, write_parts(folder, args.files))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print("| how pyarrow gets the bytes | runs | failed exits | exit codes | first stderr line of failures |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['mode']} | {r['runs']} | {r['failed']} | {r['exit_codes']} | {r['messages'] or ''} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"files": args.files, "results": results}, indent=1))
    print(f"\nJSON: {args.out}")


if __name__ == "__main__":
    main()
