"""Consistency students of a text-to-image UNet teacher (the UNET capability: SDXL, SD 1.x/2.x), from any
of the usual checkpoints: an LCM-LoRA (diffusers / peft / kohya keys), a full LCM UNet (LCM-SDXL, with a
guidance embedding), a direct-cms `checkpoint-*` LoRA folder, or odebench's own format.

The consistency function is the one of odebench.students.lcm (parameterised by the teacher's prediction
type and the student's timestep convention: lcm, paper or odebench). Multistep sampling re-noises with the
teacher's forward process, x = x0 + sigma_j z_j in VE coordinates (= LCMScheduler.step's
sqrt(abar_j) x0 + sqrt(1 - abar_j) z_j on the VP latent), z_j from the sample's own noise stream j
(Song et al. 2023 Alg. 1). No CFG at sampling; LCM-SDXL's guidance embedding is sinusoidal in
w_lcm = pipeline guidance_scale - 1.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import torch

from odebench.errors import OdebenchError
from odebench.students.base import NoiseFn, Student
from odebench.students.kinds import StudentKind, register
from odebench.students.lcm import (CONVENTIONS, LCM, ODEBENCH, PAPER, LCMConvention, lcm_consistency,  # noqa: F401
                                   student_timesteps)
from odebench.teachers.base import UNET, Guidance

LORA_FILES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")
CHECKPOINT_DIR = re.compile(r"^checkpoint-\d+$")


class UNetConsistencyStudent(Student):
    """A consistency student on the teacher's prompts, schedule and micro-conditioning (a UNET teacher)."""

    variable_steps = True

    def __init__(self, unet, teacher, convention: LCMConvention, *, spec: str, name: str, steps: int = 4,
                 guidance_embedding_w: float | None = None, trained_for: dict[str, Any] | None = None,
                 source: dict[str, Any] | None = None) -> None:
        self.unet = unet.eval().requires_grad_(False)
        self.teacher = teacher
        self.convention = convention
        self.spec, self.name, self.steps = spec, name, int(steps)
        proj = getattr(unet.config, "time_cond_proj_dim", None)
        if proj is not None and guidance_embedding_w is None:
            raise OdebenchError(f"{spec}: this UNet embeds the guidance weight (time_cond_proj_dim={proj}); "
                                f"pass --student-guidance W (the pipeline's guidance_scale, imagen form)")
        self.embed_w = guidance_embedding_w if proj is not None else None  # lcm-form w = guidance_scale - 1
        self.trained_for = trained_for
        self.source = source or {}

    def nfe(self, steps=None) -> int:
        return self.steps if steps is None else steps

    def timesteps(self, k: int | None = None) -> list[int]:
        return student_timesteps(self.convention, self.steps if k is None else k, self.teacher.num_timesteps)

    def _timestep_cond(self, batch: int) -> torch.Tensor | None:
        if self.embed_w is None:
            return None
        from odebench.teachers.text_to_image import guidance_scale_embedding

        return guidance_scale_embedding(torch.full((batch,), float(self.embed_w)), int(self.unet.config.time_cond_proj_dim))

    @torch.no_grad()
    def __call__(self, x, sigma, cond):
        b = x.shape[0]
        ehs, pooled = self.teacher.condition_inputs(cond, b)
        t_cond = self._timestep_cond(b)

        def model(x_vp, t):
            return self.teacher.run_unet(self.unet, x_vp, t.float(), ehs, pooled, t_cond)

        return lcm_consistency(x.float(), sigma, model, self.teacher.log_sigmas, self.teacher.prediction, self.convention)

    @torch.no_grad()
    def sample(self, x_start, cond, noise: NoiseFn, steps=None):
        sigmas = [float(self.teacher.sigmas[int(t - self.convention.index_offset)]) for t in self.timesteps(steps)]
        x = x_start.float()
        for j, sig in enumerate(sigmas):
            x0 = self(x, sig, cond)
            if j + 1 < len(sigmas):
                x = self.teacher.renoise(x0, sigmas[j + 1], noise(j + 1).to(x0))
        return x0

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "convention": self.convention.describe(), "timesteps": self.timesteps(),
                "prediction": self.teacher.prediction, "guidance_embedding_w_lcm": self.embed_w, "source": self.source}


