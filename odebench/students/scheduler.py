"""Diffusers schedulers as students: `ClassName:K` (or a short alias) is a student row on the teacher itself,
with config overrides after `?`: `EulerDiscreteScheduler:4?timestep_spacing=trailing`, `dpmpp2m:8`,
`TCDScheduler:4?gamma=0.3`, `LCMScheduler:4?timesteps=[999,749,499,249]`.

The row is the diffusers pipeline's denoising loop on the teacher's guided network output: the scheduler
is `Class.from_config(teacher.scheduler_config(), **overrides)` with `set_timesteps(K)`; the latents start
at z * init_noise_sigma (z the sample's stream-0 noise, exactly what the pipeline does with the same
latents); each step feeds `scale_model_input(latents, t)` to the teacher's `model_output` (CFG combined
on the outputs, as the pipelines do) and `step` returns the next latents. So its samples equal the
pipeline's on the same noise, in the scheduler's own coordinates (the VP latent, or VE for the sigma
schedulers), and the last latents are the sample (x0, or for DDIM with set_alpha_to_one = False the
latent at abar_0, as the pipeline returns). Stochastic steps (ancestral Euler, LCM's multistep noise,
TCD with gamma > 0, DDIM with eta > 0) draw step i's noise from stream i + 1 of each sample
(odebench.ode.noise.SampleNoise), so rows stay deterministic and batch-size invariant. A scheduler row
has no consistency function f(x, sigma) (it cannot start from an arbitrary sigma), so no error curve.
"""
from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from odebench.errors import OdebenchError
from odebench.students.base import NoiseFn, Student
from odebench.students.kinds import StudentKind, register
from odebench.teachers.base import SCHEDULER

