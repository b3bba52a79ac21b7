"""Analytic Gaussian-mixture teachers: the exact denoiser of a diagonal-covariance mixture.

With one component the PF-ODE has the closed-form flow
x(sigma) = mu + (x(sigma_0) - mu) sqrt(s^2 + sigma^2)/sqrt(s^2 + sigma_0^2), which the tests
use to check the reference solver.

Under the rectified-flow process (`"process": "flow"`, presets gmm-flow / gmm64-flow) the same mixture
is an exact flow teacher: the state is x_t = (1 - t) x0 + t z, the noise level is t in [t_min, 1]
(odebench.teachers.base.FlowProcess) and D(x_t, t) = E[x0 | x_t] exactly, so v = (x_t - D)/t is the
exact velocity; one component has the closed-form flow
x_t = (1 - t) mu + (x_t0 - (1 - t0) mu) sqrt((1 - t)^2 s^2 + t^2)/sqrt((1 - t0)^2 s^2 + t0^2),
from x_1 = z at t = 1: pure noise exactly.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from odebench.errors import OdebenchError
from odebench.mixture import GaussianMixture
from odebench.schema import Arr, Bool, Int, Num, Obj, OneOf, Opt, Str, validate
from odebench.teachers.base import FLOW, FLOW_VELOCITY, SCHEDULER, VE, Teacher
from odebench.teachers.family import TeacherFamily, register
from odebench.teachers.flow import FlowModel

DEFAULT_SIGMA_MIN = 0.002
DEFAULT_SIGMA_MAX = 80.0
DEFAULT_T_MIN = 0.002  # a flow teacher's t_min (its "sigma_min"; EDM sigma 0.002004)
PROCESSES = {"ve": VE, "flow": FLOW}  # the forward processes a mixture teacher can be seen under
FLOW_ROWS = ("flow-euler:1", "flow-euler:2", "flow-euler:4", "flow-euler:16", "flow-heun:8", "ref")


class GMMTeacher(Teacher):
    """Exact mixture teacher; class c conditions on the sub-mixture of components labelled c."""

    family = "gmm"
    default_dtype = torch.float64  # small domain: integrate in float64 (DESIGN section 8)

    def __init__(self, means, stds, weights=None, classes=None, sigma_min: float = DEFAULT_SIGMA_MIN,
                 sigma_max: float = DEFAULT_SIGMA_MAX, name: str = "gmm", conditional: bool = False,
                 process: str = "ve") -> None:
        super().__init__()
        if process not in PROCESSES:
            raise OdebenchError(f"unknown process {process!r}: expected {' or '.join(PROCESSES)}")
        self.process = PROCESSES[process]
        if process == "flow" and sigma_max != 1.0:
            raise OdebenchError(f"a flow teacher's noise level is t in (0, 1]: sigma_max must be 1, got {sigma_max}")
        means = torch.as_tensor(means, dtype=torch.float64)
        k, d = means.shape
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if stds.ndim == 1:
            stds = stds[:, None].expand(k, d)
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        weights = weights / weights.sum()
        classes = torch.arange(k) if classes is None else torch.as_tensor(classes, dtype=torch.long)
        self.mixture = GaussianMixture(means, stds.contiguous(), weights)
        self.classes = classes
        self.num_classes = int(classes.max()) + 1
        self.name = name
        self.shape = (d,)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.default_conditional = conditional
        self._fingerprint: str | None = None

    # -- denoiser ----------------------------------------------------------------------------
    def class_mask(self, cond: torch.Tensor | None) -> torch.Tensor | None:
        """(B, K) components allowed for each row's class; None for the full mixture."""
        if cond is None:
            return None
        return self.classes.to(cond.device)[None, :] == cond[:, None]

    def _denoise(self, x, sigma, cond):
        if self.process is FLOW:  # sigma is flow time t here
            return self.mixture.flow_posterior_mean(x, sigma, self.class_mask(cond))
        return self.mixture.posterior_mean(x, sigma, self.class_mask(cond))

    def log_prob(self, x: torch.Tensor, sigma=0.0, cond: torch.Tensor | None = None) -> torch.Tensor:
        """log p_sigma(x | cond), exact (unguided), of the VE process (at sigma = 0: the data density, any process)."""
        return self.mixture.log_prob(x, sigma, self.class_mask(cond))

    @property
    def sigma_data(self) -> float:
        return float(self.mixture.total_variance().mean().sqrt())

    # -- identity ----------------------------------------------------------------------------
    def ode_identity(self):
        ident = super().ode_identity()
        if self.process is FLOW:  # absent for VE, so existing cache keys stay valid
            ident["process"] = self.process.describe()
        return ident

    def spec(self) -> dict[str, Any]:
        m = self.mixture
        extra = {"process": self.process.name} if self.process is FLOW else {}  # VE specs (and fingerprints) unchanged
        return {**extra, 
            "kind": "gmm",
            "name": self.name,
            "means": m.means.tolist(),
            "stds": m.stds.tolist(),
            "weights": m.weights.tolist(),
            "classes": self.classes.tolist(),
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "conditional": self.default_conditional,
        }

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            spec = self.spec()
            spec.pop("name")  # a renamed copy is the same teacher
            spec.pop("conditional")  # a default of the CLI, not of the ODE
            blob = json.dumps(spec, sort_keys=True, separators=(",", ":"))
            self._fingerprint = "gmm-" + hashlib.sha256(blob.encode()).hexdigest()[:16]
        return self._fingerprint