SDXLConsistencyStudent = UNetConsistencyStudent  # the name before SD 1.x/2.x teachers


# -- finding what a student path is ---------------------------------------------------------------

def _lora_file(folder: Path) -> Path | None:
    for sub in (folder, folder / "unet_lora"):
        for name in LORA_FILES:
            if (sub / name).is_file():
                return sub / name
    return None


def _is_unet_dir(folder: Path) -> bool:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("_class_name") == "UNet2DConditionModel"
    except (ValueError, OSError):
        return False


def external_kind(spec: str) -> tuple[str, Path] | None:
    """("lora" | "paper-lora" | "unet", path) for a UNet student that is not an odebench checkpoint."""
    from odebench.weights import _is_hub_id, resolve_weights

    p = Path(spec).expanduser()
    if not p.exists():
        if not _is_hub_id(spec):
            return None
        p = resolve_weights(spec, f"student {spec}", describe="a LoRA or UNet folder", flag="--student PATH")
    if p.is_file():
        if p.suffix.lower() in (".safetensors", ".bin") and not p.with_suffix(".json").is_file():
            return ("lora", p)
        return None
    if p.is_dir():
        if CHECKPOINT_DIR.match(p.name) and _lora_file(p) is not None:
            return ("paper-lora", p)
        if _lora_file(p) is not None:
            return ("lora", p)
        if _is_unet_dir(p):
            return ("unet", p)
        if _is_unet_dir(p / "unet"):
            return ("unet", p / "unet")
    return None


def lora_unet(teacher, path: Path, weight_name: str | None = None, scale: float = 1.0):
    """(a copy of the teacher UNet with the LoRA fused in at `scale`, the LoRA file): loaded through diffusers'
    LoRA loader of the teacher's pipeline class (diffusers, kohya and peft key layouts)."""
    import diffusers

    weights = (path / weight_name if weight_name else _lora_file(path)) if path.is_dir() else path
    if weights is None or not weights.is_file():
        raise OdebenchError(f"{path}: no {weight_name or ' or '.join(LORA_FILES)} found")
    if weights.suffix == ".bin":
        raise OdebenchError(f"{weights}: only .safetensors LoRA files are loaded (a .bin file may hold pickled code)")
    unet = copy.deepcopy(teacher.unet)
    loader = getattr(diffusers, teacher.pipeline)
    try:
        from diffusers.utils import convert_unet_state_dict_to_peft
        from peft.utils import get_peft_model_state_dict

        # the adapter metadata carries peft's lora_alpha: without it an alpha != rank LoRA loads mis-scaled
        state, alphas, metadata = loader.lora_state_dict(
            str(weights.parent), weight_name=weights.name, local_files_only=True, return_lora_metadata=True)
        unet_sd = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
        if not unet_sd:
            raise OdebenchError(f"{weights}: no UNet LoRA weights in the file")
        # one key layout first: direct-cms saves convert_state_dict_to_diffusers(peft state), which renames
        # only the attention projections (lora.down/up) and leaves the rest as lora_A/B; diffusers' loader
        # then silently drops the renamed ones (measured with diffusers 0.42)
        peft_sd = convert_unet_state_dict_to_peft(unet_sd)
        loader.load_lora_into_unet({f"unet.{k}": v for k, v in peft_sd.items()}, alphas, unet=unet,
                                                      adapter_name="student", metadata=metadata)
        loaded = len(get_peft_model_state_dict(unet, adapter_name="student"))
        if loaded != len(peft_sd):
            raise OdebenchError(f"{weights}: only {loaded} of {len(peft_sd)} LoRA tensors fit the teacher UNet")
        unet.fuse_lora(lora_scale=float(scale))
        unet.unload_lora()
    except OdebenchError:
        raise
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OdebenchError(f"cannot load the LoRA {weights} onto the teacher UNet: {msg[:300]}") from None
    return unet, weights


def _mismatch(teacher, trained: Guidance | None, what: str) -> str | None:
    if trained is None:
        return (f"{what} was distilled with w sampled from U[3, 15] (lcm form) on a 0-indexed 50-step grid: no single "
                f"reference ODE matches it (this run: {teacher.guidance.describe()}); declare one with --student-guidance")
    if not trained.same_ode(teacher.guidance):
        return f"{what} was distilled for guidance {trained.describe()}, but this run uses {teacher.guidance.describe()}"
    return None


