"""The distillation grid of a flow teacher: its own sampler's levels (odebench's default) vs Karras levels in t.

Trains CM and Direct CM MLP students on the analytic gmm-flow teacher with the same settings and seeds on both
grids of N = 100 intervals:
  flow-sampler  the teacher's FlowMatchEuler N-step levels (shift 1: linspace(1, 1/1000, N)), then t = 0
  karras        Karras rho = 7 levels in t from 1 to t_min (the grid before; half of them below t = 0.07)
and scores each 1-step and 2-step student against the converged reference (ode_mse@ref, 1024 samples). Errors only
(no timings), so the numbers do not depend on machine load.

    PYTHONPATH=. python benchmarks/flow_distill_grid.py [--steps 2000] [--seeds 2]   (~10 min on one CPU core)
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def karras_grid(teacher, n):
    from odebench.ode.grids import karras_sigmas
    from odebench.ode.paper_grid import DistillGrid

    sig = karras_sigmas(n + 1, teacher.sigma_min, teacher.sigma_max)
    return DistillGrid(sig, sig.clone(), "karras")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--samples", type=int, default=1024)
    args = ap.parse_args()

    import baselines.distill as distill
    from baselines.distill import DistillConfig
    from baselines.train import train_student
    from odebench.bench import RunConfig, run
    from odebench.ode.paper_grid import grid_for

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for grid_name, fn in (("flow-sampler", grid_for), ("karras", karras_grid)):
            distill.grid_for = fn
            for target in ("cm", "direct"):
                for seed in range(args.seeds):
                    out = Path(tmp) / f"{grid_name}-{target}-{seed}"
                    side = train_student(DistillConfig(target, steps=args.steps, seed=seed, checkpoint_every=args.steps), "gmm-flow", out)
                    res = run(RunConfig(teacher="gmm-flow", students=(str(side),), samples=args.samples, floor_samples=0,
                                        curve_points=0, ksteps=(2,), out=Path(tmp) / "runs" / out.name))
                    metrics = res[0].result["metrics"]
                    for k, key in ((1, "ode_mse@ref"), (2, "ode_mse@ref[k=2]")):
                        rows.append({"grid": grid_name, "target": target, "seed": seed, "k": k, "ode_mse@ref": metrics[key]["value"]})
                        print(json.dumps(rows[-1]), flush=True)
    print("\n| grid | target | K | ode_mse@ref (mean over seeds) |\n|---|---|---|---|")
    for grid_name in ("flow-sampler", "karras"):
        for target in ("cm", "direct"):
            for k in (1, 2):
                vals = [r["ode_mse@ref"] for r in rows if (r["grid"], r["target"], r["k"]) == (grid_name, target, k)]
                print(f"| {grid_name} | {target} | {k} | {sum(vals) / len(vals):.4g} |")


if __name__ == "__main__":
    main()
