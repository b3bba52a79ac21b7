"""Student cards: a small JSON file that describes any external student of a text-to-image UNet teacher, so
`odebench run --student card.json` needs no other flag.

    {"format": "odebench-student-card", "version": 1,
     "name": "hyper-sdxl-4step",                 optional (default: the file's stem)
     "kind": "trajectory" | "distribution" | "hybrid",   what it was trained to do (odebench.students.kinds)
     "teacher": "sdxl",                          the pipeline it was distilled from (a spec --teacher takes; a
                                                 relative path is relative to the card); used when no --teacher
     "weights": {"lora": "lora.safetensors", "weight_name": null, "scale": 1.0}   a LoRA file or folder
                                                 (diffusers, peft or kohya keys) or hub id, fused at `scale`;
              | {"unet": "unet/"}                a full UNet2DConditionModel folder or hub id;
              | null                             the teacher's own UNet
     "scheduler": {"class": "TCDScheduler", "steps": 4, "timesteps": [999, 759, 499, 259],
                   "config": {...}, "options": {"gamma": 0.3, "original_inference_steps": 50}},
                                                 any diffusers scheduler (odebench.students.scheduler): config
                                                 overrides, explicit timesteps, sampler options
     "guidance_scale": 1.0,                      the sampler's: CFG on the student (1: none); for a UNet with a
                                                 guidance embedding (LCM-SDXL) the embedded pipeline guidance_scale
     "ode": {"guidance": {"w": 9, "form": "imagen", "uncond": "zeros"}}   the teacher ODE it was distilled
                                                 for; null: none single (e.g. LCM-LoRA's w ~ U[3, 15])
     "notes": "..."}

Sampling is the diffusers pipeline's loop with the card's scheduler on the student's network
(`run_scheduler`), from the teacher's scheduler config; stochastic steps draw the samples' own noise
streams. A card with LCMScheduler also has LCM's consistency function f(x, sigma) (odebench.students.lcm,
`lcm` convention with the scheduler's timestep_scaling), so it gets the per-sigma error curve.
A trajectory student whose ODE differs from the run's (or is undeclared) is refused unless
--allow-mismatch; a distribution or hybrid student is scored anyway, its ODE error flagged descriptive.
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
from odebench.teachers.base import UNET, Guidance

CARD_FORMAT = "odebench-student-card"
CARD_VERSION = 1
CARD_KINDS = ("trajectory", "distribution", "hybrid")
FIELDS = {"format", "version", "name", "kind", "teacher", "weights", "scheduler", "guidance_scale", "ode", "notes"}
SCHEDULER_FIELDS = {"class", "steps", "timesteps", "config", "options"}
WEIGHT_FIELDS = {"lora", "weight_name", "scale", "unet"}


def is_card(path: Path) -> bool:
    try:
        return path.suffix.lower() == ".json" and path.is_file() and json.loads(path.read_text()).get("format") == CARD_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


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
        if not isinstance(weights, dict) or set(weights) - WEIGHT_FIELDS or ("lora" in weights) == ("unet" in weights):
            raise OdebenchError(f"{where}: \"weights\" must be {{\"lora\": PATH, \"weight_name\"?, \"scale\"?}}, {{\"unet\": PATH}} or null")
    sched = card.get("scheduler")
    if not isinstance(sched, dict) or "class" not in sched or set(sched) - SCHEDULER_FIELDS:
        raise OdebenchError(f"{where}: \"scheduler\" must be {{\"class\": NAME, \"steps\"?, \"timesteps\"?, \"config\"?, \"options\"?}}")
    ode = card.get("ode")
    if ode is not None and (not isinstance(ode, dict) or set(ode) != {"guidance"}):
        raise OdebenchError(f"{where}: \"ode\" must be {{\"guidance\": {{\"w\", \"form\", \"uncond\"}}}} or null")
    gs = card.get("guidance_scale", 1.0)
    if not isinstance(gs, (int, float)) or isinstance(gs, bool) or gs < 0:
        raise OdebenchError(f"{where}: \"guidance_scale\" must be a non-negative number")
    return card


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
    return SchedulerSpec.build(str(s["class"]), steps, options, where)


class CardStudent(Student):
    """An external student described by a card: its network on the teacher's conditioning, sampled by its scheduler."""

    def __init__(self, teacher, unet, sched: SchedulerSpec, card: dict[str, Any], path: Path, source: dict[str, Any]) -> None:
        self.teacher, self.unet, self.sched, self.card = teacher, unet.eval().requires_grad_(False), sched, card
        self.spec, self.name = str(path), str(card.get("name") or path.stem)
        self.kind = card["kind"]
        self.steps = sched.steps or len(sched.timesteps.get("timesteps") or sched.timesteps.get("sigmas"))
        self.variable_steps = not ("timesteps" in sched.timesteps or "sigmas" in sched.timesteps)
        self.curve = sched.class_name == "LCMScheduler"
        gs = float(card.get("guidance_scale", 1.0))
        proj = getattr(unet.config, "time_cond_proj_dim", None)
        # as the pipelines: a guidance-embedding UNet gets w = guidance_scale - 1 embedded and no CFG
        self.embed_w = gs - 1.0 if proj is not None else None
        self.cfg = gs if proj is None and gs > 1.0 else None
        g = (card.get("ode") or {}).get("guidance")
        self.ode_guidance = Guidance.from_dict(g) if g is not None else None
        self.trained_for = {"guidance": None if self.ode_guidance is None else self.ode_guidance.to_dict(),
                            "teacher": card.get("teacher"), "card": str(path)}
        self.source = source
        # the sampler's uncond branch is the pipeline's (the teacher's default), whatever ODE the run scores
        self._uncond_teacher = teacher.with_guidance(teacher.default_guidance)

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

    def nfe(self, steps=None) -> int:
        return len(self.sched.scheduler(self.teacher.scheduler_config(), steps).timesteps)

    @torch.no_grad()
    def sample(self, x_start, cond, noise: NoiseFn, steps=None):
        return run_scheduler(self.sched, self.teacher.scheduler_config(), self._network(cond, x_start.shape[0]), noise,
                             x_start, steps)

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
        timesteps = self.sched.scheduler(self.teacher.scheduler_config()).timesteps
        return {**super().describe(), "card": self.card, "scheduler": self.sched.describe(),
                "timesteps": [float(t) for t in timesteps], "cfg": self.cfg, "guidance_embedding_w_lcm": self.embed_w,
                "source": self.source}


