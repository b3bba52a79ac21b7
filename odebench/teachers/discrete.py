"""Discrete-schedule adapter: a VP model trained on T integer timesteps, seen as an EDM denoiser.

For a VP schedule with cumulative alphas abar_t (Karras et al. 2022, Table 1, "VP" with discrete t):
  sigma_t = sqrt((1 - abar_t)/abar_t); the VE state is x = x_vp / sqrt(abar_t), so x_vp = c_in x
  with c_in = 1/sqrt(1 + sigma^2); pure noise x_vp = z at t = T-1 is x = z sqrt(1 + sigma_max^2).
  epsilon-prediction: D = x - sigma eps;  v-prediction: D = c_in^2 x - sigma c_in v;
  sample-prediction: D = the network output.
A noise level between two trained timesteps maps to a fractional timestep by linear interpolation
of log sigma over the table, as k-diffusion and diffusers' Euler scheduler do. The same adapter
serves the embedded digits UNet, SD 1.x/2.x and SDXL.

Zero terminal SNR (`rescale_betas_zero_snr`, Lin et al. 2024): abar_T = 0 is sigma = infinity, where the VE
state is infinite. The table keeps abar_T = 2^-24 instead (sigma_max = 4096, what diffusers'
EulerDiscreteScheduler does for such schedules): the reference starts from the VP latent z at that level.
Diffusers' own schedulers (odebench.students.scheduler) still start from abar_T = 0 exactly, since they
work on the VP latent, which is finite there.
"""
from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any

import torch

from odebench.teachers.base import DISCRETE, SCHEDULER, VP, Teacher

PREDICTIONS = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TERMINAL_ABAR = 2.0 ** -24  # abar_T of a zero-terminal-SNR table (diffusers' EulerDiscreteScheduler's choice)


def denoised_from_prediction(x: torch.Tensor, s: torch.Tensor, c_in: torch.Tensor, out: torch.Tensor,
                             prediction: str) -> torch.Tensor:
    """D (the x0 estimate) in VE coordinates from a VP network's raw output at noise level s, c_in = 1/sqrt(1 + s^2):
    eps: x - s eps;  v (v = sqrt(abar) eps - sqrt(1 - abar) x0): c_in^2 x - s c_in v;  sample: the output itself."""
    if prediction == "epsilon":
        return x - s * out
    if prediction == "v_prediction":
        return c_in ** 2 * x - s * c_in * out
    return out


def scaled_linear_alphas_cumprod(beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = 1000) -> torch.Tensor:
    """SD/SDXL schedule: betas = linspace(sqrt(b0), sqrt(b1), T)^2, abar = cumprod(1 - betas); float64."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2024, Alg. 1 on sqrt(abar): shift so sqrt(abar_T) = 0, scale so sqrt(abar_0) is kept (float64)."""
    a = alphas_cumprod.double().sqrt()
    a0, a_t = a[0].clone(), a[-1].clone()
    a = (a - a_t) * (a0 / (a0 - a_t))
    return a ** 2


