"""LCM-parameterised consistency students of an SDXL teacher, from any of the usual checkpoints.

The consistency function at abar index i (x_vp = x / sqrt(1 + sigma_i^2) the VP latent):
    x0_hat = (x_vp - sqrt(1 - abar_i) eps(x_vp, i + a)) / sqrt(abar_i)
    f      = c_skip(i + b) x_skip + c_out(i + b) x0_hat,     (c_skip, c_out) = lcm_scalings (PAPER.md)
with the conventions of each source (a = UNet timestep offset, b = scalings offset, x_skip = x_vp
or the VE state x):
    lcm    (LCM-LoRA, LCM-SDXL; diffusers' LCMScheduler)   a = 0, b = 0, x_skip = x_vp
    paper  (layer6ai-labs/direct-cms checkpoints)          a = 1, b = 1, x_skip = x_vp  (1-indexed grid)
    odebench (odebench.students.unet_lcm.UNetLCM)          a = 0, b = 1, x_skip = x
Multistep sampling re-noises in VP form, x_vp = sqrt(abar_j) f + sqrt(1 - abar_j) z_j, with z_j from
the sample's own noise stream j (LCMScheduler.step, Song et al. 2023 Alg. 1). Timesteps:
    lcm:   LCMScheduler.set_timesteps (k of the 0-indexed 50-step grid, e.g. [999, 759, 499, 259])
    paper: round(linspace) over the 1-indexed 100-point grid ([1000], [1000, 500], [1000, 750, 500, 250]).
No CFG at sampling; LCM-SDXL's guidance embedding is sinusoidal in w_lcm = pipeline guidance_scale - 1.
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from odebench.errors import OdebenchError
from odebench.students.base import NoiseFn, Student
from odebench.students.unet_lcm import lcm_scalings
from odebench.teachers.base import Guidance

LORA_FILES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")
CHECKPOINT_DIR = re.compile(r"^checkpoint-\d+$")


@dataclass(frozen=True)
class LCMConvention:
    """How a student's network is called and sampled (see the module docstring)."""

    name: str
    unet_offset: float  # a: UNet timestep = abar index + a
    scalings_offset: float  # b: c_skip / c_out at abar index + b
    skip: str  # "vp" (LCMScheduler: c_skip multiplies the VP latent) or "ve"
    schedule: str  # "lcm" (0-indexed LCMScheduler grid) or "paper" (1-indexed N-point grid)
    grid_steps: int  # original_inference_steps (lcm, 50) or the paper grid's N (100)
    trained_for: dict[str, Any] = field(default_factory=dict)  # guidance/grid the student was distilled on

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "unet_timestep": f"abar index + {self.unet_offset:g}",
                "scalings_timestep": f"abar index + {self.scalings_offset:g}", "c_skip_on": self.skip,
                "schedule": self.schedule, "grid_steps": self.grid_steps, "trained_for": self.trained_for}


LCM = LCMConvention("lcm", 0, 0, "vp", "lcm", 50, {"guidance": "w ~ U[3, 15] (lcm form), sampled per item, zero uncond",
                                                  "grid": "0-indexed 50-step DDIM grid (skip 20)"})
PAPER = LCMConvention("paper", 1, 1, "vp", "paper", 100, {"guidance": Guidance(9.0, "imagen", "zeros").to_dict(),
                                                         "grid": "1-indexed 100-point DDIM grid"})
ODEBENCH = LCMConvention("odebench", 0, 1, "ve", "paper", 100, {})
CONVENTIONS = {"lcm": LCM, "paper": PAPER, "odebench": ODEBENCH}


