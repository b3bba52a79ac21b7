"""Scheduler rows of flow teachers: a diffusers flow scheduler at K steps driving the teacher itself.

`FlowMatchEulerDiscreteScheduler:K`, `FlowMatchHeunDiscreteScheduler:K`, `DPMSolverMultistepScheduler:K`,
`UniPCMultistepScheduler:K` (with `prediction_type="flow_prediction"`, `use_flow_sigmas=True` and the
teacher's shift), optionally with config overrides `Name:K:key=value,key=value`. A row samples as the
teacher's diffusers pipeline does: latents x_1 = z (the run's noise), the scheduler's own shifted grid
(`set_timesteps(K, **teacher.set_timesteps_kwargs)`: SD3 none, FLUX sigmas + mu), and at every timestep
the teacher's guided velocity (`model_output`), then `scheduler.step`. The endpoint is the latent at
t = 0: the x0 the ODE error compares.

The consistency function f(x_t, t) of a row (for the per-t error curve) runs the row's order on the
row's own t-levels scaled into (0, t] (t_i * t, i.e. the same grid shape started at t) with the step
table (odebench.ode.steps: Euler in t is FlowMatchEuler's step; Heun in t is FlowMatchHeun's).
"""
from __future__ import annotations

import json
import re
from typing import Any

import torch

from odebench.errors import OdebenchError
from odebench.students.base import NoiseFn, Student
from odebench.students.kinds import StudentKind, register
from odebench.teachers.base import FLOW_VELOCITY

ROW_RE = re.compile(r"^([A-Za-z0-9]+Scheduler):(\d+)(?::(.*))?$")
FLOW_MATCH = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
FLOW_PREDICTION = ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "DPMSolverSinglestepScheduler",
                   "DEISMultistepScheduler", "SASolverScheduler")  # diffusers schedulers with flow_prediction
ORDER = {"FlowMatchHeunDiscreteScheduler": "heun"}  # curve scheme; others euler (first order at the curve)


def parse_overrides(text: str | None, spec: str) -> dict[str, Any]:
    """`key=value,key=value` -> config overrides; values parsed as JSON (numbers, true/false, strings)."""
    out: dict[str, Any] = {}
    for item in filter(None, (text or "").split(",")):
        if "=" not in item:
            raise OdebenchError(f"student {spec!r}: scheduler override {item!r} must look like key=value")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except ValueError:
            out[k.strip()] = v
    return out


def scheduler_class(name: str, spec: str):
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "set_timesteps"):
        raise OdebenchError(f"student {spec!r}: diffusers has no scheduler class {name!r}")
    return cls


def row_config(teacher, name: str, overrides: dict[str, Any], spec: str) -> dict[str, Any]:
    """The scheduler config of a row: the teacher's flow config, and for the non-FlowMatch schedulers the
    flow-prediction settings that make them integrate the same velocity field (SANA's own configuration)."""
    base = {k: v for k, v in teacher.scheduler_config.items() if not k.startswith("_")}
    if name in FLOW_MATCH:
        return {**base, **overrides}
    if name not in FLOW_PREDICTION:
        raise OdebenchError(f"student {spec!r}: {name} cannot sample a flow teacher (flow rows: "
                            f"{', '.join(FLOW_MATCH + FLOW_PREDICTION)})")
    flow = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "num_train_timesteps": base.get("num_train_timesteps", 1000),
            "flow_shift": float(base.get("shift", 1.0))}
    if base.get("use_dynamic_shifting"):
        flow.update(use_dynamic_shifting=True, time_shift_type="exponential")
    return {**flow, **overrides}


