"""Student cards: a small JSON file that describes any external student of a text-to-image teacher (UNet or flow
transformer), so `odebench run --student card.json` needs no other flag.

    {"format": "odebench-student-card", "version": 1,
     "name": "hyper-sdxl-4step",                 optional (default: the file's stem)
     "kind": "trajectory" | "distribution" | "hybrid",   what it was trained to do (odebench.students.kinds)
     "teacher": "sdxl",                          the pipeline it was distilled from (a spec --teacher takes; a
                                                 relative path is relative to the card); used when no --teacher
     "weights": {"lora": "lora.safetensors", "weight_name": null, "scale": 1.0}   a LoRA file or folder
                                                 (diffusers, peft or kohya keys) or hub id, fused at `scale`
                                                 into the teacher's UNet or flow transformer;
              | {"unet": "unet/"}                a full UNet2DConditionModel folder or hub id (UNet teachers);
              | {"transformer": "transformer/"}  a full SD3 / FLUX transformer folder, or a pipeline folder or
                                                 hub id whose transformer/ it is (flow teachers: FLUX.1-schnell
                                                 as a student of FLUX.1-dev, SD3.5-Large-Turbo of SD3.5-Large);
              | null                             the teacher's own network (an analytic flow teacher's velocity)
     "scheduler": {"class": "TCDScheduler", "steps": 4, "timesteps": [999, 759, 499, 259],
                   "config": {...}, "options": {"gamma": 0.3, "original_inference_steps": 50}},
                                                 any diffusers scheduler (odebench.students.scheduler): config
                                                 overrides (a flow student's shift, stochastic_sampling), explicit
                                                 timesteps (or "options": {"sigmas": [...]}), sampler options
     "parameterisation": null | {"kind": "trigflow", "sigma_data": 0.5, "data_scale": 0.5}
                                                 null: the scheduler takes the network's own output (eps / v for
                                                 UNets, the velocity for flow transformers); trigflow: SCMScheduler
                                                 on TrigFlow's F built from a flow network (odebench.students.trigflow)
     "guidance_scale": 1.0,                      the sampler's, as the pipeline reads it: CFG on the student (1: none;
                                                 SD3: on velocities); for a network with a guidance input (LCM-SDXL's
                                                 embedding, FLUX.1-dev's guidance) that input; FLUX.1-schnell ignores it
     "ode": {"guidance": {"w": 9, "form": "imagen", "uncond": "zeros"}}   the teacher ODE it was distilled
                                                 for; null: none single (e.g. LCM-LoRA's w ~ U[3, 15])
     "training": {...},                          how it was trained (odebench's trainers write it; recorded as is)
     "notes": "..."}

Sampling is the diffusers pipeline's loop with the card's scheduler on the student's network
(`run_scheduler`), from the teacher's scheduler config and its pipeline's set_timesteps arguments (FLUX's
sigmas and mu); stochastic steps draw the samples' own noise streams. A card with LCMScheduler on a UNet
teacher has LCM's consistency function f(x, sigma) (odebench.students.lcm, `lcm` convention with the
scheduler's timestep_scaling); a flow card's f(x_t, t) = x_t - t v(x_t, t) is the network's one-step map to
t = 0 (what its sampler does from (x_t, t) in one step, FlowMatchEuler or SCMScheduler alike), so both get the
per-sigma error curve. A trajectory student whose ODE differs from the run's (or is undeclared) is refused
unless --allow-mismatch; a distribution or hybrid student is scored anyway, its ODE error flagged descriptive.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from odebench.errors import OdebenchError
from odebench.students.base import NoiseFn, Student
from odebench.students.kinds import DeclaredODE, StudentKind, register
from odebench.students.scheduler import SchedulerSpec, run_scheduler
from odebench.teachers.base import FLOW_VELOCITY, TRANSFORMER, UNET, Guidance, Teacher

CARD_FORMAT = "odebench-student-card"
CARD_VERSION = 1
CARD_KINDS = ("trajectory", "distribution", "hybrid")
FIELDS = {"format", "version", "name", "kind", "teacher", "weights", "scheduler", "parameterisation", "guidance_scale",
          "ode", "training", "notes"}
SCHEDULER_FIELDS = {"class", "steps", "timesteps", "config", "options"}
WEIGHT_FIELDS = {"lora", "weight_name", "scale", "unet", "transformer"}
NETWORKS = ("lora", "unet", "transformer")
PARAMETERISATIONS = ("trigflow",)
TRIGFLOW_SCHEDULERS = ("SCMScheduler",)  # the diffusers schedulers that take TrigFlow's F


def is_card(path: Path) -> bool:
    try:
        return path.suffix.lower() == ".json" and path.is_file() and json.loads(path.read_text()).get("format") == CARD_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def read_card(path: Path) -> dict[str, Any]:
    """The card, validated: one-line errors for anything missing, unknown or malformed."""
    from odebench.fileio import read_json_object

    card = read_json_object(path, "student card")
    where = str(path)
    if card.get("format") != CARD_FORMAT or card.get("version") != CARD_VERSION:
        raise OdebenchError(f"{where}: not a version-{CARD_VERSION} student card (\"format\": \"{CARD_FORMAT}\", \"version\": 1)")
    unknown = sorted(set(card) - FIELDS)
    if unknown:
        raise OdebenchError(f"{where}: unknown field(s) {', '.join(unknown)}; a card has {', '.join(sorted(FIELDS))}")
    if card.get("kind") not in CARD_KINDS:
        raise OdebenchError(f"{where}: \"kind\" must be one of {', '.join(CARD_KINDS)} (what the student was trained to do)")
    weights = card.get("weights")
    if weights is not None:
        if not isinstance(weights, dict) or set(weights) - WEIGHT_FIELDS or sum(k in weights for k in NETWORKS) != 1 \
                or (set(weights) & {"weight_name", "scale"} and "lora" not in weights):
            raise OdebenchError(f"{where}: \"weights\" must be {{\"lora\": PATH, \"weight_name\"?, \"scale\"?}}, {{\"unet\": PATH}}, "
                                f"{{\"transformer\": PATH}} or null")
    sched = card.get("scheduler")
    if not isinstance(sched, dict) or "class" not in sched or set(sched) - SCHEDULER_FIELDS:
        raise OdebenchError(f"{where}: \"scheduler\" must be {{\"class\": NAME, \"steps\"?, \"timesteps\"?, \"config\"?, \"options\"?}}")
    param = card.get("parameterisation")
    if param is not None:
        if not isinstance(param, dict) or param.get("kind") not in PARAMETERISATIONS \
                or set(param) - {"kind", "sigma_data", "data_scale"} \
                or not all(_positive(param[k]) for k in ("sigma_data", "data_scale") if k in param):
            raise OdebenchError(f"{where}: \"parameterisation\" must be null or {{\"kind\": \"trigflow\", \"sigma_data\"?: > 0, "
                                f"\"data_scale\"?: > 0}}")
    ode = card.get("ode")
    if ode is not None and (not isinstance(ode, dict) or set(ode) != {"guidance"}):
        raise OdebenchError(f"{where}: \"ode\" must be {{\"guidance\": {{\"w\", \"form\", \"uncond\"}}}} or null")
    gs = card.get("guidance_scale", 1.0)
    if not isinstance(gs, (int, float)) or isinstance(gs, bool) or gs < 0:
        raise OdebenchError(f"{where}: \"guidance_scale\" must be a non-negative number")
    if card.get("training") is not None and not isinstance(card["training"], dict):
        raise OdebenchError(f"{where}: \"training\" must be an object")
    return card


def save_card(path: Path, card: dict[str, Any]) -> Path:
    """Write `card` atomically and check it reads back (odebench's flow trainers export their students as cards)."""
    from odebench.fileio import atomic_write_bytes

    atomic_write_bytes(Path(path), (json.dumps(card, indent=1) + "\n").encode())
    read_card(Path(path))
    return Path(path)


def _local(path: Path, value: str) -> str:
    """A weights path relative to the card's folder when it exists there; else as given (an absolute path or hub id)."""
    beside = path.parent / value
    return str(beside) if not Path(value).is_absolute() and beside.exists() else value


def _find(card: Path, spec: str, what: str) -> Path:
    """A card's weights: a path (beside the card, or absolute), or a hub id in $ODEBENCH_WEIGHTS or the HF cache."""
    from odebench.weights import _is_hub_id, resolve_weights

    p = Path(spec).expanduser()
    if p.exists():
        return p
    if _is_hub_id(spec):
        return resolve_weights(spec, f"{card}'s weights", describe=what)
    raise OdebenchError(f"{card}: weights {spec!r} not found ({what}; a relative path is relative to the card's folder)")


def card_scheduler(card: dict[str, Any], where: str) -> SchedulerSpec:
    s = card["scheduler"]
    options = {**dict(s.get("config") or {}), **dict(s.get("options") or {})}
    if s.get("timesteps") is not None:
        options["timesteps"] = s["timesteps"]
    steps = s.get("steps")
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool)):
        raise OdebenchError(f"{where}: scheduler \"steps\" must be an integer")
    if str(s["class"]) in TRIGFLOW_SCHEDULERS and "timesteps" in options:
        # SCMScheduler's explicit times include the final s = 0: K steps are K + 1 times
        explicit = options["timesteps"]
        if not isinstance(explicit, list) or len(explicit) < 2:
            raise OdebenchError(f"{where}: SCMScheduler timesteps must list the TrigFlow times s_0 > ... > 0 (at least two)")
        if steps is not None and steps != len(explicit) - 1:
            raise OdebenchError(f"{where}: {len(explicit)} SCMScheduler times are {len(explicit) - 1} steps, but \"steps\" is {steps}")
        return SchedulerSpec.build(str(s["class"]), None, {**options, "timesteps": explicit}, where)
    return SchedulerSpec.build(str(s["class"]), steps, options, where)


