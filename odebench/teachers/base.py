"""The teacher interface: a denoiser D(x, sigma, cond) in EDM/Karras sigma parameterisation.

The probability-flow ODE of a teacher is dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al.
2022, eq. 1 with sigma(t) = t). Classifier-free guidance is part of that ODE and is applied in
D-space, where it is linear.
"""
from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from odebench.errors import OdebenchError

GUIDANCE_FORMS = ("imagen", "lcm", "embedded")

# Optional protocols a teacher class declares in `capabilities` (never probed with hasattr):
TEXT = "text-conditioned"  # set_prompts(prompts); conditions are prompt indices; condition_inputs(cond, batch)
DECODES = "decodes"  # decode(x) -> uint8 RGB images; grid_count / grid_scale for sample grids
DISCRETE = "discrete-schedule"  # a trained table of T noise levels: sigmas, num_timesteps, sigma_to_t, model_output
UNET = "unet"  # a diffusers UNet2DConditionModel (`unet`, `run_unet`) that students may copy and LoRA
SCHEDULER = "diffusers-scheduler"  # scheduler_config(), check_scheduler(cls), model_output(sample, t, cond): diffusers' schedulers drive it
FLOW_VELOCITY = "flow-velocity"  # a rectified-flow teacher's velocity view (odebench.teachers.flow.FlowModel):
#   model_output(x_t, timestep, cond) -> guided v; scheduler_config; set_timesteps_kwargs(scheduler, k)
TRANSFORMER = "transformer"  # a diffusers flow transformer (`transformer`, `run_transformer`) students may copy and LoRA


