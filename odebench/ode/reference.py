"""The reference PF-ODE solve: torchdiffeq from sigma_start to sigma_min, then x0 = D(x(sigma_min), sigma_min)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from odebench.errors import OdebenchError
from odebench.ode.pfode import PFODE, time_of, to_state, to_x
from odebench.ode.spec import SolverSpec
from odebench.teachers.base import Teacher


def per_sample_rms_max(error_ratio: torch.Tensor) -> torch.Tensor:
    """Error norm: RMS within each sample, max over the batch, so every sample meets the tolerance."""
    return error_ratio.reshape(error_ratio.shape[0], -1).pow(2).mean(dim=1).sqrt().max()


@dataclass
class ReferenceSolution:
    x0: torch.Tensor  # (B, *shape) the reference endpoint D(x(sigma_min), sigma_min)
    traj: torch.Tensor  # (P, B, *shape) states at `curve_sigmas`
    curve_sigmas: torch.Tensor  # (P,) float64, descending
    nfe: int  # denoiser calls per sample, the final D included
    accepted: int
    rejected: int


DTYPE = {"float32": torch.float32, "float64": torch.float64}


def solve_reference(teacher: Teacher, x_start: torch.Tensor, cond: torch.Tensor | None, spec: SolverSpec,
                    curve_sigmas: torch.Tensor | None = None, sigma_start: float | None = None) -> ReferenceSolution:
    """Integrate the teacher's PF-ODE for one batch with a shared adaptive step size.

    `spec` must be resolved (dtype set). `curve_sigmas` (strictly inside (sigma_min, sigma_start))
    are extra output times; the solver is made to step onto them (and onto sigma_min), which costs
    a few extra steps but leaves no interpolation error in the returned states.
    """
    from torchdiffeq import odeint

    dtype = DTYPE[spec.dtype]
    x = x_start.to(dtype)
    sigma_start = teacher.sigma_max if sigma_start is None else float(sigma_start)
    curve = torch.empty(0, dtype=torch.float64) if curve_sigmas is None else curve_sigmas.double()
    sigmas = torch.cat([torch.tensor([sigma_start], dtype=torch.float64), curve,
                        torch.tensor([teacher.sigma_min], dtype=torch.float64)])
    t = time_of(sigmas, spec.time)
    y = to_state(x, sigma_start, spec.time)
    func = PFODE(teacher, cond, spec.time)
    # step_t makes the solver land on every output time, so states are step values, not dense-output
    # interpolants (torchdiffeq's dopri8 interpolant is ~1e-4 off at rtol 1e-5; measured in tests)
    t = t.to(x.device)  # torchdiffeq wants the times on the state's device (a CUDA state for GPU runs)
    options = {"norm": per_sample_rms_max, "step_t": t[1:].to(dtype), **spec.torchdiffeq_options()}
    with torch.no_grad():
        try:
            states = odeint(func, y, t.to(dtype), rtol=spec.rtol, atol=spec.atol, method=spec.method, options=options)
        except AssertionError as e:  # torchdiffeq gives up with asserts
            raise solver_failure(e, spec, func) from None
        states = torch.stack([to_x(states[j], float(sigmas[j]), spec.time) for j in range(states.shape[0])])
        x_min = states[-1]
        x0 = teacher.denoise(x_min, torch.full((x.shape[0],), teacher.sigma_min, dtype=dtype), cond)
    return ReferenceSolution(x0=x0, traj=states[1:-1], curve_sigmas=curve, nfe=func.nfe + 1,
                             accepted=func.accepted, rejected=func.rejected)


def solver_failure(e: AssertionError, spec: SolverSpec, func: PFODE) -> OdebenchError:
    """torchdiffeq's give-up assertion as one line that says what to change."""
    msg = str(e).strip()
    at = "" if func.last_t is None else f" at sigma={float(func.sigma_of(func.last_t.detach().cpu())):.4g}"
    solver = f"reference solver ({spec.method}, rtol={spec.rtol:g}, atol={spec.atol:g})"
    if msg.startswith("max_num_steps exceeded"):
        limit = spec.torchdiffeq_options().get("max_num_steps")
        return OdebenchError(f"{solver} gave up after max_num_steps={limit} steps{at}; "
                             "raise --solver-option max_num_steps or loosen --rtol/--atol")
    # a nan drift makes a nan error estimate: every step is rejected until dt underflows (or the state is nan)
    if msg.startswith("non-finite values in state") or int(func.non_finite):
        return OdebenchError(f"{solver}: the teacher's denoiser returned inf/nan{at}; "
                             "check the teacher definition and --guidance")
    if msg.startswith("underflow in dt"):
        return OdebenchError(f"{solver}: the step size underflowed to zero{at}; the teacher ODE is too stiff there for this "
                             "tolerance or a --solver-option (first_step, min_step, max_step, dfactor) is too small: "
                             "loosen --rtol/--atol or drop those options")
    first = msg.splitlines()[0][:200] if msg else type(e).__name__
    return OdebenchError(f"{solver} failed{at}: {first}")
