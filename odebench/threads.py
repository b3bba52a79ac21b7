"""CPU threads for torch, chosen from the cores this process can actually get.

Two torch processes with 2 OpenMP threads each on 2 cores slow each other 5-10x: every parallel
region ends in a barrier that waits for a thread the kernel has descheduled to run the other
process (benchmarks/concurrent_load.py measures it). odebench therefore takes as many threads as
there are idle cores when a computing command starts: the cores in its affinity mask and cgroup
quota, less the ones other processes kept busy over a short sample of /proc/stat. `--threads N` or
ODEBENCH_THREADS=N overrides; OMP_NUM_THREADS set by the user is respected.
"""
from __future__ import annotations

import math
import os
import sys
import time

from odebench.errors import OdebenchError

ENV = "ODEBENCH_THREADS"
SAMPLE_S = 0.1  # long enough to see a busy core, short enough not to be felt


def available_cores() -> int:
    """Cores this process may run on: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies summed over all CPUs, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(sample_s: float = SAMPLE_S) -> float:
    """How many cores other processes keep busy, over `sample_s` seconds (this process sleeps meanwhile)."""
    a = _cpu_times()
    time.sleep(sample_s)
    b = _cpu_times()
    if a is None or b is None or b[1] <= a[1]:
        return 0.0
    cpus = os.cpu_count() or 1
    return cpus * (b[0] - a[0]) / (b[1] - a[1])


def auto_threads() -> int:
    """Idle cores available to this process, at least one."""
    return max(1, available_cores() - round(busy_cores()))


def parse_threads(value: str | int | None) -> int | None:
    if value is None or value == "" or value == "auto":
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise OdebenchError(f"--threads / {ENV} must be a positive integer or 'auto', got {value!r}") from None
    if n < 1:
        raise OdebenchError(f"--threads / {ENV} must be a positive integer or 'auto', got {value!r}")
    return n


def configure(threads: int | None = None) -> int:
    """Set torch's intra-op threads for this process (before or after torch loads); returns the count.
    Precedence: `threads`, then ODEBENCH_THREADS, then a user's OMP_NUM_THREADS, then auto_threads()."""
    n = threads if threads is not None else parse_threads(os.environ.get(ENV))
    if n is None and os.environ.get("OMP_NUM_THREADS"):
        return parse_threads(os.environ["OMP_NUM_THREADS"]) or 1
    if n is None:
        n = auto_threads()
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(n)
    else:  # read once by OpenMP and MKL when torch loads
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(n)
    return n
