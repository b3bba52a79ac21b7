"""`ref`: the reference solver itself as a student, the zero-error oracle row."""
from __future__ import annotations

import torch

from odebench.ode.reference import solve_reference
from odebench.ode.spec import SolverSpec
from odebench.students.base import Student
from odebench.teachers.base import Teacher


class ReferenceStudent(Student):
    """Samples are the run's reference endpoints (taken from the reference set, so the error is
    exactly zero); the consistency function is a fresh reference solve from (x, sigma)."""

    kind = "oracle"

    def __init__(self, teacher: Teacher, spec: SolverSpec) -> None:
        self.teacher = teacher
        self.solver = spec
        self.spec = "ref"
        self.name = "ref"
        self.steps = 1
        self.last_nfe = 0

    def nfe(self, steps=None) -> int:
        return self.last_nfe

    def sample(self, x_start, cond, noise, steps=None):
        sol = solve_reference(self.teacher, x_start, cond, self.solver)
        self.last_nfe = sol.nfe
        return sol.x0

    def __call__(self, x, sigma, cond):
        sig = float(torch.as_tensor(sigma).reshape(-1)[0])
        if sig <= self.teacher.sigma_min:
            return self.teacher.denoise(x, torch.full((x.shape[0],), sig, dtype=x.dtype), cond)
        return solve_reference(self.teacher, x, cond, self.solver, sigma_start=sig).x0

    def describe(self):
        return {**super().describe(), "solver": self.solver.to_dict()}
