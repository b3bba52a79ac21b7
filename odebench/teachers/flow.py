"""Rectified-flow teachers: the velocity view shared by the analytic flow mixtures and the network ones.

Forward process x_t = (1 - t) x0 + t z, the network predicts v = z - x0 (diffusers'
FlowMatchEulerDiscreteScheduler conventions: timestep = 1000 t). A flow teacher's ODE coordinates are
(x_t, t) themselves (odebench.teachers.base.FlowProcess): its denoiser is D(x_t, t) = x_t - t v and its
PF-ODE dx_t/dt = v = (x_t - D)/t has EDM's form with sigma := t, so the reference starts from x_1 = z at
t = 1 exactly (EDM's sigma = t/(1 - t) would be infinite there) and integrates in log t down to t_min,
then x0 = D(x_{t_min}, t_min), the latent the ODE error is measured on (as for the VP teachers, whose
endpoints are the same latents).

The shift (SD3: t' = s t/(1 + (s - 1) t) with s = 3; FLUX.1-dev: exp(mu) from the image's token count)
changes the discretisation a sampler uses, not the ODE: the reference is shift-free; scheduler rows and
students use their own shifted grids (`set_timesteps_kwargs` reproduces each pipeline's call).
"""
from __future__ import annotations

from typing import Any

import torch

from odebench.teachers.base import FLOW, FLOW_VELOCITY, SCHEDULER, Guidance, Teacher

NUM_TRAIN_TIMESTEPS = 1000


def shift_t(t, shift: float):
    """A static flow shift t' = s t / (1 + (s - 1) t) (SD3's s = 3): monotone, fixes 0 and 1."""
    return shift * t / (1 + (shift - 1) * t)