def load_external_student(spec: str, teacher, *, steps: int | None = None, guidance: Guidance | None = None,
                          convention: str | None = None, allow_mismatch: bool = False, found=None):
    """(student, mismatch note) for an LCM-LoRA, an LCM UNet (LCM-SDXL) or a direct-cms checkpoint."""
    from odebench.weights import file_sha256

    found = found or external_kind(spec)
    if found is None:
        raise OdebenchError(f"{spec}: not a LoRA file/folder, a UNet folder or a checkpoint-* directory")
    kind, path = found
    if convention is not None and convention not in CONVENTIONS:
        raise OdebenchError(f"unknown student convention {convention!r}: expected one of {', '.join(CONVENTIONS)}")
    if not teacher.has(UNET):
        raise OdebenchError(f"{spec} is a UNet student ({kind}); this run's teacher {teacher.name!r} has no UNet: "
                            f"pass --teacher with the pipeline it was distilled from (sdxl or a folder)")
    conv = CONVENTIONS[convention] if convention else (PAPER if kind == "paper-lora" else LCM)
    name = path.parent.name if path.name in ("unet", "unet_lora") else path.stem if path.is_file() else path.name
    embed_w = None
    if kind == "unet":
        from diffusers import UNet2DConditionModel

        try:
            unet = UNet2DConditionModel.from_pretrained(str(path), torch_dtype=teacher.unet_dtype, local_files_only=True)
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise OdebenchError(f"cannot load the UNet {path}: {msg[:300]}") from None
        unet = unet.to(teacher.device)
        from odebench.teachers.text_to_image import weights_file

        wfile = weights_file(path)
        if unet.config.time_cond_proj_dim is not None:
            # LCM-SDXL: the embedded w selects the ODE; the pipeline embeds guidance_scale - 1 (lcm form)
            g = guidance or Guidance(teacher.guidance.imagen_w, "imagen", "zeros")
            embed_w = g.imagen_w - 1.0
            guidance = Guidance(g.w, g.form, "zeros" if g.uncond == "null" else g.uncond)
    else:
        unet, wfile = lora_unet(teacher, path)
    if kind == "paper-lora" and guidance is None:
        guidance = Guidance.from_dict(PAPER.trained_for["guidance"])
    if guidance is not None and guidance.uncond == "null":
        guidance = Guidance(guidance.w, guidance.form, "zeros")
    note = _mismatch(teacher, guidance, f"{name} ({kind}, {conv.name} convention)")
    if note and not allow_mismatch:
        raise OdebenchError(note + "; pass --allow-mismatch to score it against this teacher anyway")
    trained_for = {"kind": kind, "guidance": guidance.to_dict() if guidance else conv.trained_for.get("guidance"),
                   "grid": conv.trained_for.get("grid"), "teacher": teacher.name}
    source = {"path": str(path), "weights": f"{wfile.name} sha256:{file_sha256(wfile)[:16]}"}
    student = UNetConsistencyStudent(unet, teacher, conv, spec=spec, name=name, steps=steps or 4,
                                     guidance_embedding_w=embed_w, trained_for=trained_for, source=source)
    return student, note


class ExternalUNetKind(StudentKind):
    """A student file that is not an odebench checkpoint, recognised by its layout (`external_kind`)."""

    layout = ""  # the external_kind it claims

    def matches(self, spec):
        if spec.lower().endswith(".json"):
            return False
        try:
            found = external_kind(spec)
        except OdebenchError:  # a hub id that is not on this machine: loading gives the "put it here" error
            return self.layout == "lora"
        return found is not None and found[0] == self.layout

    def load(self, spec, ctx):
        return load_external_student(spec, ctx.teacher, guidance=ctx.guidance, convention=ctx.convention,
                                     allow_mismatch=ctx.allow_mismatch)


class LoRAKind(ExternalUNetKind):
    name = "lcm-lora"
    layout = "lora"
    priority = 50
    help = ("an LCM-LoRA (UNet teachers: a LoRA file or folder, diffusers/peft/kohya keys, or a cached hub id; "
            "LCMScheduler conventions)")


