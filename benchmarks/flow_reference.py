"""Flow teachers: reference error vs NFE (analytic flow teachers) and ODE error vs K per flow scheduler row (tiny SD3).

Counts and errors only (no timings), so the numbers do not depend on machine load:
  1. gauss-flow (one Gaussian, exact endpoint in closed form) and gmm64-flow (dopri5 in log t at rtol 1e-10 as
     truth): relative endpoint error and NFE per sample of the reference for each method, integration
     variable and tolerance. For a flow teacher (sigma := t) the variables are log t ("log-sigma" time),
     plain t ("sigma") and lambda = 1/t with the state y = x_t / t ("lambda", the default with bosh3 at
     3e-4 since issue 12; dopri5 in log t at 1e-4 was the default before).
  2. A tiny random SD3 pipeline (tests/flow_tiny.py): the reference settings as in 1 (float32 network and state)
     against a float64-state solve at 1e-7, and the ODE error (RMS against a converged reference, relative) of
     each flow scheduler row at K = 1, 2, 4, 8, 16.

    PYTHONPATH=. python benchmarks/flow_reference.py [--sd3]
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from odebench.ode.spec import DEFAULT_METHOD, DEFAULT_RTOL, DEFAULT_TIME  # noqa: E402

VARIABLE = {"log-sigma": "log t", "sigma": "t", "lambda": "lambda = 1/t"}
# (method, time variable, tolerances)
GRID = (("dopri5", "log-sigma", (1e-3, 1e-4, 1e-5, 1e-6, 1e-7)), ("dopri5", "sigma", (1e-3, 1e-4, 1e-5, 1e-6, 1e-7)),
        ("dopri5", "lambda", (1e-3, 1e-4, 1e-5, 1e-6)), ("bosh3", "lambda", (1e-3, 3e-4, 1e-4, 1e-5)),
        ("bosh3", "log-sigma", (3e-4, 1e-4)))


def rel(a, b) -> float:
    return float(((a - b).pow(2).sum() / b.pow(2).sum()).sqrt())


def reference_table() -> list[tuple]:
    from odebench.ode.noise import NoiseBank
    from odebench.ode.reference import solve_reference
    from odebench.ode.spec import SolverSpec
    from odebench.teachers import load_teacher
    from odebench.teachers.gmm import GMMFlowTeacher

    mu, s, t_min = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64), 0.3, 0.002
    gauss = GMMFlowTeacher(mu, [s], sigma_min=t_min, sigma_max=1.0, name="gauss-flow")
    z = NoiseBank(0, (3,)).draw(range(256), dtype=torch.float64)
    x_min = (1 - t_min) * mu + math.sqrt((1 - t_min) ** 2 * s ** 2 + t_min ** 2) * z
    truth = {"gauss-flow": mu + (1 - t_min) * s ** 2 / ((1 - t_min) ** 2 * s ** 2 + t_min ** 2) * (x_min - (1 - t_min) * mu)}
    m64 = load_teacher("gmm64-flow")
    z64 = NoiseBank(0, (64,)).draw(range(256), dtype=torch.float64)
    truth["gmm64-flow"] = solve_reference(m64, z64, None, SolverSpec(method="dopri5", rtol=1e-10, atol=1e-10, time="log-sigma",
                                                                      dtype="float64")).x0
    rows = []
    for name, teacher, start in (("gauss-flow", gauss, z), ("gmm64-flow", m64, z64)):
        for method, time, tols in GRID:
            for tol in tols:
                sol = solve_reference(teacher, start, None, SolverSpec(method=method, rtol=tol, atol=tol, dtype="float64", time=time))
                default = " (default)" if (method, time, tol) == (DEFAULT_METHOD, DEFAULT_TIME, DEFAULT_RTOL) else ""
                rows.append((name, f"{method}, {VARIABLE[time]}{default}", tol, sol.nfe, rel(sol.x0, truth[name])))
        for k in (10, 100):  # FlowMatchEuler on the shift-free grid ending at t_min, for scale
            from odebench.ode.steps import solve

            grid = torch.linspace(1.0, teacher.sigma_min, k, dtype=torch.float64)
            rows.append((name, f"euler K={k}", None, k, rel(solve(teacher, start, grid, None, "euler"), truth[name])))
    return rows


def sd3_rows_table() -> list[tuple]:
    from flow_tiny import T5_LENGTH, build_tiny_sd3
    from sdxl_tiny import CAPTIONS

    from odebench.ode.noise import NoiseBank, SampleNoise
    from odebench.ode.reference import solve_reference
    from odebench.ode.spec import SolverSpec
    from odebench.students.kinds import load_student
    from odebench.teachers import load_teacher

    with tempfile.TemporaryDirectory() as d:
        teacher = load_teacher(str(build_tiny_sd3(Path(d) / "sd3")), device="cpu", height=16, width=16,
                               max_sequence_length=T5_LENGTH)
        teacher.set_prompts(CAPTIONS)
        n = 8
        noise = SampleNoise(NoiseBank(0, teacher.shape), range(n))
        cond = torch.arange(n) % len(CAPTIONS)
        ref = solve_reference(teacher, noise(0), cond, SolverSpec(method="dopri5", rtol=1e-6, atol=1e-6, time="log-sigma",
                                                                  dtype="float32")).x0
        rows = []
        for spec in ("flow-euler", "flow-heun", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler"):
            for k in (1, 2, 4, 8, 16):
                try:
                    row = load_student(f"{spec}:{k}", teacher)[0]
                except Exception as e:  # e.g. a multistep solver's minimum step count
                    rows.append((spec, k, None, f"n/a ({e})"))
                    continue
                out = row.sample(noise(0), cond, noise)
                rows.append((spec, k, row.nfe(), float((out - ref).pow(2).mean()), rel(out, ref)))
    return rows


def sd3_reference_table() -> list[tuple]:
    """The reference settings on the tiny SD3 (float32 network and state, CFG w = 7, 8 samples): NFE per sample
    and relative endpoint error against dopri5 in log t at 1e-7 with a float64 state."""
    from flow_tiny import T5_LENGTH, build_tiny_sd3
    from sdxl_tiny import CAPTIONS

    from odebench.ode.noise import NoiseBank, SampleNoise
    from odebench.ode.reference import solve_reference
    from odebench.ode.spec import SolverSpec
    from odebench.teachers import load_teacher

    with tempfile.TemporaryDirectory() as d:
        teacher = load_teacher(str(build_tiny_sd3(Path(d) / "sd3")), device="cpu", height=16, width=16,
                               max_sequence_length=T5_LENGTH)
        teacher.set_prompts(CAPTIONS)
        n = 8
        x = SampleNoise(NoiseBank(0, teacher.shape), range(n))(0)
        cond = torch.arange(n) % len(CAPTIONS)
        truth = solve_reference(teacher, x.double(), cond, SolverSpec(method="dopri5", rtol=1e-7, atol=1e-7, time="log-sigma",
                                                                      dtype="float64")).x0
        rows = []
        for method, time, tol in (("dopri5", "log-sigma", 1e-4), ("dopri5", "log-sigma", 1e-5), ("bosh3", "lambda", 3e-4),
                                  ("bosh3", "lambda", 1e-4), ("dopri5", "lambda", 1e-4), ("bosh3", "log-sigma", 3e-4)):
            sol = solve_reference(teacher, x, cond, SolverSpec(method=method, rtol=tol, atol=tol, time=time, dtype="float32"))
            default = " (default)" if (method, time, tol) == (DEFAULT_METHOD, DEFAULT_TIME, DEFAULT_RTOL) else ""
            rows.append(("tiny SD3", f"{method}, {VARIABLE[time]}{default}", tol, sol.nfe, rel(sol.x0.double(), truth)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sd3", action="store_true", help="also the tiny SD3 scheduler-row table")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| teacher | variable | rtol=atol | NFE/sample | rel. endpoint error |\n|---|---|---|---|---|")
    for name, var, tol, nfe, err in reference_table():
        print(f"| {name} | {var} | {'' if tol is None else f'{tol:g}'} | {nfe} | {err:.2e} |")
    if args.sd3:
        for name, var, tol, nfe, err in sd3_reference_table():
            print(f"| {name} | {var} | {tol:g} | {nfe} | {err:.2e} |")
        print("\n| tiny SD3 row | K | NFE | ode_mse@ref | rel. RMS |\n|---|---|---|---|---|")
        for r in sd3_rows_table():
            print("| " + " | ".join(str(v) if not isinstance(v, float) else f"{v:.3g}" for v in r) + " |")


if __name__ == "__main__":
    main()