class CardStudent(Student):
    """An external student described by a card: its network on the teacher's conditioning, sampled by its scheduler.
    Subclasses give `_network(cond, batch)` (the scheduler's model output at a diffusers timestep) and `__call__`."""

    def __init__(self, teacher, sched: SchedulerSpec, card: dict[str, Any], path: Path, source: dict[str, Any]) -> None:
        self.teacher, self.sched, self.card = teacher, sched, card
        self.spec, self.name = str(path), str(card.get("name") or path.stem)
        self.kind = card["kind"]
        explicit = sched.timesteps.get("timesteps") or sched.timesteps.get("sigmas")
        self.steps = sched.steps or len(explicit)
        self.variable_steps = explicit is None
        self.guidance_scale = float(card.get("guidance_scale", 1.0))
        g = (card.get("ode") or {}).get("guidance")
        self.ode_guidance = Guidance.from_dict(g) if g is not None else None
        self.trained_for = {"guidance": None if self.ode_guidance is None else self.ode_guidance.to_dict(),
                            "teacher": card.get("teacher"), "card": str(path)}
        self.source = source
        # the sampler's uncond branch is the pipeline's (the teacher's default), whatever ODE the run scores
        self._uncond_teacher = teacher.with_guidance(teacher.default_guidance)

    def scheduler(self, steps=None):
        return self.sched.scheduler(self.teacher.scheduler_config(), steps, self.teacher.set_timesteps_kwargs)

    def nfe(self, steps=None) -> int:
        return len(self.scheduler(steps).timesteps)

    def _network(self, cond, batch: int):
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, x_start, cond, noise: NoiseFn, steps=None):
        return run_scheduler(self.sched, self.teacher.scheduler_config(), self._network(cond, x_start.shape[0]), noise,
                             x_start, steps, self.teacher.set_timesteps_kwargs)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "card": self.card, "scheduler": self.sched.describe(),
                "timesteps": [float(t) for t in self.scheduler().timesteps], "source": self.source}