class PaperCheckpointKind(ExternalUNetKind):
    name = "direct-cms"
    layout = "paper-lora"
    priority = 51
    help = "a direct-cms checkpoint-* LoRA folder (the paper's code: 1-indexed 100-point grid, imagen w = 9)"


class LCMUNetKind(ExternalUNetKind):
    name = "lcm-unet"
    layout = "unet"
    priority = 52
    help = "an LCM UNet folder (e.g. LCM-SDXL, with its guidance embedding)"


for _kind in (LoRAKind(), PaperCheckpointKind(), LCMUNetKind()):
    register(_kind)


# -- the odebench format for SDXL students ------------------------------------------------------------

def build_odebench_sdxl_student(side: dict[str, Any], source: Path, state: dict[str, torch.Tensor], teacher):
    """An odebench `unet-lcm` student whose architecture is a UNet2DConditionModel."""
    from diffusers import UNet2DConditionModel

    arch, param = side["architecture"], side["parameterisation"]
    try:
        unet = UNet2DConditionModel.from_config(arch["unet_config"])
    except (TypeError, KeyError, ValueError) as e:
        raise OdebenchError(f"{source}: malformed unet-lcm architecture ({e})") from None
    try:
        unet.load_state_dict(state)
    except RuntimeError as e:
        raise OdebenchError(f"{source}: weights do not fit the architecture in the sidecar ({str(e).splitlines()[0]})") from None
    unet = unet.to(teacher.device, teacher.unet_dtype)
    conv = LCMConvention("odebench", float(param.get("unet_timestep_offset", ODEBENCH.unet_offset)),
                         float(param.get("scalings_timestep_offset", ODEBENCH.scalings_offset)), str(param.get("skip", ODEBENCH.skip)),
                         str(side["sampler"].get("schedule", "paper")), int(side["sampler"].get("grid_steps", 100)), {})
    embed = side.get("guidance_embedding")
    name = source.stem if source.stem != "student" else source.parent.name
    return UNetConsistencyStudent(unet, teacher, conv, spec=str(source), name=name, steps=int(side["sampler"].get("steps", 1)),
                                  guidance_embedding_w=None if embed is None else float(embed["w_lcm"]),
                                  trained_for={"teacher": side["teacher"].get("name"), "fingerprint": side["teacher"].get("fingerprint"),
                                               "guidance": side["guidance"], "conditional": True, **({"ode": side["ode"]} if "ode" in side else {})},
                                  source={"sidecar": str(source), "weights_sha256": side.get("weights_sha256")})


def export_sdxl_lcm_student(stem, unet, teacher, steps: int = 1, convention: LCMConvention = ODEBENCH,
                            training: dict[str, Any] | None = None, step: int = 0, guidance_embedding_w: float | None = None,
                            ode: dict[str, Any] | None = None):
    """Write an SDXL UNet (LoRA already merged) as an odebench student for `teacher`'s current ODE.
    `ode` declares the discretised teacher ODE it was distilled on (e.g. {"ddim100_timesteps": "paper"}),
    so a run picks the matching DDIM-100 reference."""
    from odebench.students.checkpoint import save_student

    sidecar = {
        "architecture": {"kind": "unet-lcm", "unet_class": type(unet).__name__, "unet_config": dict(unet.config),
                         "schedule": teacher.schedule},
        "parameterisation": {"kind": "lcm", "sigma_data": 0.5, "timestep_scaling": 10.0, "sigma_min": 0.0,
                             "unet_timestep_offset": convention.unet_offset,
                             "scalings_timestep_offset": convention.scalings_offset, "skip": convention.skip},
        "sampler": {"kind": "lcm", "steps": int(steps), "schedule": convention.schedule, "grid_steps": convention.grid_steps,
                    "num_train_timesteps": teacher.num_timesteps},
        "teacher": {"name": teacher.name, "fingerprint": teacher.fingerprint(), "spec": teacher.spec()},
        "guidance": teacher.guidance.to_dict(),
        "conditional": True,
        "training": training or {},
        "step": int(step),
        "dtype": "float32",
    }
    if guidance_embedding_w is not None:
        sidecar["guidance_embedding"] = {"w_lcm": float(guidance_embedding_w)}
    if ode is not None:
        sidecar["ode"] = dict(ode)
    state = {k: v.float() for k, v in unet.state_dict().items()}
    return save_student(stem, state, sidecar)
