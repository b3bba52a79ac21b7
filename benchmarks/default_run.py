"""Time the default `odebench run` cold (empty cache) and warm (second run), against a baseline
measured in the same process: the bare digits UNet forward on one reference batch (256 samples
with CFG, i.e. 512 UNet passes), so a busy machine shows up in the baseline too.

Run:  python benchmarks/default_run.py [--repeats 1] [--profile warm.prof] [--json out.json]

Each run is `python -m odebench run --out TMP --cache-dir TMP` in a subprocess (what a user waits
for, imports included). The verdict compares with issue 12's goals on the reference machine:
cold <= 120 s, warm <= 20 s. `--profile` also runs the warm run in-process under cProfile and
prints the 25 most expensive functions (cumulative), which is how the warm run's hot spots were found.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

GOAL_COLD, GOAL_WARM = 120.0, 20.0


def baseline_seconds(repeats: int = 5) -> float:
    """Median wall time of one bare UNet forward on a CFG batch of 256 (512 passes), float32."""
    from odebench.teachers import load_teacher

    teacher = load_teacher("digits")
    x = torch.randn(512, *teacher.shape)
    t = torch.full((512,), 500.0)
    labels = torch.arange(512) % 11
    times = []
    with torch.no_grad():
        teacher.unet(x, t, class_labels=labels)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            teacher.unet(x, t, class_labels=labels)
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def timed_run(root: Path, name: str) -> tuple[float, dict]:
    """Wall time of one default run, and its reference / floor seconds (from a result.json it wrote)."""
    env = {**os.environ, "ODEBENCH_CACHE": str(root / "cache")}
    out = root / name
    cmd = [sys.executable, "-m", "odebench", "run", "--out", str(out), "--cache-dir", str(root / "cache")]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    timings = json.loads(next(out.glob("*/result.json")).read_text())["timings"]
    return wall, {"reference_s": timings["reference_s"], "floor_s": timings.get("floor_s")}


def profile_warm(root: Path, out: str) -> None:
    import cProfile
    import pstats

    from odebench.bench import RunConfig, run

    prof = cProfile.Profile()
    prof.enable()
    run(RunConfig(out=root / "runs-prof", cache_dir=root / "cache"))
    prof.disable()
    prof.dump_stats(out)
    pstats.Stats(prof).sort_stats("cumulative").print_stats(25)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1, help="cold/warm pairs (each cold starts from an empty cache)")
    ap.add_argument("--profile", metavar="PATH", help="also profile one warm run in-process (cProfile stats to PATH)")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    base_before = baseline_seconds()
    pairs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="odebench-default-run-") as tmp:
            root = Path(tmp)
            cold, parts = timed_run(root, "cold")
            warm, _ = timed_run(root, "warm")
            pairs.append((cold, warm, parts))
            if args.profile:
                profile_warm(root, args.profile)
    base_after = baseline_seconds()
    base = (base_before + base_after) / 2
    cold = min(p[0] for p in pairs)
    warm = min(p[1] for p in pairs)
    print(f"baseline: bare UNet forward, 512 passes: {base * 1e3:.0f} ms (before {base_before * 1e3:.0f}, after {base_after * 1e3:.0f})")
    # every pair, not only the best: this machine's speed drifts by ~10% between runs
    for i, (c, w, parts) in enumerate(pairs):
        floor = "" if parts["floor_s"] is None else (
            f"; reference {parts['reference_s']:.1f} s, its floor's re-solves {parts['floor_s']:.1f} s = "
            f"{100 * parts['floor_s'] / parts['reference_s']:.0f}%")
        print(f"pair {i + 1}: cold {c:.1f} s, warm {w:.1f} s{floor}")
    # the verdicts go by the worst pair
    worst_cold, worst_warm = max(p[0] for p in pairs), max(p[1] for p in pairs)
    print(f"cold default run: best {cold:.1f} s = {cold / base:.0f} baseline units, worst {worst_cold:.1f} s "
          f"(goal <= {GOAL_COLD:.0f} s: {'met' if worst_cold <= GOAL_COLD else 'not met'})")
    print(f"warm default run: best {warm:.1f} s = {warm / base:.0f} baseline units, worst {worst_warm:.1f} s "
          f"(goal <= {GOAL_WARM:.0f} s: {'met' if worst_warm <= GOAL_WARM else 'not met'})")
    ratios = [p[2]["floor_s"] / p[2]["reference_s"] for p in pairs if p[2]["floor_s"] is not None]
    if ratios:
        print(f"floor / reference: worst {100 * max(ratios):.0f}% (goal <= 25%: {'met' if max(ratios) <= 0.25 else 'not met'})")
    if args.json:
        Path(args.json).write_text(json.dumps({"baseline_s": base, "cold_s": cold, "warm_s": warm, "pairs": pairs, "cold_parts": pairs[0][2],
                                               "cold_units": cold / base, "warm_units": warm / base}, indent=2))


if __name__ == "__main__":
    main()