class UNetCardStudent(CardStudent):
    """A card student on a UNet teacher's network (LoRA'd, full, or its own)."""

    def __init__(self, teacher, unet, sched, card, path, source) -> None:
        super().__init__(teacher, sched, card, path, source)
        self.unet = unet.eval().requires_grad_(False)
        self.curve = sched.class_name == "LCMScheduler"
        proj = getattr(unet.config, "time_cond_proj_dim", None)
        # as the pipelines: a guidance-embedding UNet gets w = guidance_scale - 1 embedded and no CFG
        self.embed_w = self.guidance_scale - 1.0 if proj is not None else None
        self.cfg = self.guidance_scale if proj is None and self.guidance_scale > 1.0 else None

    def _network(self, cond, batch: int):
        from odebench.teachers.text_to_image import guidance_scale_embedding

        t_cond = None if self.embed_w is None else guidance_scale_embedding(
            torch.full((batch,), self.embed_w), int(self.unet.config.time_cond_proj_dim))
        ehs, pooled = self.teacher.condition_inputs(cond, batch)
        ids = self.teacher.time_ids(cond, batch)
        if self.cfg is None:
            return lambda x_in, t: self.teacher.run_unet(self.unet, x_in, _tvec(t, batch), ehs, pooled, t_cond, ids)
        eu, pu = self._uncond_teacher.condition_inputs(None, batch)
        ec = ehs

        def guided(x_in, t):  # the pipelines' CFG: one batch, uncond first, u + w (c - u) on the outputs
            out = self.teacher.run_unet(self.unet, torch.cat([x_in, x_in]), _tvec(t, 2 * batch), torch.cat([eu, ec]),
                                        None if pooled is None else torch.cat([pu, pooled]),
                                        None, None if ids is None else torch.cat([ids, ids]))
            u, c = out[:batch], out[batch:]
            return u + self.cfg * (c - u)

        return guided

    @torch.no_grad()
    def __call__(self, x, sigma, cond):
        """LCMScheduler's one-step denoised output at the (fractional) timestep of sigma (the `lcm` convention)."""
        from odebench.students.lcm import LCM, lcm_consistency

        if not self.curve:
            raise OdebenchError(f"{self.name}: its {self.sched.class_name} defines no consistency function f(x, sigma)")
        sched = self.sched.scheduler(self.teacher.scheduler_config())
        net = self._network(cond, x.shape[0])
        return lcm_consistency(x.float(), sigma, net, self.teacher.log_sigmas, self.teacher.prediction, LCM,
                               timestep_scaling=float(sched.config.timestep_scaling))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "cfg": self.cfg, "guidance_embedding_w_lcm": self.embed_w}


