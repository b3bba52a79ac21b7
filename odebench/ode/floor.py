"""The reference floor: how far the reference is from the exact ODE solution, in two parts.

On the first m samples (`floor_samples`), with R(precision, spec) a re-solve of the same noise:
  solver part     S = MSE(R_q(spec), R_q(spec 10x tighter))      discretisation error
  precision part  P = MSE(reference, R_up(spec))                 rounding error of network and state
  combined floor  F = S + P
Rule: the parts come from independent sources (truncation vs rounding), so their squared errors add;
the triangle inequality bounds the truth by (sqrt S + sqrt P)^2 <= 2F either way.

Half-precision network (bf16/fp16): R_up runs the network in float32 (odebench.ode.precision.
precision_up) and both parts come from the two float32 re-solves (q = up): the half-precision
network's own noise would pollute a tighter solve of its own. What F leaves out, the float32 solve's
error at 10x tighter tolerance, is ~10x smaller than S.
Float32 network (or a float32-state analytic teacher): S is measured at the reference's own precision
(q = itself); P is estimated, not re-solved, as S (delta / tol)^2: rounding noise of relative size
delta per drift evaluation (measured, odebench.ode.precision) acts on the solution as a local error
of delta where the solver's local errors are held to tol, and both are propagated by the same flow.
A float64 re-solve would cost ~4x per evaluation in small batches (~10x per sample on a CPU) for a
part that is ~1e-6 of S; benchmarks/reference_solver.py --precision checks the estimate against it.
Float64 throughout: P = 0 (not measured).
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch

from odebench.ode.precision import HALF, describe_precision, has_precision_up, precision_up
from odebench.ode.spec import SolverSpec
from odebench.teachers.base import Teacher

TIGHTER = 10.0
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
    if teacher.network_dtype in HALF:
        t_up, s_up = precision_up(teacher, spec)
        return [("precision-up", t_up, s_up, m), ("precision-up tight", t_up, s_up.tighter(TIGHTER), m)]
    return [("tight", teacher, spec.tighter(TIGHTER), m)]


def reference_floor(teacher: Teacher, spec: SolverSpec, ref_x0: torch.Tensor | None, m: int, solve: Solve,
                    delta: float = 0.0) -> dict | None:
    """The floor of a resolved reference `spec` on its first m samples (module docstring); runs the
    re-solves through `solve` (every rank), returns the floor dict where `ref_x0` is given (rank 0).
    `delta`: the drift's measured relative rounding noise (odebench.ode.precision.drift_precision)."""
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
        if has_precision_up(teacher, spec):
            ratio = delta / min(spec.rtol, spec.atol)
            p_val, p_err = s_val * ratio ** 2, (None if s_err is None else s_err * ratio ** 2)
            precision = {"how": f"estimated as solver part x (delta / tol)^2 with the drift's measured rounding noise "
                                f"delta = {delta:.2g} ({describe_precision(teacher, spec)} vs one precision up)",
                         "up": None, "n": n_solver, "delta": delta}
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
                          "samples as the sum of a solver part (tighter re-solve) and a precision part (a re-solve one "
                          "precision up for a half-precision network, else an estimate from the measured drift noise); "
                          "parts and how each was measured under 'parts'"}
