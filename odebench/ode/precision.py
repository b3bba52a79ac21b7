"""The precision of a teacher's drift, and the step-control tolerance it allows.

Precision ladder. A reference solve runs its network at dtype p (--dtype; an analytic teacher
computes in the state dtype) with the ODE state at dtype s (--state-dtype). Its precision-up view:
  p = bf16 / fp16            -> the network in fp32, same state
  p = fp32 (or analytic), s = float32 -> network and state in float64
  everything float64         -> none (rounding ~1e-16, not measured)

Drift precision delta: the RMS difference between D at precision p and at precision-up, relative to
the RMS of the state x, evaluated at the states of a DDIM-8 trajectory (precision up) of the first
PROBE_SAMPLES samples; the maximum over the 8 noise levels. It is the rounding noise every drift
evaluation carries, on the scale the step control measures errors in (rtol |x|).

Step control. An embedded Runge-Kutta pair estimates the local error as h sum_i (b_i - b*_i) k_i;
noise delta |x| in the stages k_i shows up in that estimate at ~ 0.1 h delta |x| (h in log-sigma
units; sum |b_i - b*_i| = 0.16 for dopri5) however small the step, so a tolerance below it makes
the controller shrink steps that gain no accuracy (bf16 digits at 1e-4: 291 NFE against float32's
219, the same true error as at 3e-4). odebench therefore never integrates at rtol or atol below
KAPPA * delta and says so in one line when it raises them.
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch

from odebench.ode.cache import TrajectoryCache, cache_key
from odebench.ode.spec import SolverSpec
from odebench.teachers.base import Teacher

HALF = ("bf16", "fp16")
PROBE_SAMPLES = 8  # samples whose DDIM-8 trajectory probes the drift's rounding noise
PROBE_STEPS = 8
# tolerance floor = KAPPA * delta; on digits (benchmarks/reference_solver.py --precision) bf16 then
# takes 96 NFE (float32: 117 at 3e-4, 219 at 1e-4) at the true error of its unraised solve
KAPPA = 0.1


def has_precision_up(teacher: Teacher, spec: SolverSpec) -> bool:
    """Whether a resolved reference has a precision above it (not float64 throughout)."""
    net = teacher.network_dtype
    return not (net == "fp64" or (net is None and spec.dtype == "float64"))


def precision_up(teacher: Teacher, spec: SolverSpec) -> tuple[Teacher, SolverSpec] | None:
    """The precision-up view of a resolved reference (see the module docstring), or None at float64."""
    net = teacher.network_dtype
    if net in HALF:
        return teacher.with_network_dtype("fp32"), spec
    if not has_precision_up(teacher, spec):
        return None
    up = teacher.with_network_dtype("fp64") if net is not None else teacher
    return up, replace(spec, dtype="float64")


def describe_precision(teacher: Teacher, spec: SolverSpec) -> str:
    """'network bf16, state float32' (or 'analytic, state float64')."""
    net = teacher.network_dtype
    return f"{'network ' + net if net else 'analytic'}, state {spec.dtype}"


def _probe(teacher: Teacher, x: torch.Tensor, sigmas: list[float], cond) -> list[torch.Tensor]:
    """D along a DDIM trajectory (Euler in sigma) over `sigmas`: the denoised outputs at every level."""
    outs = []
    for i, sig in enumerate(sigmas):
        d = teacher.denoise(x, torch.full((x.shape[0],), sig, dtype=x.dtype, device=x.device), cond)
        outs.append((x, d))
        if i + 1 < len(sigmas):
            x = x + (sigmas[i + 1] - sig) * (x - d) / sig
    return outs


def drift_precision(teacher: Teacher, spec: SolverSpec, x_start: torch.Tensor, cond, cache: TrajectoryCache,
                    payload: dict) -> float:
    """delta: the relative rounding noise of D at the reference's precision (module docstring); cached
    under `payload` (what the probe's numbers depend on), so a warm run spends no teacher evaluations."""
    from odebench.ode.grids import karras_sigmas
    from odebench.ode.reference import DTYPE

    if not has_precision_up(teacher, spec):
        return 0.0
    net = teacher.network_dtype
    up_net = "fp32" if net in HALF else ("fp64" if net is not None else None)
    up_state = spec.dtype if net in HALF else "float64"
    up_ident = {**teacher.ode_identity(), **({"network_dtype": up_net} if up_net else {})}
    key = cache_key({"kind": "drift-precision", **payload, "ode": teacher.ode_identity(), "up": up_ident,
                     "state": spec.dtype, "up_state": up_state, "probe": f"ddim-{PROBE_STEPS} karras"})
    hit = cache.load(key)
    if hit is not None:
        return float(hit[0]["delta"].max())
    up = precision_up(teacher, spec)  # built only now: an SDXL view casts a UNet copy
    sigmas = [float(s) for s in karras_sigmas(PROBE_STEPS, teacher.sigma_min, teacher.sigma_max)]
    device = getattr(teacher, "device", "cpu")
    with torch.no_grad():
        ref = _probe(up[0], x_start.to(device, DTYPE[up[1].dtype]), sigmas, cond)
        rel = []
        state = DTYPE[spec.dtype]
        for (x_up, d_up), sig in zip(ref, sigmas):
            d = teacher.denoise(x_up.to(state), torch.full((x_up.shape[0],), sig, dtype=state, device=x_up.device), cond)
            # relative to the state: the step control compares the drift's noise h (D - D_up) with rtol |x|
            rel.append(float((d.double() - d_up.double()).pow(2).mean().sqrt() / x_up.double().pow(2).mean().sqrt()))
    delta = torch.tensor(rel, dtype=torch.float64)
    cache.store(key, {"kind": "drift-precision", **payload, "ode": teacher.ode_identity(), "state": spec.dtype}, {"delta": delta}, {})
    return float(delta.max())


def tolerance_floor(delta: float) -> float:
    """The smallest rtol/atol worth asking for with drift noise delta."""
    return KAPPA * delta


def raise_tolerance(spec: SolverSpec, delta: float, what: str) -> tuple[SolverSpec, str | None]:
    """`spec` with rtol/atol raised to the tolerance floor where below it, and a one-line note when raised."""
    floor = tolerance_floor(delta)
    if not (math.isfinite(floor) and floor > 0) or (spec.rtol >= floor and spec.atol >= floor):
        return spec, None
    # two significant digits: the floor is a measurement, the cache key should not carry its noise
    floor = float(f"{floor:.2g}")
    raised = replace(spec, rtol=max(spec.rtol, floor), atol=max(spec.atol, floor))
    note = (f"reference tolerance raised from rtol={spec.rtol:g} atol={spec.atol:g} to rtol={raised.rtol:g} "
            f"atol={raised.atol:g}: the drift ({what}) carries {delta:.1e} relative rounding noise (measured "
            f"against one precision up), and tighter steps would chase the noise, not the ODE")
    return raised, note


def effective_spec(teacher: Teacher, spec: SolverSpec, noise, conditions, cache: TrajectoryCache) -> tuple[SolverSpec, float, str | None]:
    """The resolved reference `spec` with its tolerances raised to what the drift's measured precision
    allows: (spec, delta, one-line note or None). Every rank computes the same (deterministic, cached)."""
    from odebench.ode.reference import DTYPE
    from odebench.ode.trajectories import initial_state

    if not has_precision_up(teacher, spec):
        return spec, 0.0, None
    idx = range(PROBE_SAMPLES)
    x = initial_state(teacher, noise, idx, DTYPE[spec.dtype])
    payload = {"seed": noise.seed, "cond": conditions.key(idx), "shape": list(noise.shape)}
    delta = drift_precision(teacher, spec, x, conditions.tensor(idx), cache, payload)
    raised, note = raise_tolerance(spec, delta, describe_precision(teacher, spec))
    return raised, delta, note