class FlowCardStudent(CardStudent):
    """A card student of a flow teacher: a flow transformer (LoRA'd, full or the teacher's) or, on an analytic flow
    teacher, the teacher's own guided velocity; sampled on the velocity or, with a TrigFlow parameterisation, on
    F by SCMScheduler (odebench.students.trigflow)."""

    curve = True

    def __init__(self, teacher, transformer, sched, card, path, source, trig=None) -> None:
        super().__init__(teacher, sched, card, path, source)
        self.transformer = None if transformer is None else transformer.eval().requires_grad_(False)
        self.trig = trig
        if trig is not None and "timesteps" in sched.timesteps:
            self.steps = len(sched.timesteps["timesteps"]) - 1
        config = {} if transformer is None else transformer.config
        if "guidance_embeds" in config:  # FluxPipeline: guidance_scale is FLUX.1-dev's guidance input, never CFG
            self.embedded_g = self.guidance_scale if config["guidance_embeds"] else None
            self.cfg = None
        else:  # StableDiffusion3Pipeline: CFG on the velocities when guidance_scale > 1
            self.embedded_g, self.cfg = None, (self.guidance_scale if self.guidance_scale > 1.0 else None)
        # a view of the teacher whose embedded guidance input is the sampler's g (not the run's ODE)
        self._sampler = teacher if self.embedded_g is None else Teacher.with_guidance(
            teacher, Guidance(self.embedded_g, "embedded", "none"))

    def velocity(self, cond, batch: int):
        """v(x_t, t) of the student's network, t in [0, 1] of shape (B,) (CFG / guidance input as the pipeline)."""
        teacher = self.teacher
        if self.transformer is None:  # an analytic flow teacher's own guided velocity
            return lambda x_t, t: teacher.model_output(x_t, t.double() * teacher.num_train_timesteps, cond)
        ehs, pooled = teacher.condition_inputs(cond, batch)
        if self.cfg is None:
            return lambda x_t, t: self._sampler.run_transformer(self.transformer, x_t, t, ehs, pooled)
        eu, pu = self._uncond_teacher.condition_inputs(None, batch)

        def guided(x_t, t):  # StableDiffusion3Pipeline's CFG: one batch, uncond first, u + w (c - u) on velocities
            out = teacher.run_transformer(self.transformer, torch.cat([x_t, x_t]), torch.cat([t, t]),
                                          torch.cat([eu.to(ehs.device), ehs]), torch.cat([pu.to(pooled.device), pooled]))
            u, c = out[:batch], out[batch:]
            return u + self.cfg * (c - u)

        return guided

    def _network(self, cond, batch: int):
        v = self.velocity(cond, batch)
        if self.trig is not None:
            return self.trig.network(v)
        total = float(self.teacher.num_train_timesteps)  # diffusers' flow timestep is 1000 t
        return lambda x_in, timestep: v(x_in, torch.as_tensor(timestep, dtype=torch.float64).reshape(-1).expand(batch) / total)

    def scheduler(self, steps=None):
        if self.trig is None:
            return super().scheduler(steps)
        from odebench.students.trigflow import scm_scheduler

        return scm_scheduler(self.sched, steps, self.trig.sigma_data)

    def nfe(self, steps=None) -> int:
        return len(self.scheduler(steps).timesteps) - (1 if self.trig is not None else 0)  # SCM's last time 0 is not evaluated

    @torch.no_grad()
    def sample(self, x_start, cond, noise: NoiseFn, steps=None):
        if self.trig is None:
            return super().sample(x_start, cond, noise, steps)
        from odebench.students.trigflow import sample_trigflow

        return sample_trigflow(self.trig, self.sched, self._network(cond, x_start.shape[0]), noise, x_start, steps)

    @torch.no_grad()
    def __call__(self, x, sigma, cond):
        """f(x_t, t) = x_t - t v(x_t, t): the network's one-step map to t = 0 (module docstring)."""
        t = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        v = self.velocity(cond, x.shape[0])(x.float(), t)
        return x.float() - t.to(x.device).reshape((-1,) + (1,) * (x.dim() - 1)) * v

    def describe(self) -> dict[str, Any]:
        extra = {"cfg": self.cfg, "embedded_guidance": self.embedded_g,
                 "parameterisation": self.trig.describe() if self.trig is not None else "velocity (flow_prediction)"}
        return {**super().describe(), **extra}


