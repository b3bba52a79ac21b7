"""Few-step ODE solvers on the teacher, as students: no training, meaningful rows on every domain.

Grid: the Karras schedule (rho = 7) of K noise levels from sigma_max to sigma_min, then a final
step to sigma = 0 (which returns D(x, sigma_K) for every method).
  ddim:K / euler:K  Euler in sigma (= DDIM in VE coordinates), K denoiser evaluations.
  heun:K            Karras et al. 2022 Alg. 1 (Heun's 2nd order, Euler on the last step), 2K-1.
  dpm2:K            DPM-Solver-2: midpoint at the geometric mean sigma, Euler last step, 2K-1.
The consistency function f(x, sigma) of a solver runs the same scheme on a K-level grid from
sigma down to sigma_min.
"""
from __future__ import annotations

import torch

from odebench.ode.grids import karras_sigmas
from odebench.ode.steps import METHODS, nfe, solve
from odebench.students.base import NoiseFn, Student
from odebench.teachers.base import Teacher

SOLVER_KINDS = METHODS  # ddim | euler | heun | dpm2 (odebench.ode.steps)
# bump when the numbers of `solve` (odebench.ode.steps) change: cached solver-row outputs carry it in their key
SOLVER_NUMERICS = 1


class SolverStudent(Student):
    kind = "solver"

    def __init__(self, teacher: Teacher, kind: str, steps: int, spec: str | None = None) -> None:
        self.teacher = teacher
        self.method_name = kind
        self.method = METHODS[kind]
        self.steps = steps
        self.spec = spec or f"{kind}:{steps}"
        self.name = f"{kind}-{steps}"

    def nfe(self, steps: int | None = None) -> int:
        return nfe(self.method_name, self.steps if steps is None else steps)

    def solve(self, x: torch.Tensor, sigmas: torch.Tensor, cond) -> torch.Tensor:
        """Integrate dx/dsigma = (x - D)/sigma over `sigmas` (descending, > 0) then jump to sigma = 0."""
        return solve(self.teacher, x, sigmas, cond, self.method_name)

    @torch.no_grad()
    def sample(self, x_start, cond, noise: NoiseFn, steps=None):
        k = self.steps if steps is None else steps
        return self.solve(x_start, karras_sigmas(k, self.teacher.sigma_min, self.teacher.sigma_max), cond)

    @torch.no_grad()
    def __call__(self, x, sigma, cond):
        sig = float(torch.as_tensor(sigma).reshape(-1)[0])  # one noise level per call
        return self.solve(x, karras_sigmas(self.steps, min(self.teacher.sigma_min, sig), sig), cond)

    def cache_identity(self, steps: int | None = None) -> dict:
        """Everything this solver's outputs depend on besides its input tensors (the key of odebench.ode.cache.memoized)."""
        return {"kind": "solver-student", "method": self.method, "steps": self.steps if steps is None else steps,
                "grid": "karras rho=7", "teacher": self.teacher.ode_identity(), "numerics": SOLVER_NUMERICS}

    def describe(self):
        return {**super().describe(), "grid": "karras rho=7, K levels sigma_max..sigma_min, then 0",
                "method": self.method}
