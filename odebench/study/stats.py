"""Statistics across seeds: what a study's numbers say beyond one run's own standard errors.

* Each cell (method x budget x the other factors) over its seeds: the mean with a Student-t 95%
  interval, mean +- t_{0.975, n-1} s / sqrt(n) (s the seed-to-seed standard deviation). Every student
  is evaluated on the same noise and reference, so the interval is over training randomness for that
  evaluation set; the evaluation's own sampling error is in each run's stderr, not here.
* CM - Direct CM per metric and budget: paired by training seed when both methods have the same seeds
  (seed s draws the same data, noise and grid indices for both targets), a t-interval of the paired
  differences with n - 1 degrees of freedom; otherwise Welch's interval (Welch-Satterthwaite df).
* Rank agreement between ODE error and each quality metric across runs (Spearman, Kendall tau-b),
  with a pairs bootstrap over runs: resample whole runs with replacement (2,000 seeded draws),
  percentile interval. Runs are treated as draws from the population of trainings, which the
  report's per-run interval (odebench.report.correlation, runs fixed) does not do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from odebench.report.correlation import kendall_tau_b, spearman

LEVEL = 0.95
REPS = 2000
CELL_FACTORS = ("method", "loss", "solver", "lora_rank", "steps")
GROUP_FACTORS = ("loss", "solver", "lora_rank", "steps")  # a CM-vs-Direct comparison holds these fixed


def t_quantile(df: float, level: float = LEVEL) -> float:
    from scipy.stats import t

    return float(t.ppf((1 + level) / 2, df))


@dataclass
class Interval:
    mean: float | None
    lo: float | None
    hi: float | None
    sd: float | None
    n: int
    df: float | None = None
    kind: str = "t"  # t (one sample), paired, welch

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "sd": self.sd, "n": self.n, "df": self.df,
                "kind": self.kind}

    def excludes_zero(self) -> bool:
        return self.lo is not None and (self.lo > 0 or self.hi < 0)


def t_interval(values, level: float = LEVEL) -> Interval:
    """Mean and Student-t interval mean +- t_{(1+level)/2, n-1} s / sqrt(n) of `values` (ddof = 1)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = len(x)
    if n == 0:
        return Interval(None, None, None, None, 0)
    m = float(x.mean())
    if n == 1:
        return Interval(m, None, None, None, 1)
    sd = float(x.std(ddof=1))
    half = t_quantile(n - 1, level) * sd / math.sqrt(n)
    return Interval(m, m - half, m + half, sd, n, float(n - 1))


def welch_interval(a, b, level: float = LEVEL) -> Interval:
    """mean(a) - mean(b) with Welch's interval: se^2 = s_a^2/n_a + s_b^2/n_b, Welch-Satterthwaite df."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb = len(a), len(b)
    d = float(a.mean() - b.mean()) if na and nb else None
    if na < 2 or nb < 2:
        return Interval(d, None, None, None, min(na, nb), kind="welch")
    va, vb = a.var(ddof=1) / na, b.var(ddof=1) / nb
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(d, d, d, 0.0, min(na, nb), None, "welch")
    df = (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
    half = t_quantile(df, level) * se
    return Interval(d, d - half, d + half, se, min(na, nb), float(df), "welch")


def _value(point: dict[str, Any], metric: str) -> float | None:
    m = point["metrics"].get(metric)
    return None if m is None else m.get("value")


def metric_names(points: list[dict[str, Any]]) -> list[str]:
    """Every metric of the study's points, ODE metrics first, in first-seen order."""
    names: list[str] = []
    for p in points:
        names += [k for k in p["metrics"] if k not in names]
    return sorted(names, key=lambda k: not k.startswith("ode_"))


def direction(points: list[dict[str, Any]], metric: str) -> bool:
    return bool(next(p["metrics"][metric]["higher_is_better"] for p in points if metric in p["metrics"]))


@dataclass
class Cell:
    factors: dict[str, Any]
    points: list[dict[str, Any]]
    stats: dict[str, Interval] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return [p["seed"] for p in self.points]

    def to_dict(self) -> dict[str, Any]:
        return {**self.factors, "seeds": self.seeds, "runs": [p["name"] for p in self.points],
                "metrics": {k: v.to_dict() for k, v in self.stats.items()}}


def cells(points: list[dict[str, Any]], metrics: list[str] | None = None, level: float = LEVEL) -> list[Cell]:
    """One Cell per combination of CELL_FACTORS, its metrics as across-seed t-intervals."""
    metrics = metrics or metric_names(points)
    out: dict[tuple, Cell] = {}
    for p in sorted(points, key=lambda p: (tuple(str(p[f]) for f in CELL_FACTORS[:-1]), p["steps"], p["seed"])):
        key = tuple(p[f] for f in CELL_FACTORS)
        out.setdefault(key, Cell({f: p[f] for f in CELL_FACTORS}, [])).points.append(p)
    for c in out.values():
        c.stats = {k: t_interval([_value(p, k) for p in c.points], level) for k in metrics}
    return list(out.values())