def _tvec(t, batch: int) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float32).reshape(-1).expand(batch)


def _network_teacher(teacher, weights, where: str) -> str:
    """"unet" or "transformer": which network family `teacher` lends card students (one-line error otherwise)."""
    if teacher.has(UNET):
        network = "unet"
    elif teacher.has(TRANSFORMER):
        network = "transformer"
    elif teacher.has(FLOW_VELOCITY) and weights is None:
        return "velocity"
    else:
        raise OdebenchError(f"{where}: card students run on a text-to-image UNet teacher (sd, sdxl), a flow transformer teacher "
                            f"(sd3, flux) or, with \"weights\": null, an analytic flow teacher; {teacher.name!r} is none of them")
    other = {"unet": "transformer", "transformer": "unet"}[network]
    if weights is not None and other in weights:
        raise OdebenchError(f"{where}: a full {other} student cannot run on {teacher.name!r}, whose network is a {network}")
    return network


def _check_scheduler(teacher, sched: SchedulerSpec, trig, where: str) -> None:
    from odebench.students.scheduler import scheduler_class

    if trig is not None:
        if not teacher.has(FLOW_VELOCITY):
            raise OdebenchError(f"{where}: a TrigFlow parameterisation maps to a flow teacher's (x_t, t); {teacher.name!r} is not one")
        if sched.class_name not in TRIGFLOW_SCHEDULERS:
            raise OdebenchError(f"{where}: a TrigFlow card is sampled by {' or '.join(TRIGFLOW_SCHEDULERS)}, not {sched.class_name}")
        return
    if sched.class_name in TRIGFLOW_SCHEDULERS:
        raise OdebenchError(f"{where}: {sched.class_name} takes TrigFlow's F: give the card "
                            f"\"parameterisation\": {{\"kind\": \"trigflow\", \"sigma_data\": ..., \"data_scale\": ...}}")
    why = teacher.check_scheduler(scheduler_class(sched.class_name))
    if why:
        raise OdebenchError(f"{where}: {why}")


