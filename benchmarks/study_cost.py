"""Project the compute of an `odebench study` from a measured per-step training cost.

Trains each method for a few steps with the study's training settings (the one distillation loop, in
a scratch directory), measures seconds per optimiser step after a warm-up step, and projects the
study: one training run per method and seed reaches the largest budget (every smaller budget is a
snapshot on the way), so training costs sum over methods of seeds x max(steps) x s/step. Evaluation
is projected from a measured `odebench run` of one student at the study's evaluation settings.

    python benchmarks/study_cost.py --teacher digits --steps 250,1000,1600 --seeds 3
    python benchmarks/study_cost.py --teacher gmm --steps 500,2000,8000 --seeds 3

Run it on a quiet machine: the numbers are times.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default="gmm")
    ap.add_argument("--methods", default="cm,direct")
    ap.add_argument("--steps", default="500,2000,8000")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--measure-steps", type=int, default=10, help="timed optimiser steps per method (after one warm-up step)")
    args = ap.parse_args()

    from baselines.distill import DistillConfig
    from baselines.train import train_student
    from odebench.bench import RunConfig, run
    from odebench.study.plan import StudyConfig, plan

    steps = tuple(int(s) for s in args.steps.split(","))
    methods = tuple(args.methods.split(","))
    config = StudyConfig(teacher=args.teacher, methods=methods, steps=steps, seeds=tuple(range(args.seeds)))
    points, _ = plan(config)
    per_step, last_side = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        for m in methods:
            p = next(p for p in points if p.method == m)
            stamps = []
            cfg = DistillConfig(**{**p.identity["train"], "steps": args.measure_steps + 1,
                                   "checkpoint_every": args.measure_steps + 1})
            last_side = train_student(cfg, args.teacher, Path(tmp) / m, hidden=config.hidden, depth=config.depth,
                                      progress=lambda step, loss, rate: stamps.append(time.perf_counter()))
            per_step[m] = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
        t0 = time.perf_counter()
        run(RunConfig(teacher=args.teacher, students=(str(last_side),), out=Path(tmp) / "runs", cache_dir=Path(tmp) / "cache"))
        eval_cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        run(RunConfig(teacher=args.teacher, students=(str(last_side),), out=Path(tmp) / "runs", cache_dir=Path(tmp) / "cache"))
        eval_warm = time.perf_counter() - t0
    train_s = {m: args.seeds * max(steps) * s for m, s in per_step.items()}
    eval_s = eval_cold + (len(points) - 1) * eval_warm
    print(json.dumps({"teacher": args.teacher, "steps": steps, "seeds": args.seeds, "points": len(points),
                      "s_per_step": per_step, "train_s": train_s, "eval_cold_s": eval_cold, "eval_warm_s": eval_warm,
                      "projected_total_min": (sum(train_s.values()) + eval_s) / 60}, indent=1))


if __name__ == "__main__":
    main()
