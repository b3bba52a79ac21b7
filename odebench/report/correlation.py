"""Does the student that solves the ODE better also make better samples? Rank correlation across runs
between ODE error and each quality metric, with a bootstrap interval from the metrics' own uncertainty."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

REPS = 2000
LEVEL = 0.95


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis, ties sharing their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, axis=-1, kind="stable")
    xs = np.take_along_axis(x, order, -1)
    n = x.shape[-1]
    ranks = np.empty_like(xs)
    # average rank of each tie block: mean of the positions the block occupies
    flat_xs, flat_r = xs.reshape(-1, n), ranks.reshape(-1, n)
    for row, rr in zip(flat_xs, flat_r):
        start = 0
        for i in range(1, n + 1):
            if i == n or row[i] != row[start]:
                rr[start:i] = (start + i + 1) / 2.0  # positions start+1..i, mean
                start = i
    out = np.empty_like(ranks)
    np.put_along_axis(out, order, ranks, -1)
    return out


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho along the last axis: Pearson correlation of average ranks (nan if a side is constant)."""
    rx, ry = rankdata(x), rankdata(y)
    rx = rx - rx.mean(-1, keepdims=True)
    ry = ry - ry.mean(-1, keepdims=True)
    den = np.sqrt((rx * rx).sum(-1) * (ry * ry).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b along the last axis: (concordant - discordant) / sqrt((n0 - n1)(n0 - n2)), tie-corrected."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = x.shape[-1]
    i, j = np.triu_indices(n, 1)
    sx = np.sign(x[..., j] - x[..., i])
    sy = np.sign(y[..., j] - y[..., i])
    num = (sx * sy).sum(-1)
    den = np.sqrt(np.abs(sx).sum(-1) * np.abs(sy).sum(-1))  # pairs untied in x, pairs untied in y
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _interval(samples: np.ndarray) -> tuple[float | None, float | None]:
    s = samples[np.isfinite(samples)]
    if len(s) < 0.5 * len(samples):  # mostly undefined (constant ranks): no interval
        return None, None
    a = (1 - LEVEL) / 2
    return float(np.quantile(s, a)), float(np.quantile(s, 1 - a))


@dataclass
class Agreement:
    metric: str
    runs: list[str]
    spearman: float | None
    spearman_ci: tuple[float | None, float | None]
    kendall: float | None
    kendall_ci: tuple[float | None, float | None]
    verdict: str  # "better" | "worse" | "indistinguishable"

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "runs": self.runs, "n": len(self.runs), "spearman": self.spearman,
                "spearman_ci": list(self.spearman_ci), "kendall": self.kendall, "kendall_ci": list(self.kendall_ci),
                "verdict": self.verdict}

    def sentence(self, ode_metric: str) -> str:
        rho = "-" if self.spearman is None else f"{self.spearman:+.2f}"
        lo, hi = self.spearman_ci
        ci = "" if lo is None else f" [{lo:+.2f}, {hi:+.2f}]"
        return (f"lower {ode_metric} went with {self.verdict} {self.metric} here "
                f"(Spearman {rho}{ci} over {len(self.runs)} runs)")


def _f(v: float) -> float | None:
    return None if not np.isfinite(v) else float(v)


def agreement(metric: str, names: list[str], ode: np.ndarray, ode_se: np.ndarray, q: np.ndarray, q_se: np.ndarray,
              higher_is_better: bool, reps: int = REPS, seed: int = 0) -> Agreement:
    """Rank agreement between better ODE solving (-ode) and better quality (q, oriented so higher is
    better): +1 means the runs' order by ODE error is exactly their order by quality.

    The interval redraws every run's two numbers from normals with their reported standard errors
    (the runs themselves are fixed): it answers whether the ordering survives the measurement noise.
    The verdict is "better"/"worse" when the Spearman interval excludes 0, else "indistinguishable".
    """
    sign = 1.0 if higher_is_better else -1.0
    a, b = -np.asarray(ode, dtype=np.float64), sign * np.asarray(q, dtype=np.float64)
    rng = np.random.default_rng(seed)
    na = a + rng.standard_normal((reps, len(a))) * np.nan_to_num(np.asarray(ode_se, dtype=np.float64))
    nb = b + rng.standard_normal((reps, len(b))) * np.nan_to_num(np.asarray(q_se, dtype=np.float64))
    rho, tau = _f(spearman(a, b)), _f(kendall_tau_b(a, b))
    rho_ci, tau_ci = _interval(spearman(na, nb)), _interval(kendall_tau_b(na, nb))
    lo, hi = rho_ci
    verdict = "indistinguishable"
    if rho is not None and lo is not None and hi is not None:
        if lo > 0:
            verdict = "better"
        elif hi < 0:
            verdict = "worse"
    return Agreement(metric, list(names), rho, rho_ci, tau, tau_ci, verdict)


def agreements(runs, ode_metric: str = "ode_mse@ref", include_oracle: bool = False) -> list[Agreement]:
    """One Agreement per quality metric (every non-ODE metric two or more runs share; diagnostics such as
    hf_energy_ratio have a target, not a direction, and stay out)."""
    from odebench.metrics.spectral import is_diagnostic

    use = [r for r in runs if ode_metric in r.result["metrics"] and (include_oracle or not r.is_oracle)]
    out = []
    metrics: list[str] = []
    for r in use:
        metrics += [k for k in r.result["metrics"] if not k.startswith("ode_") and not is_diagnostic(k) and k not in metrics]
    for k in metrics:
        have = [r for r in use if k in r.result["metrics"] and r.result["metrics"][k]["value"] is not None
                and r.result["metrics"][ode_metric]["value"] is not None]
        if len(have) < 2:
            continue
        m = [r.result["metrics"] for r in have]
        out.append(agreement(k, [r.name for r in have],
                             np.array([x[ode_metric]["value"] for x in m]), np.array([x[ode_metric]["stderr"] or 0.0 for x in m]),
                             np.array([x[k]["value"] for x in m]), np.array([x[k]["stderr"] or 0.0 for x in m]),
                             bool(m[0][k]["higher_is_better"])))
    return out