class ForwardProcess:
    """How a family's own (native) state maps to EDM's VE state: y = alpha(sigma) x (FAMILIES.md).

    In VE coordinates every family noises the same way, x = x0 + sigma z; only the native state
    differs: VE alpha = 1; discrete VP alpha = 1/sqrt(1 + sigma^2) (y = sqrt(abar) x0 + sqrt(1 - abar) z);
    rectified flow alpha = 1/(1 + sigma) (y = (1 - t) x0 + t z with t = sigma/(1 + sigma)). The native
    state stays finite at sigma = infinity (pure noise y = z for VP and flow), which is where a
    diffusers scheduler starts; `init_scale` maps that pure-noise start to a finite sigma_max."""

    name = "ve"

    def alpha(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(sigma)

    def init_scale(self, sigma_max: float) -> float:
        """x(sigma_max) = init_scale * z: EDM's sigma_max z for a VE teacher."""
        return sigma_max

    def add_noise(self, x0: torch.Tensor, sigma: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The forward process at per-item noise levels sigma (B,) in the teacher's coordinates: x0 + sigma z."""
        return x0 + sigma.to(x0.dtype).reshape((-1,) + (1,) * (x0.dim() - 1)) * z

    def to_native(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        return x * self._view(self.alpha(torch.as_tensor(sigma, dtype=torch.float64)), x)

    def from_native(self, y: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        return y / self._view(self.alpha(torch.as_tensor(sigma, dtype=torch.float64)), y)

    @staticmethod
    def _view(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        a = a.to(x.dtype).to(x.device)
        return a.reshape(-1, *([1] * (x.dim() - 1))) if a.ndim else a

    def describe(self) -> str:
        return "VE: x = x0 + sigma z"


class VPProcess(ForwardProcess):
    """Discrete variance-preserving: x_vp = x / sqrt(1 + sigma^2); pure noise x_vp = z at sigma_max."""

    name = "vp"

    def alpha(self, sigma):
        return 1.0 / torch.sqrt(1.0 + sigma ** 2)

    def init_scale(self, sigma_max):
        """x(sigma_max) = z sqrt(1 + sigma_max^2): VP pure noise z in VE coordinates (DESIGN section 8)."""
        return float((1.0 + sigma_max ** 2) ** 0.5)

    def describe(self):
        return "VP: x_vp = sqrt(abar) x0 + sqrt(1 - abar) z = x / sqrt(1 + sigma^2)"


class FlowProcess(ForwardProcess):
    """Rectified flow (SD3, FLUX.1, SANA; diffusers' FlowMatchEulerDiscreteScheduler): x_t = (1 - t) x0 + t z.

    A flow teacher's ODE coordinates are the latent x_t itself and the noise level t ("sigma" in the
    Teacher interface is t, so sigma_max = 1 is pure noise exactly, x_1 = z). Its PF-ODE is
    dx_t/dt = v = (x_t - D)/t with D = x_t - t v the x0 estimate: EDM's form dx/dsigma = (x - D)/sigma
    with (x, sigma) := (x_t, t), since with v = z - x0 the forward process gives x_t - x0 = t v. So the
    reference solver, the step table (Euler = FlowMatchEuler = DDIM, Heun = FlowMatchHeun) and the grids
    run on it unchanged, and the start t = 1 is finite. In EDM's VE terms sigma_EDM = t/(1 - t) and
    x_VE = x_t/(1 - t) (t = 1 is sigma_EDM = infinity); the endpoint x0 is the same in every coordinate."""

    name = "flow"

    def init_scale(self, t_max):
        """x_1 = z: the pure-noise start at t = 1 (t_max is 1 for every flow teacher)."""
        return float(t_max)

    def add_noise(self, x0, t, z):
        """x_t = (1 - t) x0 + t z (diffusers' FlowMatchEulerDiscreteScheduler.scale_noise)."""
        tb = t.to(x0.dtype).reshape((-1,) + (1,) * (x0.dim() - 1))
        return (1 - tb) * x0 + tb * z

    @staticmethod
    def edm_sigma(t):
        """EDM's noise level of flow time t: sigma = t/(1 - t) (infinite at t = 1)."""
        return t / (1 - t)

    def describe(self):
        return "rectified flow: x_t = (1 - t) x0 + t z, v = z - x0; the teacher's noise level is t (EDM sigma = t/(1 - t))"


VE = ForwardProcess()
VP = VPProcess()
FLOW = FlowProcess()
PROCESSES = {"ve": VE, "vp": VP, "flow": FLOW}


# the precision a teacher's network runs in (--dtype); the ODE state keeps its own dtype (--state-dtype)
NETWORK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


def network_dtype_name(dtype: torch.dtype) -> str:
    """fp32 | bf16 | fp16 | fp64 for a torch dtype."""
    for name, d in NETWORK_DTYPES.items():
        if d == dtype:
            return name
    raise OdebenchError(f"unsupported network dtype {dtype}")


def check_network_dtype(name: str) -> torch.dtype:
    """The torch dtype of a --dtype name; a one-line error names the choices."""
    if name not in NETWORK_DTYPES:
        raise OdebenchError(f"unknown network dtype {name!r}: expected fp16, bf16 or fp32 (or fp64)")
    return NETWORK_DTYPES[name]


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance weight in a named form.

    imagen:   D = D_u + w (D_c - D_u)   (the paper's w = 9)
    lcm:      D = D_c + w (D_c - D_u)   (= imagen with w + 1)
    embedded: D = D_c(x, sigma; g = w)  (not CFG: a guidance-distilled network, e.g. FLUX.1-dev, takes the
              weight as an input; one branch, one pass, and each w is its own ODE; `uncond` is "none")
    `uncond` names the unconditional branch: "null" (null class / full mixture), "zeros" (zero
    text embeddings, the paper) or "empty-prompt".
    """

    w: float = 1.0
    form: str = "imagen"
    uncond: str = "null"

    def __post_init__(self) -> None:
        if self.form not in GUIDANCE_FORMS:
            raise OdebenchError(f"unknown guidance form {self.form!r}: expected one of {', '.join(GUIDANCE_FORMS)}")
        if not math.isfinite(self.w):
            raise OdebenchError(f"guidance weight must be finite, got {self.w}")

    @property
    def embedded(self) -> bool:
        """The weight is an input of the network (guidance distillation), not a combination of two branches."""
        return self.form == "embedded"

    @property
    def imagen_w(self) -> float:
        """The weight in the imagen form, the canonical one used for comparisons and cache keys (an
        embedded weight is its own: it never combines branches)."""
        return self.w + 1.0 if self.form == "lcm" else self.w

    @property
    def needs_uncond(self) -> bool:
        return not self.embedded and self.imagen_w != 1.0

    @property
    def needs_cond(self) -> bool:
        return self.embedded or self.imagen_w != 0.0

    def combine(self, d_uncond: torch.Tensor, d_cond: torch.Tensor) -> torch.Tensor:
        """D_u + w_imagen (D_c - D_u)."""
        return d_uncond + self.imagen_w * (d_cond - d_uncond)

    def same_ode(self, other: "Guidance") -> bool:
        return self.embedded == other.embedded and self.imagen_w == other.imagen_w and self.uncond == other.uncond

    def identity(self) -> dict[str, Any]:
        """The canonical description of the guided ODE (cache keys): lcm w and imagen w + 1 are the same ODE."""
        ident: dict[str, Any] = {"imagen_w": self.imagen_w, "uncond": self.uncond}
        if self.embedded:  # absent otherwise, so existing cache keys stay valid
            ident = {"embedded_w": self.w, "uncond": self.uncond}
        return ident

    def to_dict(self) -> dict[str, Any]:
        if self.embedded:
            return {"w": self.w, "form": self.form, "uncond": self.uncond}
        return {"w": self.w, "form": self.form, "uncond": self.uncond, "imagen_w": self.imagen_w}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Guidance":
        try:
            return cls(w=float(d["w"]), form=str(d.get("form", "imagen")), uncond=str(d.get("uncond", "null")))
        except (KeyError, TypeError, ValueError) as e:
            raise OdebenchError(f"malformed guidance {d!r}: {e}") from None

    def describe(self) -> str:
        if self.embedded:
            return f"embedded guidance g={self.w:g} (a network input, not CFG: one branch)"
        return f"w={self.w:g} ({self.form}; imagen w={self.imagen_w:g}, uncond={self.uncond})"


@dataclass
class EvalCounter:
    """Teacher work done: denoiser calls, per-sample evaluations, and model passes (CFG doubles)."""

    calls: int = 0
    sample_evals: int = 0
    passes: int = 0

    def snapshot(self) -> "EvalCounter":
        return copy.copy(self)

    def since(self, before: "EvalCounter") -> "EvalCounter":
        return EvalCounter(self.calls - before.calls, self.sample_evals - before.sample_evals,
                           self.passes - before.passes)


class Teacher(ABC):
    """A diffusion teacher seen through its denoiser; subclasses implement `_denoise` only.

    `family` names its TeacherFamily (odebench.teachers.family: loading, default rows, paper grid,
    quality metrics); `capabilities` declares the optional protocols above; `process` is its forward
    process (the hooks initial_state / add_noise / renoise below work in VE coordinates through it)."""

    name: str
    family: str = ""
    capabilities: frozenset[str] = frozenset()
    process: ForwardProcess = VE
    device: torch.device = torch.device("cpu")  # where the network runs and the ODE state lives
    shape: tuple[int, ...]  # shape of one sample
    sigma_min: float
    sigma_max: float
    num_classes: int | None = None  # None: unconditional only
    default_dtype: torch.dtype = torch.float32
    default_conditional: bool = False
    default_guidance: Guidance = Guidance()
    default_samples: int = 1024
    grid_count: int = 100  # DECODES: samples in a run's samples.png
    grid_scale: int = 4  # DECODES: pixel upscaling of that grid

    def __init__(self) -> None:
        self.guidance = self.default_guidance
        self.counter = EvalCounter()

    # -- what subclasses provide -------------------------------------------------------------
    @abstractmethod
    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """One model pass: D(x, sigma) for sigma of shape (B,); cond None means unconditional."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A stable hash of everything that defines the denoiser (weights / parameters)."""

    @abstractmethod
    def spec(self) -> Any:
        """A JSON-able description from which `load_teacher` rebuilds this teacher."""

    @property
    @abstractmethod
    def sigma_data(self) -> float:
        """Data standard deviation used by EDM-style student preconditioning."""

    def has(self, capability: str) -> bool:
        return capability in self.capabilities

    # -- the forward process (hooks; VE coordinates) ----------------------------------------
    def init_noise_scale(self) -> float:
        """x(sigma_max) = scale * z: the forward process's pure-noise start at sigma_max."""
        return self.process.init_scale(self.sigma_max)

    def initial_state(self, z: torch.Tensor) -> torch.Tensor:
        """The ODE's start x(sigma_max) for standard normal noise z."""
        return z * self.init_noise_scale()

    def add_noise(self, x0: torch.Tensor, sigma: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The forward process at per-item noise levels sigma (B,) in the teacher's coordinates: x = x0 + sigma z
        (VE coordinates, VE and VP teachers); x_t = (1 - t) x0 + t z for flow teachers."""
        return self.process.add_noise(x0, sigma, z)

    def renoise(self, x0: torch.Tensor, sigma: float, z: torch.Tensor) -> torch.Tensor:
        """A multistep sampler's jump back to noise level sigma from an x0 estimate (LCMScheduler's
        sqrt(abar) x0 + sqrt(1 - abar) z in VP terms is this in VE coordinates)."""
        return self.process.add_noise(x0, torch.full((x0.shape[0],), float(sigma), dtype=torch.float64), z)

    def set_timesteps_kwargs(self, scheduler, k: int) -> dict[str, Any]:
        """SCHEDULER teachers: what this teacher's pipeline passes to `scheduler.set_timesteps(k, ...)` besides k
        (none for the UNet pipelines; FLUX's sigmas and dynamic-shift mu, odebench.teachers.flow_pipelines)."""
        return {}

    # -- the guided denoiser ---------------------------------------------------------------
    def denoise(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The guided denoiser of this teacher's PF-ODE; counts evaluations and passes."""
        batch = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(batch)
        self.counter.calls += 1
        self.counter.sample_evals += batch
        g = self.guidance
        if cond is None or not g.needs_uncond:
            self.counter.passes += batch
            return self._denoise(x, sigma, cond)
        if not g.needs_cond:
            self.counter.passes += batch
            return self._denoise(x, sigma, None)
        self.counter.passes += 2 * batch
        return g.combine(*self._denoise_pair(x, sigma, cond))

    def _denoise_pair(self, x: torch.Tensor, sigma: torch.Tensor, cond) -> tuple[torch.Tensor, torch.Tensor]:
        """(D_uncond, D_cond); network teachers override this to run both branches as one batch."""
        return self._denoise(x, sigma, None), self._denoise(x, sigma, cond)

    # -- network precision -------------------------------------------------------------------
    @property
    def network_dtype(self) -> str | None:
        """fp32 | bf16 | fp16 | fp64 for a network teacher; None for an analytic one (it computes in the state dtype)."""
        return None

    def with_network_dtype(self, dtype: str) -> "Teacher":
        """A view of this teacher whose network runs in `dtype` (shares the eval counter)."""
        check_network_dtype(dtype)
        raise OdebenchError(f"--dtype sets a network's precision; teacher {self.name!r} is analytic "
                            "(it computes in the ODE state's dtype: use --state-dtype)")

    # -- identity ----------------------------------------------------------------------------
    def with_guidance(self, guidance: Guidance) -> "Teacher":
        other = copy.copy(self)
        other.guidance = guidance
        return other

    def ode_identity(self) -> dict[str, Any]:
        """Everything that defines the ODE being solved and the numbers of its solves (cache keys).

        The network's precision changes the numbers but not the ODE a student was trained for, so it
        is here and not in `fingerprint()` (which students are matched against)."""
        ident = {
            "teacher": self.name,
            "fingerprint": self.fingerprint(),
            # canonical: lcm w and imagen w+1 are the same ODE and share cache entries
            "guidance": self.guidance.identity(),
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "init_noise_scale": self.init_noise_scale(),
        }
        if self.network_dtype is not None:
            ident["network_dtype"] = self.network_dtype
        return ident

    def describe(self) -> dict[str, Any]:
        return {**self.ode_identity(), "guidance": self.guidance.to_dict(), "spec": self.spec(), "shape": list(self.shape),
                "num_classes": self.num_classes, "sigma_data": self.sigma_data}