@dataclass
class Difference:
    metric: str
    group: dict[str, Any]
    a: str
    b: str
    interval: Interval
    higher_is_better: bool
    diagnostic: bool = False

    @property
    def verdict(self) -> str:
        """Which method is better (the interval excludes 0), "indistinguishable", or for a diagnostic
        (no direction) which is higher."""
        if self.interval.mean is None or not self.interval.excludes_zero():
            return "indistinguishable"
        higher = self.a if self.interval.mean > 0 else self.b
        if self.diagnostic:
            return f"{higher} higher"
        lower = self.b if higher == self.a else self.a
        return f"{higher if self.higher_is_better else lower} better"

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, **self.group, "difference": f"{self.a} - {self.b}", **self.interval.to_dict(),
                "verdict": self.verdict}


def differences(points: list[dict[str, Any]], a: str = "cm", b: str = "direct", metrics: list[str] | None = None,
                level: float = LEVEL) -> list[Difference]:
    """a - b per metric within each group of GROUP_FACTORS: paired by seed when both have the same
    seeds (two or more), else Welch."""
    from odebench.metrics.spectral import is_diagnostic

    metrics = metrics or metric_names(points)
    groups: dict[tuple, dict[str, dict[int, dict[str, Any]]]] = {}
    for p in points:
        if p["method"] in (a, b):
            groups.setdefault(tuple(p[f] for f in GROUP_FACTORS), {a: {}, b: {}})[p["method"]][p["seed"]] = p
    out = []
    for key in sorted(groups, key=lambda k: tuple(str(x) for x in k[:-1]) + (k[-1],)):
        pa, pb = groups[key][a], groups[key][b]
        if not pa or not pb:
            continue
        group = dict(zip(GROUP_FACTORS, key))
        for k in metrics:
            va = {s: _value(p, k) for s, p in pa.items() if _value(p, k) is not None}
            vb = {s: _value(p, k) for s, p in pb.items() if _value(p, k) is not None}
            if not va or not vb:
                continue
            if set(va) == set(vb) and len(va) >= 2:
                iv = t_interval([va[s] - vb[s] for s in sorted(va)], level)
                iv.kind = "paired"
            else:
                iv = welch_interval(list(va.values()), list(vb.values()), level)
            out.append(Difference(k, group, a, b, iv, direction(points, k), is_diagnostic(k)))
    return out


@dataclass
class RunAgreement:
    metric: str
    scope: str  # "all runs" or "steps = N"
    runs: list[str]
    spearman: float | None
    spearman_ci: tuple[float | None, float | None]
    kendall: float | None
    kendall_ci: tuple[float | None, float | None]

    @property
    def verdict(self) -> str:
        lo, hi = self.spearman_ci
        if self.spearman is None or lo is None:
            return "indistinguishable"
        return "better" if lo > 0 else "worse" if hi < 0 else "indistinguishable"

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "scope": self.scope, "n": len(self.runs), "runs": self.runs,
                "spearman": self.spearman, "spearman_ci": list(self.spearman_ci), "kendall": self.kendall,
                "kendall_ci": list(self.kendall_ci), "verdict": self.verdict}


def _percentile_interval(samples: np.ndarray, level: float) -> tuple[float | None, float | None]:
    s = samples[np.isfinite(samples)]
    if len(s) < 0.5 * len(samples):  # mostly degenerate resamples (constant ranks): no interval
        return None, None
    a = (1 - level) / 2
    return float(np.quantile(s, a)), float(np.quantile(s, 1 - a))


def _finite(v) -> float | None:
    return float(v) if np.isfinite(v) else None


def pairs_bootstrap_agreement(names: list[str], ode: np.ndarray, quality: np.ndarray, higher_is_better: bool, metric: str,
                              scope: str, reps: int = REPS, seed: int = 0, level: float = LEVEL) -> RunAgreement:
    """Spearman and Kendall between better ODE solving (-ode) and better quality (oriented so higher is
    better), with percentile intervals from resampling whole runs with replacement."""
    a = -np.asarray(ode, np.float64)
    b = (1.0 if higher_is_better else -1.0) * np.asarray(quality, np.float64)
    n = len(a)
    idx = np.random.default_rng(seed).integers(0, n, (reps, n))
    rho, tau = spearman(a, b), kendall_tau_b(a, b)
    return RunAgreement(metric, scope, list(names), _finite(rho), _percentile_interval(spearman(a[idx], b[idx]), level),
                        _finite(tau), _percentile_interval(kendall_tau_b(a[idx], b[idx]), level))


def run_agreements(points: list[dict[str, Any]], ode_metric: str = "ode_mse@ref", reps: int = REPS,
                   level: float = LEVEL) -> list[RunAgreement]:
    """For every quality metric: agreement over all runs, and within each budget (where training length
    no longer moves both numbers together)."""
    from odebench.metrics.spectral import is_diagnostic

    quality = [k for k in metric_names(points) if not k.startswith("ode_") and not is_diagnostic(k)]
    scopes = [("all runs", points)] + [(f"steps = {s}", [p for p in points if p["steps"] == s])
                                       for s in sorted({p["steps"] for p in points})]
    out = []
    for k in quality:
        hib = direction(points, k)
        for scope, pts in scopes:
            have = [p for p in pts if _value(p, k) is not None and _value(p, ode_metric) is not None]
            if len(have) < 3:
                continue
            out.append(pairs_bootstrap_agreement([p["name"] for p in have], np.array([_value(p, ode_metric) for p in have]),
                                                 np.array([_value(p, k) for p in have]), hib, k, scope, reps, level=level))
    return out
