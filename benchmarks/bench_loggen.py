"""How long the synthetic nightly logs take to write (``actors.tasks.logs.synth``).

    python benchmarks/bench_loggen.py [--size 1GB --hosts 8 --nights 3 --workers 2 --gzip --keep DIR]

Times ``generate`` (the import of the package, several seconds, is not counted), then prints wall and CPU
seconds (this process and its workers), tonight's and all nights' bytes and lines, seconds per GB and
lines per GB of tonight's size, the load average (the development box's 2 CPUs are shared: a busy box
slows the wall time, not the CPU time) and the peak memory. The output folder is removed unless
``--keep`` names one.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from actors.tasks.logs.synth import DEFAULT_FORMATS, generate, parse_size


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _peak_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="1GB")
    p.add_argument("--hosts", type=int, default=8)
    p.add_argument("--nights", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--formats", default=",".join(DEFAULT_FORMATS))
    p.add_argument("--prev-fraction", type=float, default=0.1)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--gzip", action="store_true")
    p.add_argument("--keep", default=None, help="write here and keep it (default: a temporary folder)")
    a = p.parse_args()
    out = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="loggen-"))
    load_before = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), _cpu()
    try:
        labels = generate(
            out,
            a.size,
            a.hosts,
            a.nights,
            a.seed,
            a.formats.split(","),
            prev_fraction=a.prev_fraction,
            gzip=a.gzip,
            workers=a.workers,
        )
        wall, cpu = time.perf_counter() - wall, _cpu() - cpu
    finally:
        if not a.keep:
            shutil.rmtree(out, ignore_errors=True)
    tonight = labels["nights"][-1]
    total_bytes = sum(n["bytes"] for n in labels["nights"])
    total_lines = sum(n["lines"] for n in labels["nights"])
    gb = tonight["bytes"] / 1e9
    print(
        f"size {a.size} (target {parse_size(a.size):,} B), {a.hosts} hosts, {a.nights} nights, "
        f"gzip={a.gzip}, workers={a.workers or 'auto'}\n"
        f"tonight: {tonight['bytes']:,} B ({tonight['bytes'] / parse_size(a.size) - 1:+.2%} of the target), "
        f"{tonight['lines']:,} lines; all nights: {total_bytes:,} B, {total_lines:,} lines\n"
        f"wall {wall:.1f} s, cpu {cpu:.1f} s -> {wall / gb:.1f} s per GB of tonight "
        f"({wall / (total_bytes / 1e9):.1f} s per GB written), {tonight['lines'] / gb:,.0f} lines per GB\n"
        f"load average: {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (2 CPUs); peak RSS "
        f"{_peak_mib(resource.RUSAGE_SELF):.0f} MiB here, {_peak_mib(resource.RUSAGE_CHILDREN):.0f} MiB "
        "in the largest worker"
    )


if __name__ == "__main__":
    main()