class FlowSchedulerStudent(Student):
    """A diffusers flow scheduler on the teacher's velocity (module docstring)."""

    kind = "solver"
    variable_steps = True

    def __init__(self, teacher, name: str, steps: int, overrides: dict[str, Any], spec: str) -> None:
        self.teacher = teacher
        self.scheduler_name = name
        self.cls = scheduler_class(name, spec)
        self.config = row_config(teacher, name, overrides, spec)
        self.overrides = overrides
        self.steps = int(steps)
        self.spec = spec
        self.name = f"{name.replace('DiscreteScheduler', '').replace('Scheduler', '')}-{steps}" + ("-" + "-".join(f"{k}{v}" for k, v in overrides.items()) if overrides else "")
        if self.config.get("stochastic_sampling"):
            raise OdebenchError(f"student {spec!r}: stochastic_sampling draws noise outside the run's noise streams; not a row")
        self.scheduler(self.steps)  # a bad config fails at load, before any solving

    def scheduler(self, k: int):
        """A fresh scheduler set to k steps as the teacher's pipeline sets it."""
        try:
            s = self.cls.from_config(self.config)
            s.set_timesteps(k, **self.teacher.set_timesteps_kwargs(s, k))
        except (TypeError, ValueError, AssertionError) as e:
            raise OdebenchError(f"student {self.spec!r}: {self.scheduler_name} rejects this setup ({e})") from None
        return s

    def nfe(self, steps=None) -> int:
        return len(self.scheduler(self.steps if steps is None else steps).timesteps)

    @torch.no_grad()
    def sample(self, x_start, cond, noise: NoiseFn, steps=None):
        s = self.scheduler(self.steps if steps is None else steps)
        x = x_start * float(getattr(s, "init_noise_sigma", 1.0))  # x_1 = z (flow schedulers: 1)
        scale = getattr(s, "scale_model_input", None)  # the FlowMatch schedulers have none
        for t in s.timesteps:
            v = self.teacher.model_output(scale(x, t) if scale is not None else x, t, cond)
            x = s.step(v.to(x.dtype), t, x, return_dict=False)[0]  # FlowMatch steps compute in float32
        return x.to(x_start.dtype)

    def levels(self, k: int) -> list[float]:
        """The row's distinct t-levels (descending, > 0)."""
        s = self.scheduler(k)
        n = float(self.config.get("num_train_timesteps", 1000))
        return sorted({float(t) / n for t in s.timesteps if float(t) > 0}, reverse=True)

    @torch.no_grad()
    def __call__(self, x, sigma, cond):
        from odebench.ode.steps import solve

        t = float(torch.as_tensor(sigma).reshape(-1)[0])
        grid = [lv * t for lv in self.levels(self.steps)]
        return solve(self.teacher, x, grid, cond, ORDER.get(self.scheduler_name, "euler"))

    def describe(self):
        s = self.scheduler(self.steps)
        return {**super().describe(), "scheduler": self.scheduler_name, "config": self.config,
                "set_timesteps": {k: (v if not hasattr(v, "tolist") else v.tolist())
                                  for k, v in self.teacher.set_timesteps_kwargs(s, self.steps).items()},
                "timesteps": [float(t) for t in s.timesteps], "sigmas": [float(v) for v in s.sigmas]}


class FlowSchedulerKind(StudentKind):
    name = "flow-scheduler"
    help = ("FlowMatchEulerDiscreteScheduler:K | FlowMatchHeunDiscreteScheduler:K | DPMSolverMultistepScheduler:K | "
            "UniPCMultistepScheduler:K[:key=value,...] (flow teachers: a diffusers flow scheduler at K steps on the "
            "teacher's velocity, its pipeline's shifted grid)")
    priority = 20

    def matches(self, spec):
        return bool(ROW_RE.match(spec))

    def load(self, spec, ctx):
        name, k, extra = ROW_RE.match(spec).groups()
        if int(k) < 1:
            raise OdebenchError(f"student {spec!r}: the step count K must be a positive integer")
        if not ctx.teacher.has(FLOW_VELOCITY):
            raise OdebenchError(f"student {spec!r}: scheduler rows in this odebench drive flow teachers; "
                                f"{ctx.teacher.name!r} is not one")
        return FlowSchedulerStudent(ctx.teacher, name, int(k), parse_overrides(extra, spec), spec), None


register(FlowSchedulerKind())
