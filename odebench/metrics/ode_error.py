"""ODE-error metrics: how far a student's outputs are from the reference PF-ODE solution."""
from __future__ import annotations

import math

import numpy as np
import torch

from odebench.metrics.registry import MetricValue, value
from odebench.metrics.stats import bootstrap_stderr, mean_stderr


def per_sample_se(student: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """Per-sample mean squared error per element, in float64: (n,)."""
    d = (student.double() - reference.double()).reshape(student.shape[0], -1)
    return d.pow(2).mean(dim=1).numpy()


def ode_error_metrics(student: torch.Tensor, reference: torch.Tensor, identity: str, suffix: str = "") -> dict[str, MetricValue]:
    """ode_mse (paper: MSE per element, endpoint), RMSE (delta-method stderr), relative error (bootstrap)."""
    se = per_sample_se(student, reference)
    ref_sq = reference.double().reshape(reference.shape[0], -1).pow(2).mean(dim=1).numpy()
    n = se.shape[0]
    mse, mse_err = mean_stderr(se)
    rmse = math.sqrt(mse)
    rmse_err = mse_err / (2 * rmse) if rmse > 0 else (0.0 if rmse == 0 else float("nan"))  # nan: no stderr for a nan value
    rel = math.sqrt(se.sum() / ref_sq.sum())
    rel_err = bootstrap_stderr(lambda i: math.sqrt(se[i].sum() / ref_sq[i].sum()), n) if n > 1 else float("nan")
    return {
        f"ode_mse@ref{suffix}": value("ode_mse@ref", mse, mse_err, identity, n),
        f"ode_rmse@ref{suffix}": value("ode_rmse@ref", rmse, rmse_err, identity, n),
        f"ode_rel@ref{suffix}": value("ode_rel@ref", rel, rel_err, identity, n),
    }


def error_curve(outputs: list[torch.Tensor], reference: torch.Tensor, sigmas: torch.Tensor) -> dict:
    """Per-sigma consistency error: student applied at reference-trajectory points x_ref(sigma_j),
    compared with the reference endpoint; mean and stderr of per-sample MSE for each sigma."""
    vals, errs = [], []
    for out in outputs:
        m, e = mean_stderr(per_sample_se(out, reference))
        vals.append(m)
        errs.append(e)
    return {"sigma": [float(s) for s in sigmas], "ode_mse": vals, "stderr": errs, "n": int(reference.shape[0])}
