"""The reference floor: how far the reference is from the exact ODE solution, in two parts.

On the first m samples (`floor_samples`), with R(precision, spec) a re-solve of the same noise:
  solver part     S = MSE(R_q(spec), R_q(spec 10x tighter))      discretisation error
  precision part  P = MSE(reference, R_up(spec))                 rounding error of network and state
  combined floor  F = S + P
where R_up runs one precision up (odebench.ode.precision.precision_up: a bf16/fp16 network in fp32;
a float32 network and state in float64) and q is the reference's own precision, except for a half-
precision network, whose rounding noise would pollute the tighter solve: there q = up, and both
parts come from the two precision-up solves. Rule: the parts come from independent sources
(truncation vs rounding), so their squared errors add; the triangle inequality bounds the truth by
(sqrt S + sqrt P)^2 <= 2F either way. What F leaves out, the precision-up solve's own solver error at
10x tighter tolerance and its rounding one level up, is ~10x and ~1000x smaller.
A float64 precision-up network costs ~4x per evaluation on a CPU, so for a float32 reference P uses
the first min(m, FP64_SAMPLES) samples; a float64-throughout reference has P = 0 (not measured).
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch

from odebench.ode.precision import HALF, describe_precision, precision_up
from odebench.ode.spec import SolverSpec
from odebench.teachers.base import Teacher

TIGHTER = 10.0
FP64_SAMPLES = 8
RULE = "combined = solver + precision (squared errors of independent sources add)"

# solve(teacher, spec, m, label) -> (the first m endpoints of that solve, its NFE per sample); None off the main rank
Solve = Callable[[Teacher, SolverSpec, int, str], "tuple[torch.Tensor, float] | None"]


def _mse(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float | None]:
    """Mean over samples of the per-element MSE, and its standard error."""
    from odebench.metrics.ode_error import per_sample_se
    from odebench.metrics.stats import mean_stderr

    se = per_sample_se(a, b)
    if se.shape[0] == 1:
        return float(se[0]), None
    m, e = mean_stderr(se)
    return float(m), (None if math.isnan(e) else float(e))


def floor_plan(teacher: Teacher, spec: SolverSpec, m: int) -> list[tuple[str, Teacher, SolverSpec, int]]:
    """The re-solves the floor needs: (label, teacher, spec, samples); the reference itself is not among them."""
    up = precision_up(teacher, spec)
    tight = spec.tighter(TIGHTER)
    if teacher.network_dtype in HALF:
        t_up, s_up = up
        return [("precision-up", t_up, s_up, m), ("precision-up tight", t_up, s_up.tighter(TIGHTER), m)]
    plan = [("tight", teacher, tight, m)]
    if up is not None:
        plan.append(("precision-up", up[0], up[1], min(m, FP64_SAMPLES)))
    return plan


def reference_floor(teacher: Teacher, spec: SolverSpec, ref_x0: torch.Tensor | None, m: int, solve: Solve) -> dict | None:
    """The floor of a resolved reference `spec` on its first m samples (module docstring); runs the
    re-solves through `solve` (every rank), returns the floor dict where `ref_x0` is given (rank 0)."""
    plan = floor_plan(teacher, spec, m)
    t0 = time.perf_counter()
    done = {label: (t, s, n, solve(t, s, n, label)) for label, t, s, n in plan}
    seconds = time.perf_counter() - t0
    if ref_x0 is None:
        return None
    got = {label: (t, s, n, out[0]) for label, (t, s, n, out) in done.items()}
    resolves = [{"part": label, "precision": describe_precision(t, s), "solver": s.describe(), "samples": n,
                 "nfe_per_sample": out[1]} for label, (t, s, n, out) in done.items()]
    half = teacher.network_dtype in HALF
    if half:
        _, s_up, n, x_up = got["precision-up"]
        _, s_tight, _, x_tight = got["precision-up tight"]
        s_val, s_err = _mse(x_up, x_tight)
        p_val, p_err = _mse(ref_x0[:n], x_up)
        solver = {"how": f"{describe_precision(got['precision-up'][0], s_up)} re-solve vs the same at {TIGHTER:g}x tighter tolerance "
                         f"(the half-precision network's noise would pollute a tighter solve of its own)",
                  "tight_solver": s_tight.to_dict()}
        precision = {"how": f"reference vs the same samples re-solved with the {describe_precision(got['precision-up'][0], s_up)}",
                     "up": describe_precision(got["precision-up"][0], s_up), "n": n}
        n_solver = n
    else:
        _, s_tight, n_solver, x_tight = got["tight"]
        s_val, s_err = _mse(ref_x0[:n_solver], x_tight)
        solver = {"how": f"reference vs a {TIGHTER:g}x tighter re-solve ({describe_precision(teacher, spec)})",
                  "tight_solver": s_tight.to_dict()}
        if "precision-up" in got:
            t_up, s_up, n, x_up = got["precision-up"]
            p_val, p_err = _mse(ref_x0[:n], x_up)
            precision = {"how": f"reference vs the same samples re-solved with {describe_precision(t_up, s_up)}",
                         "up": describe_precision(t_up, s_up), "n": n}
        else:
            p_val, p_err = 0.0, 0.0
            precision = {"how": "not measured: float64 throughout (rounding ~1e-16 relative)", "up": None, "n": 0}
    solver.update({"ode_mse": s_val, "stderr": s_err, "n": n_solver})
    precision.update({"ode_mse": p_val, "stderr": p_err})
    errs = [e for e in (s_err, p_err) if e is not None]
    combined_err = float(np.sqrt(sum(e * e for e in errs))) if errs else None
    return {"ode_mse": s_val + p_val, "stderr": combined_err, "n": n_solver, "rule": RULE,
            "parts": {"solver": solver, "precision": precision},
            "precision": describe_precision(teacher, spec),
            "tight_solver": solver["tight_solver"], "resolves": resolves, "seconds": seconds,
            "definition": "MSE per element between the reference and the exact ODE solution, estimated on the first n "
                          "samples as the sum of a solver part (tighter re-solve) and a precision part (re-solve one "
                          "precision up); parts and how each was measured under 'parts'"}
