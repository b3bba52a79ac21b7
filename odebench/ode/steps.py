"""The one table of fixed-grid PF-ODE steps, shared by the solver rows, the paper grid and the trainers.

A step integrates dx/dsigma = (x - D(x, sigma))/sigma (Karras et al. 2022, eq. 1) from sigma to
sigma_next, per item (sigma, sigma_next: float64 tensors of shape (B,)):
  euler (= ddim: Euler in sigma is DDIM in VE coordinates)  x' = x + (s' - s)(x - D)/s          1 NFE
  heun  (Karras et al. 2022, Alg. 1)   x_e = euler;  x' = x + (s' - s)/2 ((x - D)/s + (x_e - D(x_e, s'))/s')   2 NFE
  dpm2  (DPM-Solver-2: midpoint at the geometric mean m = sqrt(s s'))
        x_m = x + (m - s)(x - D)/s;  x' = x + (s' - s)(x_m - D(x_m, m))/m                        2 NFE
A step to sigma_next = 0 returns D(x, sigma) for every method (the Euler step lands exactly there).
Differences of noise levels are formed in float64 and rounded once to the state's dtype.
"""
from __future__ import annotations

import torch

METHODS = {"ddim": "euler", "euler": "euler", "heun": "heun", "dpm2": "dpm2"}  # name -> scheme
EVALS = {"euler": 1, "heun": 2, "dpm2": 2}  # denoiser evaluations of a step to sigma_next > 0


def _view(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.dtype).to(x.device).reshape((-1,) + (1,) * (x.dim() - 1))


def step(teacher, x: torch.Tensor, s: torch.Tensor, s_next: torch.Tensor, cond, method: str) -> torch.Tensor:
    """One `method` step of the teacher's PF-ODE from per-item noise levels s to s_next (s > 0)."""
    scheme = METHODS[method]
    d = teacher.denoise(x, s.to(x.dtype), cond)
    positive = s_next > 0
    if not bool(positive.any()):
        return d
    slope = (x - d) / _view(s, x)
    dt = s_next - s
    if scheme == "euler":
        x_next = x + _view(dt, x) * slope
    elif scheme == "heun":
        s2 = torch.where(positive, s_next, s)  # never evaluate D at sigma = 0
        x_e = x + _view(dt, x) * slope
        slope2 = (x_e - teacher.denoise(x_e, s2.to(x.dtype), cond)) / _view(s2, x)
        x_next = x + _view(dt * 0.5, x) * (slope + slope2)
    else:
        mid = torch.where(positive, torch.sqrt(s * s_next), s)
        x_m = x + _view(mid - s, x) * slope
        slope_m = (x_m - teacher.denoise(x_m, mid.to(x.dtype), cond)) / _view(mid, x)
        x_next = x + _view(dt, x) * slope_m
    if bool(positive.all()):
        return x_next
    return torch.where(positive.to(x.device).reshape((-1,) + (1,) * (x.dim() - 1)), x_next, d)


def solve(teacher, x: torch.Tensor, sigmas, cond, method: str) -> torch.Tensor:
    """The same noise levels for every item: `method` steps along `sigmas` (descending, > 0), then a
    final step to sigma = 0, which returns D(x, sigmas[-1])."""
    levels = [float(v) for v in sigmas] + [0.0]
    b = x.shape[0]
    for s, s_next in zip(levels[:-1], levels[1:]):
        x = step(teacher, x, torch.full((b,), s, dtype=torch.float64), torch.full((b,), s_next, dtype=torch.float64),
                 cond, method)
    return x


def nfe(method: str, k: int) -> int:
    """Denoiser evaluations of `solve` on k noise levels: every step but the last (to 0) costs EVALS."""
    return EVALS[METHODS[method]] * (k - 1) + 1
