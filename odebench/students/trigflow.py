"""TrigFlow (sCM; Lu & Song 2024) students of a rectified-flow teacher, sampled by diffusers' SCMScheduler.

TrigFlow's state is x_s = cos(s) y0 + sin(s) sigma_d z on data y0 = a x0, where x0 is the flow teacher's data
(its latent), a the card's `data_scale` and s in [0, pi/2]; the network's output F gives y0_hat = cos(s) x_s -
sin(s) F (SCMScheduler.step). The map to the teacher's coordinates (x_t, t), x_t = (1 - t) x0 + t z:
    x_s = a cos(s) (x0 + (sigma_d / a) tan(s) z),   x_t = (1 - t) (x0 + t/(1 - t) z),
so both are the same VE state x0 + sigma z, scaled, at EDM noise level
    sigma = (sigma_d / a) tan(s) = t / (1 - t),  i.e.  t = sigma_d sin(s) / (a cos(s) + sigma_d sin(s)),
    x_t = x_s / (a cos(s) + sigma_d sin(s))                                                     (1)
(s = pi/2 is t = 1, pure noise x_s = sigma_d z; s = 0 is t = 0). The TrigFlow PF-ODE is the flow teacher's
PF-ODE in these coordinates, so a TrigFlow student is scored against the flow reference unchanged.
sigma_d matters unless a = sigma_d: SANA-Sprint (diffusers' SanaSprintPipeline) scales the flow latent by
sigma_d (a = sigma_d = 0.5, so tan(s) = t/(1 - t)); sCM's own convention is a = 1 (tan(s) = t/((1 - t) sigma_d)).

A flow network (a LoRA'd or full SD3 / FLUX transformer, or the teacher itself) predicts the velocity v at
(x_t, t); its x0 estimate is x0_hat = x_t - t v, and the F that SCMScheduler needs is
    F = (cos(s) x_s - a x0_hat) / sin(s)                                                        (2)
(= SanaSprintPipeline's sigma_d ((1 - 2t) x_t + (1 - 2t + 2t^2) v) / sqrt(t^2 + (1 - t)^2) when a = sigma_d).
Sampling is the SanaSprintPipeline loop: x_s = sigma_d z at s_0 = max_timesteps; for each s_i but the last
(0), F from (2), (x_s, y0_hat) = SCMScheduler.step(F, s_i, x_s) (re-noising with sigma_d z_i from the
sample's stream i); the sample is y0_hat / a in the teacher's latent units.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from odebench.errors import OdebenchError
from odebench.students.base import NoiseFn

MAX_TIMESTEPS = 1.57080  # SanaSprintPipeline's defaults
INTERMEDIATE_TIMESTEPS = 1.3  # its s_1 at two steps


@dataclass(frozen=True)
class TrigFlow:
    """The TrigFlow parameterisation of a card: sigma_d (SCMScheduler's sigma_data) and the data scale a."""

    sigma_data: float = 0.5
    data_scale: float = 0.5

    def flow_time(self, s: torch.Tensor) -> torch.Tensor:
        """The teacher's t of TrigFlow time s, eq. (1)."""
        c, n = torch.cos(s), torch.sin(s)
        return self.sigma_data * n / (self.data_scale * c + self.sigma_data * n)

    def to_flow(self, x_s: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """x_t of the TrigFlow state x_s, eq. (1)."""
        return x_s / (self.data_scale * torch.cos(s) + self.sigma_data * torch.sin(s))

    def output(self, x_s: torch.Tensor, s: torch.Tensor, x0_hat: torch.Tensor) -> torch.Tensor:
        """F with cos(s) x_s - sin(s) F = a x0_hat, eq. (2)."""
        return (torch.cos(s) * x_s - self.data_scale * x0_hat) / torch.sin(s)

    def network(self, velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        """F(x_s, s) from a flow network `velocity(x_t, t)` (t in [0, 1], shape (B,))."""

        def model(x_s: torch.Tensor, s) -> torch.Tensor:
            s = torch.as_tensor(s, dtype=torch.float64)
            t = self.flow_time(s)
            x_t = self.to_flow(x_s.double(), s).to(x_s.dtype)
            v = velocity(x_t, t.float().reshape(1).expand(x_s.shape[0]))
            x0_hat = x_t.double() - t * v.double()
            return self.output(x_s.double(), s, x0_hat).to(x_s.dtype)

        return model

    def describe(self) -> dict[str, Any]:
        return {"kind": "trigflow", "sigma_data": self.sigma_data, "data_scale": self.data_scale,
                "time_map": f"t = {self.sigma_data:g} sin(s) / ({self.data_scale:g} cos(s) + {self.sigma_data:g} sin(s))",
                "state_map": f"x_t = x_s / ({self.data_scale:g} cos(s) + {self.sigma_data:g} sin(s))",
                "output": "F = (cos(s) x_s - a (x_t - t v)) / sin(s)"}


def scm_scheduler(spec, steps: int | None, sigma_data: float):
    """SCMScheduler as SanaSprintPipeline sets it: s from max_timesteps (pi/2) to 0, s_1 = 1.3 at two steps
    (explicit `timesteps` [s_0, ..., 0] instead when the card gives them); the card's sigma_data."""
    from odebench.students.scheduler import scheduler_class

    cls = scheduler_class(spec.class_name)
    kw = dict(spec.timesteps)
    config = {**spec.config, "sigma_data": sigma_data}
    try:
        sched = cls.from_config(config)
        explicit = kw.pop("timesteps", None)
        if explicit is not None:
            sched.set_timesteps(len(explicit) - 1, timesteps=[float(v) for v in explicit], max_timesteps=None,
                                intermediate_timesteps=None)
        else:
            k = steps or spec.steps
            kw.setdefault("max_timesteps", MAX_TIMESTEPS)
            kw.setdefault("intermediate_timesteps", INTERMEDIATE_TIMESTEPS if k == 2 else None)
            sched.set_timesteps(k, **kw)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OdebenchError(f"{spec.class_name}: {msg[:300]}") from None
    s = sched.timesteps
    if float(s[-1]) != 0.0 or not bool((s[1:] < s[:-1]).all()) or float(s[0]) > math.pi / 2 + 1e-4:
        raise OdebenchError(f"{spec.class_name}: TrigFlow times must descend from at most pi/2 to 0, got {s.tolist()}")
    return sched


@torch.no_grad()
def sample_trigflow(trig: TrigFlow, spec, model: Callable, noise: NoiseFn, like: torch.Tensor,
                    steps: int | None = None) -> torch.Tensor:
    """SanaSprintPipeline's loop (module docstring) with F = `model(x_s, s)`; returns y0_hat / a."""
    sched = scm_scheduler(spec, steps, trig.sigma_data)
    latents = noise(0).to(like.device, torch.float32) * trig.sigma_data
    denoised = latents
    for i, s in enumerate(sched.timesteps[:-1]):
        out = model(latents, s)
        latents, denoised = sched.step(out.to(latents.dtype), s, latents, **spec.step_kwargs(sched, noise, i),
                                       return_dict=False)
    return denoised.float() / trig.data_scale
