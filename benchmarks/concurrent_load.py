"""odebench under a concurrent CPU load: the same small `odebench run` alone and while another torch
process (a second copy of it, on all cores, as a typical other job) keeps the machine busy.

Thread policies of the measured process:
  all-cores   ODEBENCH_THREADS=<cores>: every core, as odebench did before it looked at the load
  auto        odebench's default: the idle cores when the command starts (odebench/threads.py)
Reported: median wall seconds over --repeats runs, and the slowdown under load relative to the same
policy alone, measured in this one process run. Run it on an otherwise quiet machine:

    python benchmarks/concurrent_load.py [--repeats 3] [--samples 64]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def workload(out: str, samples: int) -> list[str]:
    return [sys.executable, "-m", "odebench", "run", "--teacher", "digits", "--samples", str(samples),
            "--student", "ddim:4", "--student", "ref", "--curve-points", "0", "--floor-samples", "0",
            "--no-cache", "--out", out]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--samples", type=int, default=64)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ODEBENCH_THREADS")}
    base["HF_HUB_OFFLINE"] = "1"
    policies = {"all-cores": {"ODEBENCH_THREADS": str(cores)}, "auto": {}}
    with tempfile.TemporaryDirectory() as tmp:
        load_env = {**base, "ODEBENCH_THREADS": str(cores)}
        load_cmd = workload(os.path.join(tmp, "load"), args.samples * 4)
        rows = []
        for name, extra in policies.items():
            env = {**base, **extra}
            cmd = workload(os.path.join(tmp, name), args.samples)
            alone = [timed(cmd, env) for _ in range(args.repeats)]
            loaded = []
            for _ in range(args.repeats):
                load = subprocess.Popen(["bash", "-c", f"while true; do {' '.join(load_cmd)} >/dev/null 2>&1; done"],
                                        env=load_env, start_new_session=True)
                try:
                    time.sleep(8)  # the load is past its imports and computing
                    loaded.append(timed(cmd, env))
                finally:
                    os.killpg(load.pid, 15)
                    load.wait()
            rows.append((name, statistics.median(alone), statistics.median(loaded)))
    print(f"{cores} cores; workload: odebench run digits, {args.samples} samples, ddim:4 + ref, no cache; "
          f"load: the same run on {args.samples * 4} samples with {cores} threads, in a loop")
    print(f"{'policy':<10} {'alone s':>8} {'loaded s':>9} {'slowdown':>9}")
    for name, a, b in rows:
        print(f"{name:<10} {a:8.1f} {b:9.1f} {b / a:8.2f}x")
    (_, a0, b0), (_, a1, b1) = rows
    print(f"auto vs all-cores: alone {a1 / a0:.2f}x the time, under load {b1 / b0:.2f}x the time")


if __name__ == "__main__":
    main()