def alphas_cumprod_from_schedule(schedule: dict[str, Any]) -> torch.Tensor:
    """abar_t (float64) of a diffusers scheduler's training schedule: `beta_schedule` linear | scaled_linear |
    squaredcos_cap_v2, beta_start/end, num_train_timesteps, optionally rescale_betas_zero_snr."""
    from odebench.errors import OdebenchError

    kind, beta = schedule.get("kind", "discrete-vp"), schedule.get("beta_schedule", "scaled_linear")
    if kind != "discrete-vp" or beta not in BETA_SCHEDULES:
        raise OdebenchError(f"unsupported schedule {schedule!r} (this odebench knows discrete-vp {', '.join(BETA_SCHEDULES)})")
    try:
        b0, b1, steps = float(schedule.get("beta_start", 0.0001)), float(schedule.get("beta_end", 0.02)), \
            int(schedule["num_train_timesteps"])
    except (KeyError, TypeError, ValueError) as e:
        raise OdebenchError(f"malformed schedule {schedule!r} ({e})") from None
    if beta == "scaled_linear":
        abar = scaled_linear_alphas_cumprod(b0, b1, steps)
    elif beta == "linear":
        abar = torch.cumprod(1.0 - torch.linspace(b0, b1, steps, dtype=torch.float64), dim=0)
    else:  # Nichol & Dhariwal's cosine alpha_bar, betas capped at 0.999 (diffusers' betas_for_alpha_bar)
        def f(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor([min(1 - f((i + 1) / steps) / f(i / steps), 0.999) for i in range(steps)], dtype=torch.float64)
        abar = torch.cumprod(1.0 - betas, dim=0)
    if schedule.get("rescale_betas_zero_snr"):
        abar = rescale_zero_terminal_snr(abar)
    return abar


def schedule_from_scheduler_config(config: dict[str, Any], source: str) -> tuple[dict[str, Any], str]:
    """(the schedule description odebench records, the prediction type) from a scheduler_config.json."""
    from odebench.errors import OdebenchError

    if config.get("trained_betas") is not None:
        raise OdebenchError(f"{source}: trained_betas schedules are not supported")
    schedule = {"kind": "discrete-vp", "beta_schedule": config.get("beta_schedule", "linear"),
                "beta_start": float(config.get("beta_start", 0.0001)), "beta_end": float(config.get("beta_end", 0.02)),
                "num_train_timesteps": int(config.get("num_train_timesteps", 1000))}
    if schedule["beta_schedule"] not in BETA_SCHEDULES:
        raise OdebenchError(f"{source}: beta_schedule {schedule['beta_schedule']!r} is not supported ({', '.join(BETA_SCHEDULES)})")
    if config.get("rescale_betas_zero_snr"):
        schedule["rescale_betas_zero_snr"] = True  # absent otherwise, so older descriptions stay equal
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise OdebenchError(f"{source}: prediction_type {prediction!r} is not supported ({', '.join(PREDICTIONS)})")
    return schedule, prediction


def sigma_to_timestep(sigma: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """Fractional timestep of noise level(s) sigma: linear interpolation of log sigma over the
    increasing table `log_sigmas` (clamped to its range), float64."""
    ls = log_sigmas.to(sigma.device)
    log_sigma = sigma.double().clamp(float(ls[0].exp()), float(ls[-1].exp())).log()
    hi = torch.searchsorted(ls, log_sigma).clamp(1, ls.shape[0] - 1)
    lo = hi - 1
    w = (log_sigma - ls[lo]) / (ls[hi] - ls[lo])
    return lo.double() + w.clamp(0, 1)


class DiscreteVPTeacher(Teacher):
    """Subclasses implement `_model(x_in, t, cond)`: one pass of the network on VP input x_in at
    fractional timesteps t (B,), returning its raw prediction (eps or v).

    `timestep_shift` = 1 reproduces the paper's released DDIM code, which reads abar at index t-1
    but hands the network the integer t (PAPER.md); 0 (default) gives the network the timestep
    that belongs to sigma."""

    timestep_shift: float = 0.0
    capabilities = frozenset({DISCRETE, SCHEDULER})
    process = VP
    schedule: dict[str, Any] | None = None  # the training schedule's description (alphas_cumprod_from_schedule)
    pipeline_scheduler_config: dict[str, Any] | None = None  # a pipeline folder's scheduler_config.json

    def __init__(self, alphas_cumprod: torch.Tensor, prediction: str = "epsilon") -> None:
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}")
        abar = alphas_cumprod.double()
        self.zero_terminal_snr = bool(abar[-1] == 0)
        if self.zero_terminal_snr:  # sigma_T = infinity: a finite start (module docstring)
            abar = abar.clone()
            abar[-1] = TERMINAL_ABAR
        self.alphas_cumprod = abar
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()  # increasing in t
        self.log_sigmas = self.sigmas.log()
        self.prediction = prediction
        self.sigma_min = float(self.sigmas[0])
        self.sigma_max = float(self.sigmas[-1])

    @property
    def num_timesteps(self) -> int:
        return self.sigmas.shape[0]

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep by linear interpolation of log sigma between trained timesteps (float64)."""
        return sigma_to_timestep(sigma, self.log_sigmas)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of sigma_to_t: log sigma interpolated at fractional t."""
        t = t.double().clamp(0, self.num_timesteps - 1)
        lo = t.floor().long().clamp(max=self.num_timesteps - 2)
        w = t - lo
        ls = self.log_sigmas.to(t.device)
        return ((1 - w) * ls[lo] + w * ls[lo + 1]).exp()

    def model_timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The timestep the network sees at noise level sigma (float64)."""
        return self.sigma_to_t(sigma) + self.timestep_shift

    def with_timestep_shift(self, shift: float) -> "DiscreteVPTeacher":
        """A view of this teacher whose network sees sigma's timestep + shift (shares model and counter)."""
        import copy

        other = copy.copy(self)
        other.timestep_shift = float(shift)
        return other

    def ode_identity(self):
        ident = super().ode_identity()
        if self.timestep_shift:  # a different ODE; absent when 0 so existing cache keys stay valid
            ident["timestep_shift"] = self.timestep_shift
        if self.zero_terminal_snr:
            ident["zero_terminal_snr"] = f"abar_T = 0 held at {TERMINAL_ABAR:g}"
        return ident

    @abstractmethod
    def _model(self, x_in: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """Raw network output for VP input x_in at fractional timesteps t; cond None = unconditional."""

    def _scalings(self, x: torch.Tensor, sigma: torch.Tensor):
        s = sigma.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return s, 1.0 / torch.sqrt(1.0 + s ** 2)

    def _to_denoised(self, x: torch.Tensor, s: torch.Tensor, c_in: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return denoised_from_prediction(x, s, c_in, out.to(x.dtype), self.prediction)

    def _model_pair(self, x_in: torch.Tensor, t: torch.Tensor, cond) -> tuple[torch.Tensor, torch.Tensor]:
        """(uncond, cond) raw outputs; network teachers override this to run both branches as one batch."""
        return self._model(x_in, t, None), self._model(x_in, t, cond)

    def _denoise(self, x, sigma, cond):
        s, c_in = self._scalings(x, sigma)
        return self._to_denoised(x, s, c_in, self._model(x * c_in, self.model_timestep(sigma), cond))

    def _denoise_pair(self, x, sigma, cond):
        s, c_in = self._scalings(x, sigma)
        out_u, out_c = self._model_pair(x * c_in, self.model_timestep(sigma), cond)
        return self._to_denoised(x, s, c_in, out_u), self._to_denoised(x, s, c_in, out_c)

    def scheduler_config(self) -> dict[str, Any]:
        """The diffusers scheduler config of this teacher: its pipeline's, else one built from its schedule
        (scheduler rows start from it: `SchedulerClass.from_config(config, **overrides)`)."""
        if self.pipeline_scheduler_config:
            return dict(self.pipeline_scheduler_config)
        s = self.schedule or {}
        # no x0 clipping: DDIM's default clip_sample=True (meant for pixel models) would change the ODE being solved
        cfg = {"num_train_timesteps": self.num_timesteps, "beta_schedule": s.get("beta_schedule", "scaled_linear"),
               "beta_start": s.get("beta_start", 0.00085), "beta_end": s.get("beta_end", 0.012), "prediction_type": self.prediction,
               "clip_sample": False}
        if self.zero_terminal_snr:
            cfg["rescale_betas_zero_snr"] = True
        return cfg

    def check_scheduler(self, cls) -> str | None:
        """Why the diffusers scheduler class `cls` cannot drive this teacher (None if it can): it must be a
        discrete-VP scheduler (one built from betas) that knows this prediction type."""
        import inspect

        params = inspect.signature(cls.__init__).parameters
        if "beta_schedule" not in params:
            return f"{cls.__name__} is not a discrete-VP scheduler (it takes no beta schedule)"
        if "prediction_type" not in params and self.prediction != "epsilon":
            return f"{cls.__name__} supports epsilon-prediction only; this teacher predicts {self.prediction}"
        return None

    def model_output(self, x_in: torch.Tensor, t, cond=None) -> torch.Tensor:
        """The guided raw network output (eps, v or x0) on VP input x_in at timesteps t: what a diffusers
        pipeline hands its scheduler, CFG combined on the outputs as the pipelines do (the combination is
        linear, so it is the same guided ODE as `denoise`'s); counts evaluations and passes like `denoise`."""
        batch = x_in.shape[0]
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(batch)
        self.counter.calls += 1
        self.counter.sample_evals += batch
        g = self.guidance
        if cond is None or not g.needs_uncond:
            self.counter.passes += batch
            return self._model(x_in, t, cond).float()
        if not g.needs_cond:
            self.counter.passes += batch
            return self._model(x_in, t, None).float()
        self.counter.passes += 2 * batch
        out_u, out_c = self._model_pair(x_in, t, cond)
        return g.combine(out_u.float(), out_c.float())