def load_card_student(path: Path, teacher, allow_mismatch: bool = False):
    """(the card's student for `teacher`, a mismatch note or None)."""
    from odebench.weights import file_sha256

    card = read_card(path)
    where = str(path)
    weights = card.get("weights")
    network = _network_teacher(teacher, weights, where)
    sched = card_scheduler(card, where)
    param = card.get("parameterisation")
    trig = None
    if param is not None:
        from odebench.students.trigflow import TrigFlow

        sd = float(param.get("sigma_data", 0.5))
        trig = TrigFlow(sd, float(param.get("data_scale", sd)))
    _check_scheduler(teacher, sched, trig, where)
    if network == "velocity":
        if card.get("guidance_scale", 1.0) != 1.0:
            raise OdebenchError(f"{where}: on an analytic teacher the student is the teacher's own guided velocity; "
                                f"\"guidance_scale\" does not apply")
        student = FlowCardStudent(teacher, None, sched, card, path, {"weights": "the teacher's own velocity"}, trig)
    elif weights is None:
        net = teacher.unet if network == "unet" else teacher.transformer
        source = {"weights": f"the teacher's {network}"}
    elif "lora" in weights:
        spec = _local(path, str(weights["lora"]))
        found = _find(path, spec, "a LoRA file or folder")
        scale = float(weights.get("scale", 1.0))
        if network == "unet":
            from odebench.students.lcm_sdxl import lora_unet

            net, wfile = lora_unet(teacher, found, weights.get("weight_name"), scale)
        else:
            from odebench.students.flow_weights import lora_transformer

            net, wfile = lora_transformer(teacher, found, weights.get("weight_name"), scale)
        source = {"lora": spec, "weights": f"{wfile.name} sha256:{file_sha256(wfile)[:16]}", "scale": scale}
    elif network == "unet":
        from diffusers import UNet2DConditionModel

        from odebench.teachers.text_to_image import weights_file

        spec = _local(path, str(weights["unet"]))
        folder = _find(path, spec, "a UNet2DConditionModel folder")
        if (folder / "unet" / "config.json").is_file():
            folder = folder / "unet"
        try:
            net = UNet2DConditionModel.from_pretrained(str(folder), torch_dtype=teacher.unet_dtype, local_files_only=True)
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise OdebenchError(f"{where}: cannot load the UNet {folder}: {msg[:300]}") from None
        net = net.to(teacher.device)
        wfile = weights_file(folder)
        source = {"unet": spec, "weights": f"{wfile.name} sha256:{file_sha256(wfile)[:16]}"}
    else:
        from odebench.students.flow_weights import load_transformer
        from odebench.teachers.flow_pipelines import _component_identity

        spec = _local(path, str(weights["transformer"]))
        net, folder = load_transformer(teacher, _find(path, spec, "a flow transformer folder or pipeline folder"), where)
        source = {"transformer": spec, "weights": f"sha256:{_component_identity(folder)}"}
    if network == "unet":
        if trig is not None:
            raise OdebenchError(f"{where}: a TrigFlow parameterisation applies to flow teachers")
        student = UNetCardStudent(teacher, net, sched, card, path, source)
    elif network == "transformer":
        student = FlowCardStudent(teacher, net, sched, card, path, source, trig)
    student.nfe()  # builds the scheduler once: a config it rejects fails here, before any solving
    note = None
    if student.ode_guidance is None:
        note = (f"{student.name} ({student.kind}): its card declares no single teacher ODE; scored against this run's "
                f"({teacher.guidance.describe()})")
    elif not student.ode_guidance.same_ode(teacher.guidance):
        note = (f"{student.name} ({student.kind}) was distilled for guidance {student.ode_guidance.describe()}, "
                f"but this run uses {teacher.guidance.describe()}")
    if note and student.kind == "trajectory" and not allow_mismatch:
        raise OdebenchError(note + "; pass --allow-mismatch to score it against this teacher anyway")
    return student, note


class CardKind(StudentKind):
    name = "card"
    priority = 40
    help = (f"a student card (JSON, \"format\": \"{CARD_FORMAT}\": weights (a LoRA, a full UNet or flow transformer), "
            f"diffusers scheduler and options, a TrigFlow parameterisation, the teacher ODE it was distilled for, its kind "
            f"trajectory | distribution | hybrid)")

    def matches(self, spec):
        return is_card(Path(spec).expanduser())

    def declared_ode(self, spec):
        path = Path(spec).expanduser()
        card = read_card(path)
        teacher = card.get("teacher")
        if teacher is not None:
            teacher = _local(path, str(teacher))
        g = (card.get("ode") or {}).get("guidance")
        return DeclaredODE(teacher, Guidance.from_dict(g) if g is not None else None, True, f"card {spec}")

    def load(self, spec, ctx):
        return load_card_student(Path(spec).expanduser(), ctx.teacher, ctx.allow_mismatch)


register(CardKind())