def _tvec(t, batch: int) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float32).reshape(-1).expand(batch)


def load_card_student(path: Path, teacher, allow_mismatch: bool = False):
    """(the card's student for `teacher`, a mismatch note or None)."""
    from odebench.students.lcm_sdxl import lora_unet
    from odebench.teachers.text_to_image import weights_file
    from odebench.weights import file_sha256

    card = read_card(path)
    where = str(path)
    if not teacher.has(UNET):
        raise OdebenchError(f"{where}: card students run on a text-to-image UNet teacher (sd, sdxl); {teacher.name!r} is not one")
    sched = card_scheduler(card, where)
    from odebench.students.scheduler import scheduler_class

    why = teacher.check_scheduler(scheduler_class(sched.class_name))
    if why:
        raise OdebenchError(f"{where}: {why}")
    weights = card.get("weights")
    if weights is None:
        unet, source = teacher.unet, {"weights": "the teacher's UNet"}
    elif "lora" in weights:
        spec = _local(path, str(weights["lora"]))
        found = _find(path, spec, "a LoRA file or folder")
        unet, wfile = lora_unet(teacher, found, weights.get("weight_name"), float(weights.get("scale", 1.0)))
        source = {"lora": spec, "weights": f"{wfile.name} sha256:{file_sha256(wfile)[:16]}", "scale": float(weights.get("scale", 1.0))}
    else:
        from diffusers import UNet2DConditionModel

        spec = _local(path, str(weights["unet"]))
        folder = _find(path, spec, "a UNet2DConditionModel folder")
        if (folder / "unet" / "config.json").is_file():
            folder = folder / "unet"
        try:
            unet = UNet2DConditionModel.from_pretrained(str(folder), torch_dtype=teacher.unet_dtype, local_files_only=True)
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise OdebenchError(f"{where}: cannot load the UNet {folder}: {msg[:300]}") from None
        unet = unet.to(teacher.device)
        wfile = weights_file(folder)
        source = {"unet": spec, "weights": f"{wfile.name} sha256:{file_sha256(wfile)[:16]}"}
    student = CardStudent(teacher, unet, sched, card, path, source)
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
    help = (f"a student card (JSON, \"format\": \"{CARD_FORMAT}\": weights, diffusers scheduler and options, the "
            f"teacher ODE it was distilled for, its kind trajectory | distribution | hybrid)")

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
