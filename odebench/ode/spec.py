"""SolverSpec: the frozen, validated description of a reference solve (part of every cache key)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from odebench.errors import OdebenchError

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2")
TIME_VARIABLES = ("lambda", "log-sigma", "sigma")  # odebench.ode.pfode
DTYPES = ("float32", "float64")
# torchdiffeq's adaptive-RK options we pass through; anything else is a typo and an error.
SOLVER_OPTIONS = ("first_step", "max_num_steps", "safety", "ifactor", "dfactor", "min_step", "max_step")
# Their meaningful ranges (torchdiffeq checks none of them: safety > 1 loops forever, a negative first_step
# underflows, max_num_steps=2.5 is silently 2). Steps are in the integration variable (log sigma by default).
OPTION_RANGES = {
    "first_step": (lambda v: v > 0, "a number > 0"),
    "max_num_steps": (lambda v: v >= 1 and v == int(v), "an integer >= 1"),
    "safety": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "ifactor": (lambda v: v >= 1, "a number >= 1"),
    "dfactor": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "min_step": (lambda v: v >= 0, "a number >= 0"),
    "max_step": (lambda v: v > 0, "a number > 0"),
}

# Chosen by measurement (benchmarks/reference_solver.py; table in README): bosh3 in lambda time
# (y = x/sigma against 1/sigma, odebench.ode.pfode) at 3e-4 is cheaper than the old default
# (dopri5, log-sigma, 1e-4) on all three measured problems and 2.4x more accurate in the worst case:
# digits 7.8e-4 relative endpoint error at 117 NFE (old 1.9e-3 at 135), gauss16 3.6e-5 at 75
# (6.0e-5 at 81), gmm64 1.5e-4 at 111 (7.0e-5 at 111). <= 1e-4 on digits takes ~600 NFE with any
# measured setting: its guided flow amplifies local errors 10-30x, and dopri8 is stability-limited there.
DEFAULT_METHOD = "bosh3"
DEFAULT_TIME = "lambda"
DEFAULT_RTOL = 3e-4
DEFAULT_ATOL = 3e-4
DEFAULT_BATCH = 256


@dataclass(frozen=True)
class SolverSpec:
    """How the reference PF-ODE is integrated.

    `batch` is part of the spec because torchdiffeq shares one step size across a batch: the
    samples solved together determine the step sequence, so it changes the numbers (within
    tolerance) and must be in the cache key.
    `dtype` is the ODE state's dtype (--state-dtype; the network's precision is the teacher's,
    --dtype); None means the teacher's default (float64 for analytic teachers, float32 otherwise).
    """

    method: str = DEFAULT_METHOD
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    time: str = DEFAULT_TIME
    dtype: str | None = None
    batch: int = DEFAULT_BATCH
    options: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if self.method not in ADAPTIVE_METHODS:
            raise OdebenchError(f"unknown reference method {self.method!r}: expected one of {', '.join(ADAPTIVE_METHODS)}")
        for name in ("rtol", "atol"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise OdebenchError(f"{name} must be a positive number, got {v!r}")
        if self.time not in TIME_VARIABLES:
            raise OdebenchError(f"unknown time variable {self.time!r}: expected one of {', '.join(TIME_VARIABLES)}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise OdebenchError(f"unknown state dtype {self.dtype!r} (--state-dtype): expected one of {', '.join(DTYPES)}")
        if not (isinstance(self.batch, int) and self.batch > 0):
            raise OdebenchError(f"reference batch must be a positive integer, got {self.batch!r}")
        opts = []
        for k, v in dict(self.options).items():
            k = str(k)
            if k not in SOLVER_OPTIONS:
                raise OdebenchError(f"unknown solver option {k!r}: allowed options are {', '.join(SOLVER_OPTIONS)}")
            ok, what = OPTION_RANGES[k]
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise OdebenchError(f"solver option {k} must be {what}, got {v!r}") from None
            if not (math.isfinite(v) and ok(v)):
                raise OdebenchError(f"solver option {k} must be {what}, got {v:g}")
            opts.append((k, v))
        given = dict(opts)
        if given.get("min_step", 0.0) > given.get("max_step", math.inf):
            raise OdebenchError(f"solver option min_step ({given['min_step']:g}) exceeds max_step ({given['max_step']:g})")
        object.__setattr__(self, "options", tuple(sorted(opts)))

    def resolved(self, default_dtype: str) -> "SolverSpec":
        """This spec with the dtype filled in from the teacher's default."""
        return self if self.dtype is not None else replace(self, dtype=default_dtype)

    def tighter(self, factor: float = 10.0) -> "SolverSpec":
        """The same solve at `factor` times tighter tolerances (the reference floor estimate)."""
        return replace(self, rtol=self.rtol / factor, atol=self.atol / factor)

    def torchdiffeq_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = dict(self.options)
        if "max_num_steps" in opts:
            opts["max_num_steps"] = int(opts["max_num_steps"])
        return opts

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["options"] = dict(self.options)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SolverSpec":
        d = dict(d)
        d["options"] = tuple(dict(d.get("options", {})).items())
        unknown = set(d) - {"method", "rtol", "atol", "time", "dtype", "batch", "options"}
        if unknown:
            raise OdebenchError(f"unknown SolverSpec field(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def describe(self) -> str:
        opts = "".join(f", {k}={v:g}" for k, v in self.options)
        return f"{self.method} rtol={self.rtol:g} atol={self.atol:g} in {self.time} time, {self.dtype}, batch {self.batch}{opts}"


def parse_solver_options(items: list[str]) -> tuple[tuple[str, float], ...]:
    """Parse CLI `key=value` options; unknown keys and non-numbers are one-line errors."""
    out = []
    for item in items:
        if "=" not in item:
            raise OdebenchError(f"solver option {item!r} must look like key=value")
        k, v = item.split("=", 1)
        if k not in SOLVER_OPTIONS:
            raise OdebenchError(f"unknown solver option {k!r}: allowed options are {', '.join(SOLVER_OPTIONS)}")
        try:
            out.append((k, float(v)))
        except ValueError:
            raise OdebenchError(f"solver option {k} needs a number, got {v!r}") from None
    SolverSpec(options=tuple(out))  # range checks now, at parse time
    return tuple(out)
