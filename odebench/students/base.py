"""The student interface: a consistency function f(x, sigma, cond) -> x0_hat and a k-step sampler."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

import torch

# noise(stream) -> standard normal noise for the batch being sampled, from the noise bank (an
# odebench.ode.noise.SampleNoise, which also hands out per-sample generators for diffusers' schedulers).
NoiseFn = Callable[[int], torch.Tensor]


class Student(ABC):
    spec: str  # what the user asked for ("ddim:4", a path, ...)
    name: str  # a short label and default run-directory name
    steps: int  # default number of sampling steps
    kind: str = "trajectory"  # what it is meant to do: oracle | solver | trajectory | distribution | hybrid (kinds.py)
    format: str = ""  # the registry kind that loaded it (odebench.students.kinds)
    variable_steps: bool = False  # whether sample() accepts other step counts (k-step metrics)
    curve: bool = True  # whether __call__ is a consistency function f(x, sigma) (the per-sigma error curve)
    trained_for: dict[str, Any] | None = None  # the teacher ODE a trained student was distilled from

    @property
    def is_oracle(self) -> bool:
        """The reference itself: zero ODE error by construction (no curve, no floor flag)."""
        return self.kind == "oracle"

    @abstractmethod
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """The consistency function: the student's estimate of the ODE endpoint from (x, sigma)."""

    @abstractmethod
    def sample(self, x_start: torch.Tensor, cond: torch.Tensor | None, noise: NoiseFn,
               steps: int | None = None) -> torch.Tensor:
        """Deterministic k-step sample from x(sigma_max); re-noising draws only from `noise`."""

    @abstractmethod
    def nfe(self, steps: int | None = None) -> int:
        """Network (or teacher) evaluations per sample for `steps` sampling steps."""

    def cache_identity(self, steps: int | None = None) -> dict[str, Any] | None:
        """Everything this student's outputs depend on besides its input tensors, when they may be memoized in
        the trajectory cache (odebench.ode.cache.memoized: deterministic functions of the teacher, e.g. the
        solver rows); None (the default): never cached, a stale sample is worse than a slow one."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec, "name": self.name, "kind": self.kind, "format": self.format,
                "class": type(self).__name__, "steps": self.steps, "nfe": self.nfe(), "trained_for": self.trained_for}
