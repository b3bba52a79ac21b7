"""The reference floor: how far the reference is from the exact ODE solution, in two parts.

On the first m samples (`floor_samples`), with R(precision, spec) a re-solve of the same noise:
  solver part     S = MSE(reference, R(spec 10x tighter))                       discretisation error
  precision part  P = MSE(R(spec), R_up(spec)) on the first PAIR_SAMPLES,      rounding error
                      both solved as one batch (the same step control, so the difference is the rounding)
  combined floor  F = S + P
Rule: the parts come from independent sources (truncation vs rounding), so their squared errors add;
the triangle inequality bounds the truth by (sqrt S + sqrt P)^2 <= 2F either way.

Precision up, by what the reference runs in:
  bf16/fp16 network  R_up runs the network in float32 (odebench.ode.precision.precision_up); both parts
                     come from float32-network re-solves (S = MSE(R_up(spec), R_up(tight)), P = MSE(ref,
                     R_up(spec)) on all m): the half-precision noise would pollute a tighter solve of its
                     own, and it dwarfs the step-control differences between batches.
  float32 state      R_up integrates the state in float64, the network unchanged. On digits this is most
                     of the rounding (MSE 1.5e-7 for the state vs 5e-9 for the float32 network: measured,
                     8 samples); a float64 network would cost ~4x per evaluation for the rest, which the
                     drift's measured noise delta (odebench.ode.precision) bounds instead.
  float64 throughout P = 0 (not measured).
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Callable

import numpy as np
import torch

from odebench.ode.precision import HALF, describe_precision, precision_up
from odebench.ode.spec import SolverSpec
from odebench.teachers.base import Teacher

TIGHTER = 10.0
PAIR_SAMPLES = 8  # the float32-state precision pair: two same-batch solves at the reference's tolerance
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
    plan = [("tight", teacher, spec.tighter(TIGHTER), m)]
    if spec.dtype == "float32":
        k = min(m, PAIR_SAMPLES)
        plan += [("pair", teacher, spec, k), ("pair float64 state", teacher, replace(spec, dtype="float64"), k)]
    return plan


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
        if "pair" in got:
            _, _, k, x_own = got["pair"]
            p_val, p_err = _mse(x_own, got["pair float64 state"][3])
            net = "" if teacher.network_dtype is None else (
                f"; the {teacher.network_dtype} network's own rounding (delta = {delta:.1e} per evaluation, measured) "
                "is not re-solved")
            precision = {"how": f"the first {k} samples solved as one batch with the state in float32 and in float64 "
                                f"(same tolerance, same step control){net}",
                         "up": "state float64", "n": k, "delta": delta}
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
                          "samples as the sum of a solver part (tighter re-solve) and a precision part (re-solves one "
                          "precision up); parts and how each was measured under 'parts'"}