def student_timesteps(convention: LCMConvention, k: int, num_train_timesteps: int = 1000) -> list[int]:
    """The k sampling timesteps in the student's own indexing (descending)."""
    n = convention.grid_steps
    if k < 1 or k > n:
        raise OdebenchError(f"{k} sampling steps: expected 1..{n} for a {convention.name} student")
    if convention.schedule == "lcm":  # LCMScheduler.set_timesteps (diffusers), strength 1
        origin = (np.arange(1, n + 1) * (num_train_timesteps // n) - 1)[::-1]
        idx = np.floor(np.linspace(0, n, num=k, endpoint=False)).astype(np.int64)
    else:  # the paper's 1-indexed grid T, T - T/N, ..., T/N; its LCM scheduler rounds the linspace
        origin = (np.arange(1, n + 1) * (num_train_timesteps // n))[::-1]
        idx = np.linspace(0, n, num=k, endpoint=False).round().astype(np.int64)
    return [int(v) for v in origin[idx]]


class SDXLConsistencyStudent(Student):
    """A consistency student on the SDXL teacher's prompts, schedule and add_time_ids."""

    variable_steps = True

    def __init__(self, unet, teacher, convention: LCMConvention, *, spec: str, name: str, steps: int = 4,
                 guidance_embedding_w: float | None = None, trained_for: dict[str, Any] | None = None,
                 source: dict[str, Any] | None = None) -> None:
        self.unet = unet.eval().requires_grad_(False)
        self.teacher = teacher
        self.convention = convention
        self.spec, self.name, self.steps = spec, name, int(steps)
        self.offset = 1.0 if convention.schedule == "paper" else 0.0  # student timestep -> abar index
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
        from odebench.teachers.sdxl import guidance_scale_embedding

        return guidance_scale_embedding(torch.full((batch,), float(self.embed_w)), int(self.unet.config.time_cond_proj_dim))

    def _abar(self, index: torch.Tensor) -> torch.Tensor:
        """abar at (fractional) schedule indices, through log-sigma interpolation (exact at integers)."""
        sigma = self.teacher.t_to_sigma(index.double())
        return 1.0 / (1.0 + sigma ** 2)

    def consistency(self, x_vp: torch.Tensor, index: torch.Tensor, cond) -> torch.Tensor:
        """f at abar indices `index` (B,) for VP latents x_vp; returns the x0 estimate (float32)."""
        c = self.convention
        b = x_vp.shape[0]
        abar = self._abar(index)
        view = (-1,) + (1,) * (x_vp.dim() - 1)
        a_sqrt = abar.sqrt().to(x_vp.dtype).reshape(view)
        s_sqrt = (1 - abar).sqrt().to(x_vp.dtype).reshape(view)
        ehs, pooled = self.teacher.condition_inputs(cond, b)
        eps = self.teacher.run_unet(self.unet, x_vp, (index + c.unet_offset).float(), ehs, pooled, self._timestep_cond(b))
        x0_hat = (x_vp - s_sqrt * eps) / a_sqrt
        c_skip, c_out = lcm_scalings(index + c.scalings_offset)
        skip = x_vp if c.skip == "vp" else x_vp / a_sqrt  # VE state x = x_vp / sqrt(abar)
        return c_skip.to(x_vp.dtype).reshape(view) * skip + c_out.to(x_vp.dtype).reshape(view) * x0_hat

    @torch.no_grad()
    def __call__(self, x, sigma, cond):
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        index = self.teacher.sigma_to_t(sigma)
        return self.consistency(x.float() / torch.sqrt(1 + sigma.float() ** 2).reshape(-1, 1, 1, 1), index, cond)

    @torch.no_grad()
    def sample(self, x_start, cond, noise: NoiseFn, steps=None):
        ts = self.timesteps(steps)
        b = x_start.shape[0]
        # x(sigma_max) = z sqrt(1 + sigma_max^2) in VE coordinates: the VP latent is z itself
        x_vp = x_start.float() / (1.0 + self.teacher.sigma_max ** 2) ** 0.5
        x0 = x_vp
        for j, t in enumerate(ts):
            index = torch.full((b,), float(t) - self.offset, dtype=torch.float64)
            x0 = self.consistency(x_vp, index, cond)
            if j + 1 < len(ts):
                nxt = self._abar(torch.tensor([float(ts[j + 1]) - self.offset], dtype=torch.float64))
                x_vp = float(nxt.sqrt()) * x0 + float((1 - nxt).sqrt()) * noise(j + 1).to(x0)
        return x0

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "convention": self.convention.describe(), "timesteps": self.timesteps(),
                "guidance_embedding_w_lcm": self.embed_w, "source": self.source}


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
    """("lora" | "paper-lora" | "unet", path) for an SDXL student that is not an odebench checkpoint."""
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


def _lora_unet(teacher, path: Path):
    """A copy of the teacher UNet with the LoRA loaded through diffusers' LoRA loader (diffusers,
    kohya and peft key layouts) and fused into its weights."""
    from diffusers import StableDiffusionXLPipeline

    weights = _lora_file(path) if path.is_dir() else path
    if weights is None:
        raise OdebenchError(f"{path}: no {' or '.join(LORA_FILES)} found")
    if weights.suffix == ".bin":
        raise OdebenchError(f"{weights}: only .safetensors LoRA files are loaded (a .bin file may hold pickled code)")
    unet = copy.deepcopy(teacher.unet)
    try:
        from diffusers.utils import convert_unet_state_dict_to_peft
        from peft.utils import get_peft_model_state_dict

        # the adapter metadata carries peft's lora_alpha: without it an alpha != rank LoRA loads mis-scaled
        state, alphas, metadata = StableDiffusionXLPipeline.lora_state_dict(
            str(weights.parent), weight_name=weights.name, local_files_only=True, return_lora_metadata=True)
        unet_sd = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
        if not unet_sd:
            raise OdebenchError(f"{weights}: no UNet LoRA weights in the file")
        # one key layout first: direct-cms saves convert_state_dict_to_diffusers(peft state), which renames
        # only the attention projections (lora.down/up) and leaves the rest as lora_A/B; diffusers' loader
        # then silently drops the renamed ones (measured with diffusers 0.42)
        peft_sd = convert_unet_state_dict_to_peft(unet_sd)
        StableDiffusionXLPipeline.load_lora_into_unet({f"unet.{k}": v for k, v in peft_sd.items()}, alphas, unet=unet,
                                                      adapter_name="student", metadata=metadata)
        loaded = len(get_peft_model_state_dict(unet, adapter_name="student"))
        if loaded != len(peft_sd):
            raise OdebenchError(f"{weights}: only {loaded} of {len(peft_sd)} LoRA tensors fit the teacher UNet")
        unet.fuse_lora(lora_scale=1.0)
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
                          convention: str | None = None, allow_mismatch: bool = False):
    """(student, mismatch note) for an LCM-LoRA, an LCM-SDXL UNet or a direct-cms checkpoint."""
    from odebench.teachers.sdxl import SDXLTeacher
    from odebench.weights import file_sha256

    found = external_kind(spec)
    if found is None:
        raise OdebenchError(f"{spec}: not a LoRA file/folder, a UNet folder or a checkpoint-* directory")
    kind, path = found
    if convention is not None and convention not in CONVENTIONS:
        raise OdebenchError(f"unknown student convention {convention!r}: expected one of {', '.join(CONVENTIONS)}")
    if not isinstance(teacher, SDXLTeacher):
        raise OdebenchError(f"{spec} is an SDXL student ({kind}); this run's teacher is {teacher.name!r}: pass --teacher sdxl or a folder")
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
        from odebench.teachers.sdxl import _weights_file

        wfile = _weights_file(path)
        if unet.config.time_cond_proj_dim is not None:
            # LCM-SDXL: the embedded w selects the ODE; the pipeline embeds guidance_scale - 1 (lcm form)
            g = guidance or Guidance(teacher.guidance.imagen_w, "imagen", "zeros")
            embed_w = g.imagen_w - 1.0
            guidance = Guidance(g.w, g.form, "zeros" if g.uncond == "null" else g.uncond)
    else:
        unet, wfile = _lora_unet(teacher, path)
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
    student = SDXLConsistencyStudent(unet, teacher, conv, spec=spec, name=name, steps=steps or 4,
                                     guidance_embedding_w=embed_w, trained_for=trained_for, source=source)
    return student, note


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
    return SDXLConsistencyStudent(unet, teacher, conv, spec=str(source), name=name, steps=int(side["sampler"].get("steps", 1)),
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