class GMMFlowTeacher(FlowModel, GMMTeacher):
    """The mixture under the rectified-flow process: D(x_t, t) = E[x0 | x_t] exactly, v = (x_t - D)/t
    exactly, and the velocity view diffusers' flow schedulers sample with (odebench.teachers.flow)."""

    capabilities = frozenset({FLOW_VELOCITY, SCHEDULER})

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "process": "flow"})

    def describe(self):
        return {**super().describe(), "flow": self.flow_identity(), "grid": self.grid_identity()}


# Means, stds and noise levels are bounded so that squared distances stay far from float overflow
# (a mean of 1e300 is a finite JSON number whose square is inf; weights of 1e308 sum to inf).
BOUND = 1e8
_POSITIVE = Num(gt=0, le=BOUND)
GMM_SCHEMA = Obj({
    "kind": Str(("gmm",)),
    "name": Str(nonempty=True),
    "means": Arr(Arr(Num(abs_le=BOUND), min_len=1), min_len=1),
    "stds": Arr(OneOf(_POSITIVE, Arr(_POSITIVE, min_len=1)), min_len=1),
    "weights": Opt(Arr(_POSITIVE, min_len=1)),
    "classes": Opt(Arr(Int(ge=0), min_len=1)),
    "sigma_min": _POSITIVE,
    "sigma_max": _POSITIVE,
    "conditional": Bool(),
    "process": Str(tuple(PROCESSES)),
}, required=("kind", "means", "stds"), extra=False)