def dynamic_shift_mu(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096,
                     base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """FLUX's resolution-dependent mu: linear in the token count (diffusers' calculate_shift)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + (base_shift - m * base_seq_len)


class FlowModel:
    """The velocity view of a flow teacher (mixed into Teacher subclasses; process = FLOW): the SCHEDULER
    protocol that diffusers' schedulers drive (odebench.students.scheduler rows and student cards).

    Subclasses give `_velocity(x_t, t, cond)` (one model pass, v = z - x0) or `_denoise`; the other
    follows from D = x_t - t v. `model_output` is what a diffusers flow pipeline hands its scheduler: the
    guided velocity at timestep 1000 t (CFG combines velocities; it is linear and the weights sum to 1,
    so it is the same guided ODE as `denoise`'s). `scheduler_config()` is the pipeline's flow scheduler
    config plus the flow-prediction settings (prediction_type flow_prediction, use_flow_sigmas, flow_shift =
    the teacher's shift) that make DPM-Solver / UniPC / DEIS integrate the same velocity field (each class
    takes the keys it knows)."""

    process = FLOW
    pipeline_scheduler_config: dict[str, Any] = {"_class_name": "FlowMatchEulerDiscreteScheduler",
                                                 "num_train_timesteps": NUM_TRAIN_TIMESTEPS, "shift": 1.0}

    def _velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """v(x_t, t) for t of shape (B,); default from the denoiser: v = (x_t - D)/t."""
        tb = t.to(x_t.dtype).reshape((-1,) + (1,) * (x_t.dim() - 1))
        return (x_t - self._denoise(x_t, t, cond)) / tb

    def _velocity_pair(self, x_t, t, cond):
        """(v_uncond, v_cond); network teachers run both branches as one batch."""
        return self._velocity(x_t, t, None), self._velocity(x_t, t, cond)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.pipeline_scheduler_config.get("num_train_timesteps", NUM_TRAIN_TIMESTEPS))

    def model_output(self, x_t: torch.Tensor, timestep, cond=None) -> torch.Tensor:
        """The guided velocity at diffusers timestep(s) `timestep` (= 1000 t); counted like `denoise`."""
        batch = x_t.shape[0]
        t = (torch.as_tensor(timestep, dtype=torch.float64).reshape(-1) / self.num_train_timesteps).expand(batch)
        self.counter.calls += 1
        self.counter.sample_evals += batch
        g = self.guidance
        if cond is None or not g.needs_uncond:
            self.counter.passes += batch
            return self._velocity(x_t, t, cond)
        if not g.needs_cond:
            self.counter.passes += batch
            return self._velocity(x_t, t, None)
        self.counter.passes += 2 * batch
        return g.combine(*self._velocity_pair(x_t, t, cond))

    @property
    def shift(self) -> float:
        """The samplers' time shift: FlowMatch configs call it `shift`, DPM-Solver flow configs (SANA) `flow_shift`."""
        cfg = self.pipeline_scheduler_config
        return float(cfg.get("shift", cfg.get("flow_shift", 1.0)))

    def scheduler_config(self) -> dict[str, Any]:
        cfg = dict(self.pipeline_scheduler_config)
        flow = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": self.shift, "shift": self.shift}
        if cfg.get("use_dynamic_shifting"):
            flow["time_shift_type"] = "exponential"
        return {**flow, **cfg}

    def check_scheduler(self, cls) -> str | None:
        """FlowMatch* schedulers, and the multistep solvers that take prediction_type="flow_prediction"."""
        import inspect

        params = inspect.signature(cls.__init__).parameters
        if cls.__name__.startswith("FlowMatch") or "use_flow_sigmas" in params:
            return None
        return (f"{cls.__name__} cannot integrate a velocity field (flow teachers take FlowMatch* schedulers and "
                "DPMSolverMultistepScheduler / UniPCMultistepScheduler / DEISMultistepScheduler with flow_prediction)")

    def set_timesteps_kwargs(self, scheduler, k: int) -> dict[str, Any]:
        """Extra arguments of `scheduler.set_timesteps(k, ...)` as this teacher's pipeline passes them
        (StableDiffusion3Pipeline: none; FluxPipeline: sigmas = linspace(1, 1/k, k) and mu)."""
        return {}

    def grid_identity(self) -> dict[str, Any]:
        """How samplers of this teacher discretise t (recorded in results; not part of the ODE)."""
        cfg = self.pipeline_scheduler_config
        return {"scheduler": cfg.get("_class_name"), "shift": self.shift,
                "use_dynamic_shifting": bool(cfg.get("use_dynamic_shifting", False)),
                "note": "the shift warps the samplers' grids, not the ODE; the reference is shift-free"}

    def flow_identity(self) -> dict[str, Any]:
        """The ODE's coordinates, for the result's teacher identity."""
        return {"process": self.process.describe(), "t_max": 1.0, "t_min": self.sigma_min,
                "edm_sigma_min": self.sigma_min / (1 - self.sigma_min), "edm_sigma_max": "infinity (t = 1)",
                "reference": "log t from t = 1 (x_1 = z, pure noise exactly) to t_min, then x0 = x_t - t_min v",
                "ode_error_space": "x0 endpoints in the model's latent space (as the VP teachers')"}


class FlowTeacher(FlowModel, Teacher):
    """A network flow teacher: subclasses implement `_velocity` (one transformer pass); D = x_t - t v."""

    family = "flow"
    capabilities = frozenset({FLOW_VELOCITY, SCHEDULER})
    sigma_max = 1.0
    sigma_min = 1.0 / NUM_TRAIN_TIMESTEPS  # the smallest t of the training schedule, shift-free

    def _velocity(self, x_t, t, cond):
        raise NotImplementedError

    def _denoise(self, x, sigma, cond):
        tb = sigma.to(x.dtype).reshape((-1,) + (1,) * (x.dim() - 1))
        return x - tb * self._velocity(x, sigma, cond).to(x.dtype)

    def _denoise_pair(self, x, sigma, cond):
        tb = sigma.to(x.dtype).reshape((-1,) + (1,) * (x.dim() - 1))
        vu, vc = self._velocity_pair(x, sigma, cond)
        return x - tb * vu.to(x.dtype), x - tb * vc.to(x.dtype)

    def ode_identity(self) -> dict[str, Any]:
        return {**super().ode_identity(), "process": self.process.describe()}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "flow": self.flow_identity(), "grid": self.grid_identity()}


def embedded_guidance(guidance: Guidance, default: Guidance) -> Guidance:
    """A guidance-distilled teacher's guidance: a bare --guidance W means the embedded input g = W."""
    from odebench.errors import OdebenchError

    if guidance.embedded:
        return guidance
    if guidance.form == "imagen" and guidance.uncond in ("null", default.uncond):
        return Guidance(guidance.w, "embedded", default.uncond)
    raise OdebenchError(f"this teacher's guidance is an embedded input (guidance-distilled), not CFG: "
                        f"--guidance G sets it; {guidance.describe()} cannot apply")
