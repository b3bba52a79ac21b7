"""Trained consistency students: a network in the EDM-CM parameterisation and the CM multistep sampler."""
from __future__ import annotations

import math
from typing import Any

import torch

from odebench.ode.grids import karras_sigmas
from odebench.students.base import NoiseFn, Student


class ConsistencyStudent(Student):
    """Multistep consistency sampling (Song et al. 2023, Alg. 1): x0 = f(x, sigma_0); then for each
    later level x = x0 + sqrt(sigma_i^2 - sigma_min^2) z_i and x0 = f(x, sigma_i); z_i from the
    sample's own noise stream i. Levels: the first k of a (k+1)-level Karras grid (rho = 7)."""

    variable_steps = True

    def __init__(self, model: torch.nn.Module, sidecar: dict[str, Any], spec: str, name: str) -> None:
        self.model = model.eval()
        self.sidecar = sidecar
        self.spec = spec
        self.name = name
        sampler = sidecar["sampler"]
        self.steps = int(sampler.get("steps", 1))
        self.rho = float(sampler.get("rho", 7.0))
        teacher_spec = sidecar["teacher"].get("spec") or {}
        self.sigma_min = float(sidecar["parameterisation"]["sigma_min"])
        self.sigma_max = float(sampler.get("sigma_max", teacher_spec.get("sigma_max", 80.0) if isinstance(teacher_spec, dict) else 0.0))
        self.dtype = next(model.parameters()).dtype
        # a flow teacher's student (odebench.teachers.flow): its noise level is t and it re-noises with the flow process
        self.flow = isinstance(teacher_spec, dict) and teacher_spec.get("process") == "flow"
        self.trained_for = {"teacher": sidecar["teacher"].get("name"), "fingerprint": sidecar["teacher"].get("fingerprint"),
                            "guidance": sidecar["guidance"], "conditional": bool(sidecar.get("conditional", False))}

    def nfe(self, steps=None) -> int:
        return self.steps if steps is None else steps

    @torch.no_grad()
    def __call__(self, x, sigma, cond):
        sigma = torch.as_tensor(sigma, dtype=self.dtype).reshape(-1).expand(x.shape[0])
        return self.model(x.to(self.dtype), sigma, cond).to(x.dtype)

    @torch.no_grad()
    def sample(self, x_start, cond, noise: NoiseFn, steps=None):
        k = self.steps if steps is None else steps
        if self.sidecar["sampler"].get("kind") == "lcm":
            # the paper's LCM schedule: timesteps T, T - T/k, ..., T/k (1-indexed; t sits at sigma_{t-1})
            total = int(self.sidecar["sampler"]["num_train_timesteps"])
            t = torch.arange(total, 0, -(total // k))[:k]
            sigmas = self.model.log_sigmas[t - 1].exp()
        else:
            # k levels from sigma_max, all strictly above sigma_min: the Karras grid of k+1 levels without
            # its last one (at sigma_min, f is the identity and a step there would do nothing)
            sigmas = karras_sigmas(k + 1, self.sigma_min, self.sigma_max, self.rho)[:-1]
        x0 = self(x_start, float(sigmas[0]), cond)
        for i in range(1, k):
            sig = float(sigmas[i])
            if self.flow:  # the teacher's forward process at t = sig: x_t = (1 - t) x0 + t z
                x = (1 - sig) * x0 + sig * noise(i).to(x0)
            else:
                x = x0 + math.sqrt(max(sig ** 2 - self.sigma_min ** 2, 0.0)) * noise(i).to(x0)
            x0 = self(x, sig, cond)
        return x0

    def describe(self):
        return {**super().describe(), "architecture": self.sidecar["architecture"],
                "parameterisation": self.sidecar["parameterisation"], "sampler": self.sidecar["sampler"],
                "weights_sha256": self.sidecar.get("weights_sha256"), "step": self.sidecar.get("step")}


def export_mlp_student(stem, model, teacher, conditional: bool, steps: int = 1,
                       training: dict[str, Any] | None = None, step: int = 0):
    """Write an MLP consistency network in the odebench student format for `teacher`'s current ODE."""
    from odebench.students.checkpoint import save_student

    sidecar = {
        "architecture": model.config(),
        "parameterisation": {"kind": "edm-cm", "sigma_data": model.sigma_data, "sigma_min": model.sigma_min},
        "sampler": {"steps": int(steps), "grid": "karras", "rho": 7.0, "sigma_max": teacher.sigma_max},
        "teacher": {"name": teacher.name, "fingerprint": teacher.fingerprint(), "spec": teacher.spec()},
        "guidance": teacher.guidance.to_dict(),
        "conditional": bool(conditional),
        "training": training or {},
        "step": int(step),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }
    return save_student(stem, model.state_dict(), sidecar)


def export_unet_lcm_student(stem, model, teacher, conditional: bool, steps: int = 1,
                            training: dict[str, Any] | None = None, step: int = 0):
    """Write a UNetLCM student (odebench.students.unet_lcm) for a discrete UNet teacher's current ODE."""
    from odebench.students.checkpoint import save_student

    sidecar = {
        "architecture": {"kind": "unet-lcm", "unet_config": dict(model.unet.config), "null_class": model.null_class,
                         "schedule": teacher.schedule},
        "parameterisation": {"kind": "lcm", "sigma_data": model.sigma_data, "timestep_scaling": model.timestep_scaling,
                             "sigma_min": 0.0},
        "sampler": {"kind": "lcm", "steps": int(steps), "num_train_timesteps": teacher.num_timesteps},
        "teacher": {"name": teacher.name, "fingerprint": teacher.fingerprint(), "spec": teacher.spec()},
        "guidance": teacher.guidance.to_dict(),
        "conditional": bool(conditional),
        "training": training or {},
        "step": int(step),
        "dtype": "float32",
    }
    return save_student(stem, model.state_dict(), sidecar)
