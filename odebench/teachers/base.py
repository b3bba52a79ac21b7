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

GUIDANCE_FORMS = ("imagen", "lcm")
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

    imagen: D = D_u + w (D_c - D_u)   (the paper's w = 9)
    lcm:    D = D_c + w (D_c - D_u)   (= imagen with w + 1)
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
    def imagen_w(self) -> float:
        """The weight in the imagen form, the canonical one used for comparisons and cache keys."""
        return self.w if self.form == "imagen" else self.w + 1.0

    @property
    def needs_uncond(self) -> bool:
        return self.imagen_w != 1.0

    @property
    def needs_cond(self) -> bool:
        return self.imagen_w != 0.0

    def combine(self, d_uncond: torch.Tensor, d_cond: torch.Tensor) -> torch.Tensor:
        """D_u + w_imagen (D_c - D_u)."""
        return d_uncond + self.imagen_w * (d_cond - d_uncond)

    def same_ode(self, other: "Guidance") -> bool:
        return self.imagen_w == other.imagen_w and self.uncond == other.uncond

    def to_dict(self) -> dict[str, Any]:
        return {"w": self.w, "form": self.form, "uncond": self.uncond, "imagen_w": self.imagen_w}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Guidance":
        try:
            return cls(w=float(d["w"]), form=str(d.get("form", "imagen")), uncond=str(d.get("uncond", "null")))
        except (KeyError, TypeError, ValueError) as e:
            raise OdebenchError(f"malformed guidance {d!r}: {e}") from None

    def describe(self) -> str:
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
    """A diffusion teacher seen through its denoiser; subclasses implement `_denoise` only."""

    name: str
    shape: tuple[int, ...]  # shape of one sample
    sigma_min: float
    sigma_max: float
    num_classes: int | None = None  # None: unconditional only
    default_dtype: torch.dtype = torch.float32
    default_conditional: bool = False
    default_guidance: Guidance = Guidance()
    default_students: tuple[str, ...] = ("ddim:1", "ddim:2", "ddim:4", "ddim:16", "heun:8", "ref")
    default_samples: int = 1024

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

    def init_noise_scale(self) -> float:
        """x(sigma_max) = scale * z; EDM's sigma_max for a VE teacher (discrete VP adapters override)."""
        return self.sigma_max

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
            "guidance": {"imagen_w": self.guidance.imagen_w, "uncond": self.guidance.uncond},
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
