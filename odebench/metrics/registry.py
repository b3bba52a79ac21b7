"""Metric values and the registry of metric definitions (name, direction, what it measures)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class MetricDef:
    name: str
    higher_is_better: bool
    description: str


@dataclass
class MetricValue:
    value: float
    stderr: float | None
    higher_is_better: bool
    identity: str
    n: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("value", "stderr"):
            if d[k] is not None and not math.isfinite(d[k]):
                d[k] = None  # JSON has no inf/nan
        return d


REGISTRY: dict[str, MetricDef] = {}


def register(name: str, higher_is_better: bool, description: str) -> MetricDef:
    REGISTRY[name] = MetricDef(name, higher_is_better, description)
    return REGISTRY[name]


def family(name: str) -> str:
    """The registered metric a concrete name belongs to: "fd_digits@teacher" -> "fd_digits",
    "ode_mse@ref[k=2]" -> "ode_mse@ref" (names registered with their "@" keep it)."""
    base = name.split("[", 1)[0]
    return base if base in REGISTRY else base.split("@", 1)[0]


def value(name: str, v: float, stderr: float | None, identity: str, n: int) -> MetricValue:
    """A MetricValue for a registered metric (the direction comes from the registry)."""
    return MetricValue(float(v), None if stderr is None else float(stderr), REGISTRY[family(name)].higher_is_better,
                       identity, int(n))


register("ode_mse@ref", False, "endpoint MSE per element between student sample and reference ODE solution (paper's ODE error)")
register("ode_rmse@ref", False, "square root of ode_mse@ref")
register("ode_mse@ddim100", False, "endpoint MSE per element against the teacher's DDIM solve on the paper's 100-point grid (the paper's metric)")
register("ode_rel@ref", False, "relative endpoint error ||student - ref|| / ||ref|| over all samples")
register("ode_mse@ref_curve_mean", False, "mean over sigma of the per-sigma consistency error curve")
register("loglik", True, "mean log-density of samples under the true data mixture")
register("fd_exact", False, "Frechet distance between samples and exact data samples")
register("kid_exact", False, "kernel inception-style distance (cubic polynomial kernel MMD^2) to exact data samples")
register("mode_coverage", True, "fraction of mixture modes holding at least a quarter of their expected share of samples inside the mode")
for _kind in ("precision", "recall", "density", "coverage"):  # k-NN manifolds (odebench.metrics.prdc) in GMM data space
    register(f"{_kind}_exact", True, f"k-NN {_kind} of samples against exact data samples, in data space")
register("mode_precision", True, "fraction of samples inside the 99% ellipsoid of their most likely mode")