def gmm_from_spec(spec: dict[str, Any], source: str) -> GMMTeacher:
    """Validate a `{"kind": "gmm", ...}` definition (GMM_SCHEMA, then shapes) and build the teacher under its
    forward process (VE by default, or the rectified flow); one-line errors."""
    if not isinstance(spec, dict):
        raise OdebenchError(f"{source}: a teacher definition must be a JSON object")
    if spec.get("kind") != "gmm":
        raise OdebenchError(f"{source}: unsupported teacher kind {spec.get('kind')!r} (expected \"gmm\")")
    validate(spec, GMM_SCHEMA, source)
    means = spec["means"]
    k, d = len(means), len(means[0])
    if any(len(row) != d for row in means):
        raise OdebenchError(f"{source}: 'means' must be a list of K equal-length lists of numbers")
    means_t = torch.tensor(means, dtype=torch.float64)
    # each component's std is a number (isotropic) or a list of d numbers (diagonal)
    stds = spec["stds"]
    if len(stds) != k or any(isinstance(s, list) and len(s) != d for s in stds):
        raise OdebenchError(f"{source}: 'stds' must be K={k} entries, each a number or a list of d={d} numbers")
    stds_t = torch.tensor([s if isinstance(s, list) else [s] * d for s in stds], dtype=torch.float64)
    weights_t = None
    if spec.get("weights") is not None:
        if len(spec["weights"]) != k:
            raise OdebenchError(f"{source}: 'weights' must be K={k} positive numbers")
        weights_t = torch.tensor(spec["weights"], dtype=torch.float64)
    classes_t = None
    if spec.get("classes") is not None:
        classes = spec["classes"]
        if len(classes) != k:
            raise OdebenchError(f"{source}: 'classes' must be K={k} non-negative integers")
        classes_t = torch.tensor(classes)
        missing = sorted(set(range(int(classes_t.max()) + 1)) - set(classes))
        if missing:
            raise OdebenchError(f"{source}: 'classes' must number classes 0..C-1 without gaps (missing {missing})")
    flow = spec.get("process", "ve") == "flow"
    sigma_min = float(spec.get("sigma_min", DEFAULT_T_MIN if flow else DEFAULT_SIGMA_MIN))
    sigma_max = float(spec.get("sigma_max", 1.0 if flow else DEFAULT_SIGMA_MAX))
    if not sigma_min < sigma_max:
        raise OdebenchError(f"{source}: need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
    if flow and sigma_max != 1.0:
        raise OdebenchError(f"{source}: a flow teacher's noise level is t, pure noise at t = 1: 'sigma_max' must be 1, got {sigma_max}")
    cls = GMMFlowTeacher if flow else GMMTeacher
    return cls(means_t, stds_t, weights_t, classes_t, sigma_min, sigma_max,
               name=str(spec.get("name", "gmm")), conditional=bool(spec.get("conditional", False)))


def preset_spec(name: str) -> dict[str, Any]:
    """The definition of a named preset (odebench/assets/teachers/NAME.json)."""
    from importlib import resources

    return json.loads(resources.files("odebench.assets").joinpath("teachers", f"{name}.json").read_text())


class GMMFamily(TeacherFamily):
    """Analytic mixtures: the presets in odebench/assets/teachers, an inline definition, or a JSON file."""

    name = "gmm"
    help = "analytic Gaussian mixture with an exact score: a preset or a teacher JSON file"
    presets = {
        "gmm": "2-D ring of 8 isotropic Gaussians (one class each), exact score",
        "gmm64": "64-D mixture of 16 diagonal Gaussians in 4 classes, exact score",
        "gmm-flow": "the gmm ring under the rectified-flow process x_t = (1 - t) x0 + t z, exact velocity",
        "gmm64-flow": "the gmm64 mixture under the rectified-flow process, exact velocity",
    }

    def matches(self, spec) -> bool:
        if isinstance(spec, dict):
            return True
        if not isinstance(spec, (str, Path)):
            return False
        s = str(spec)
        return s in self.presets or s.lower().endswith(".json") or Path(s).is_file()

    def load(self, spec, **options) -> GMMTeacher:
        if isinstance(spec, dict):
            return gmm_from_spec(spec, "teacher definition")
        if str(spec) in self.presets:
            return gmm_from_spec(preset_spec(str(spec)), f"preset {spec}")
        path = Path(spec)
        if path.is_dir():
            raise OdebenchError(f"teacher file {path} is a directory")
        if not path.is_file():
            raise OdebenchError(f"teacher file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise OdebenchError(f"{path}: not valid JSON ({e})") from None
        if isinstance(data, dict) and "name" not in data:
            data = {**data, "name": path.stem}  # a file's teacher is not the "gmm" preset
        return gmm_from_spec(data, str(path))

    def rows(self, teacher):
        if teacher.has(FLOW_VELOCITY):
            return FLOW_ROWS
        return self.default_rows

    def quality(self, teacher, conditions, seed, n, selection="auto", weights=None, device=None, fd_bootstrap=10):
        from odebench.quality import MixtureQuality

        return MixtureQuality(teacher, conditions, seed, n)


register(GMMFamily())