# short names (diffusers / A1111 sampler names) -> (scheduler class, config overrides); odebench's own
# ddim/euler/heun/dpm2 rows keep those names, diffusers' versions go by their class names
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "dpmpp2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp2m-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpmpp3m": ("DPMSolverMultistepScheduler", {"solver_order": 3}),
    "dpmpp2s": ("DPMSolverSinglestepScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "kdpm2": ("KDPM2DiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    "tcd": ("TCDScheduler", {}),
    "flow-euler": ("FlowMatchEulerDiscreteScheduler", {}),  # flow teachers (odebench.teachers.flow)
    "flow-heun": ("FlowMatchHeunDiscreteScheduler", {}),
}
SPEC_RE = re.compile(r"^(?P<name>[A-Za-z][\w.-]*):(?P<k>[^?]*)(?:\?(?P<query>.*))?$")
STEP_FIXED = ("self", "model_output", "timestep", "sample", "generator", "return_dict", "variance_noise")
TIMESTEP_FIXED = ("self", "num_inference_steps", "device")
STEP_ALIASES = {"gamma": "eta"}  # TCD's stochasticity gamma is its step's eta


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_query(query: str, spec: str) -> dict[str, Any]:
    """`a=1&b=trailing&c=[1,2]` -> {"a": 1, "b": "trailing", "c": [1, 2]} (values as JSON, else strings)."""
    out: dict[str, Any] = {}
    for item in filter(None, (query or "").split("&")):
        if "=" not in item:
            raise OdebenchError(f"student {spec!r}: scheduler option {item!r} must look like key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = _value(v.strip())
    return out


def scheduler_class(name: str):
    import diffusers

    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise OdebenchError(f"{name!r} is not a diffusers scheduler class (e.g. DPMSolverMultistepScheduler, "
                            f"UniPCMultistepScheduler, EulerDiscreteScheduler) or alias ({', '.join(ALIASES)})")
    return cls


@dataclass(frozen=True)
class SchedulerSpec:
    """A diffusers scheduler, its config overrides, its timestep choice and its step options."""

    class_name: str
    steps: int | None  # K = num_inference_steps (None: len(timesteps))
    config: dict[str, Any] = field(default_factory=dict)  # from_config overrides
    timesteps: dict[str, Any] = field(default_factory=dict)  # set_timesteps options (timesteps, original_inference_steps, ...)
    step: dict[str, Any] = field(default_factory=dict)  # step options (eta, s_churn, ...)

    @classmethod
    def build(cls, class_name: str, steps: int | None, options: dict[str, Any], where: str) -> "SchedulerSpec":
        """Sort `options` into config / set_timesteps / step options by the class's own signatures."""
        klass = scheduler_class(class_name)
        init = set(inspect.signature(klass.__init__).parameters) - {"self", "kwargs"}
        step = set(inspect.signature(klass.step).parameters) - set(STEP_FIXED)
        ts = set(inspect.signature(klass.set_timesteps).parameters) - set(TIMESTEP_FIXED)
        config, timesteps, step_kw = {}, {}, {}
        for key, value in options.items():
            key = STEP_ALIASES.get(key, key) if STEP_ALIASES.get(key) in step else key
            if key in step:
                step_kw[key] = value
            elif key in ts:
                timesteps[key] = value
            elif key in init:
                config[key] = value
            else:
                raise OdebenchError(f"{where}: {class_name} has no option {key!r} (config: {', '.join(sorted(init))}; "
                                    f"set_timesteps: {', '.join(sorted(ts)) or 'none'}; step: {', '.join(sorted(step)) or 'none'})")
        explicit = timesteps.get("timesteps") or timesteps.get("sigmas")
        if explicit is not None:
            if not isinstance(explicit, list) or not explicit:
                raise OdebenchError(f"{where}: explicit timesteps/sigmas must be a non-empty list")
            if steps is not None and steps != len(explicit):
                raise OdebenchError(f"{where}: {len(explicit)} explicit timesteps but K = {steps}")
        elif steps is None or steps < 1:
            raise OdebenchError(f"{where}: the step count K must be a positive integer (e.g. {class_name}:4)")
        return cls(class_name, steps, config, timesteps, step_kw)

    def scheduler(self, base_config: dict[str, Any], steps: int | None = None, pipeline_kwargs=None):
        """A fresh scheduler (they are stateful) with its timesteps set for `steps` (default K); `pipeline_kwargs
        (sched, k)` adds what the teacher's pipeline passes to set_timesteps (FLUX: sigmas and mu)."""
        from diffusers.utils import logging as dlog

        klass = scheduler_class(self.class_name)
        init = set(inspect.signature(klass.__init__).parameters)
        # another class's config keys are expected here (the pipeline's scheduler may be of another class)
        base = {k: v for k, v in base_config.items() if k in init}
        level = dlog.get_verbosity()
        dlog.set_verbosity_error()  # e.g. LCMScheduler's note on timesteps off its training grid (DMD2's are, deliberately)
        try:
            sched = klass.from_config({**base, **self.config})
            kw = dict(self.timesteps)
            explicit = kw.get("timesteps") or kw.get("sigmas")
            if explicit is not None:
                # the pipeline's other arguments still apply (FluxPipeline passes mu with the caller's sigmas)
                extra = pipeline_kwargs(sched, len(explicit)) if pipeline_kwargs else {}
                sched.set_timesteps(**{**{k: v for k, v in extra.items() if k not in ("timesteps", "sigmas")}, **kw})
            else:
                k = steps or self.steps
                sched.set_timesteps(k, **{**(pipeline_kwargs(sched, k) if pipeline_kwargs else {}), **kw})
        except OdebenchError:
            raise
        except Exception as e:  # a config the scheduler rejects, a missing optional dependency: one line
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise OdebenchError(f"{self.class_name}: {msg[:300]}") from None
        finally:
            dlog.set_verbosity(level)
        return sched

    def step_kwargs(self, sched, noise: NoiseFn, i: int) -> dict[str, Any]:
        """The pipeline's extra step options (eta = 0 unless given, as pipelines pass it) and, where the step
        takes a generator, one per sample seeded for stream i + 1."""
        params = inspect.signature(sched.step).parameters
        kw = dict(self.step)
        if "eta" in params:
            kw.setdefault("eta", 0.0)
        if "generator" in params:
            gens = getattr(noise, "generators", None)
            if gens is None:
                raise OdebenchError(f"{self.class_name} draws noise: sample it with a SampleNoise (odebench.ode.noise)")
            kw["generator"] = gens(i + 1)
        return kw

    def describe(self) -> dict[str, Any]:
        return {"class": self.class_name, "steps": self.steps, "config": self.config, "set_timesteps": self.timesteps,
                "step": self.step}


def run_scheduler(spec: SchedulerSpec, base_config: dict[str, Any], model: Callable, noise: NoiseFn, like: torch.Tensor,
                  steps: int | None = None, pipeline_kwargs=None) -> torch.Tensor:
    """The pipeline's denoising loop: latents = z * init_noise_sigma; for each t: out = model(scale_model_input(
    latents, t), t); latents = step(out, t, latents). z = stream 0 of each sample; returns the last latents."""
    sched = spec.scheduler(base_config, steps, pipeline_kwargs)
    latents = noise(0).to(like.device, torch.float32) * getattr(sched, "init_noise_sigma", 1.0)
    scale = getattr(sched, "scale_model_input", None)  # diffusers' FlowMatch schedulers have none (identity)
    for i, t in enumerate(sched.timesteps):
        out = model(scale(latents, t) if scale is not None else latents, t)
        latents = sched.step(out.to(latents.dtype), t, latents, **spec.step_kwargs(sched, noise, i), return_dict=False)[0]
    return latents.float()


def parse_scheduler_spec(spec: str) -> SchedulerSpec:
    m = SPEC_RE.match(spec)
    if not m:
        raise OdebenchError(f"student {spec!r}: expected ClassName:K[?key=value&...]")
    name, k, query = m.group("name"), m.group("k"), m.group("query")
    class_name, options = ALIASES.get(name, (name, {}))
    if k and not k.isdigit():
        raise OdebenchError(f"student {spec!r}: the step count K must be a positive integer (e.g. {name}:4)")
    return SchedulerSpec.build(class_name, int(k) if k else None, {**options, **parse_query(query, spec)}, f"student {spec!r}")


class SchedulerRow(Student):
    """A diffusers scheduler on the teacher's own (guided) network: a few-step solver row."""

    kind = "solver"
    curve = False

    def __init__(self, teacher, sched: SchedulerSpec, spec: str) -> None:
        self.teacher, self.sched, self.spec = teacher, sched, spec
        self.steps = sched.steps or len(sched.timesteps.get("timesteps") or sched.timesteps.get("sigmas"))
        self.name = re.sub(r"[?&]", "-", spec.replace(":", "-"))

    def nfe(self, steps=None) -> int:
        return len(self.scheduler(steps).timesteps)

    def scheduler(self, steps=None):
        return self.sched.scheduler(self.teacher.scheduler_config(), steps, self.teacher.set_timesteps_kwargs)

    @torch.no_grad()
    def sample(self, x_start, cond, noise: NoiseFn, steps=None):
        return run_scheduler(self.sched, self.teacher.scheduler_config(),
                             lambda x_in, t: self.teacher.model_output(x_in, t, cond), noise, x_start, steps,
                             self.teacher.set_timesteps_kwargs)

    def __call__(self, x, sigma, cond):
        raise OdebenchError(f"{self.spec}: a scheduler row has no consistency function f(x, sigma)")

    def describe(self) -> dict[str, Any]:
        sched = self.scheduler()
        timesteps = sched.timesteps
        extra = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in self.teacher.set_timesteps_kwargs(sched, self.steps).items()}
        return {**super().describe(), "scheduler": self.sched.describe(), "timesteps": [float(t) for t in timesteps],
                "pipeline_set_timesteps": extra,
                "base_config": "the teacher's scheduler config"}


class SchedulerKind(StudentKind):
    name = "scheduler"
    priority = 20
    help = (f"ClassName:K[?key=value&...] (any diffusers scheduler at K steps on the teacher itself, e.g. "
            f"DPMSolverMultistepScheduler:8, EulerDiscreteScheduler:4?timestep_spacing=trailing; aliases "
            f"{', '.join(ALIASES)}; options go to the scheduler's config, set_timesteps or step)")

    def matches(self, spec):
        m = SPEC_RE.match(spec)
        return bool(m) and (m.group("name") in ALIASES or m.group("name").endswith("Scheduler"))

    def load(self, spec, ctx):
        teacher = ctx.teacher
        sched = parse_scheduler_spec(spec)
        if not teacher.has(SCHEDULER):
            raise OdebenchError(f"student {spec!r}: diffusers schedulers drive discrete-schedule teachers "
                                f"(digits, sd, sdxl); {teacher.name!r} is not one")
        why = teacher.check_scheduler(scheduler_class(sched.class_name))
        if why:
            raise OdebenchError(f"student {spec!r}: {why}")
        row = SchedulerRow(teacher, sched, spec)
        row.nfe()  # builds the scheduler once: a config it rejects fails here, before any solving
        return row, None


register(SchedulerKind())
