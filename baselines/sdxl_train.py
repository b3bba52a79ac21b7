"""`odebench train cm|direct --teacher <sdxl>`: the paper's SDXL distillation on the shared loop.

The text-to-image builder (baselines.image_train) with SDXL's pieces: the paper's LoRA'd UNet in the LCM
parameterisation (baselines.sdxl_student), add_time_ids per crop, and the export: an odebench SDXL student
(LoRA merged into float32 UNet weights) whose sidecar records every setting, plus the LoRA alone in
diffusers' layout (OUT/lora/).

The teacher ODE is the paper-mode one that `ode_mse@ddim100` measures on SDXL: DDIM on the 1-indexed
100-point grid with the UNet given the integer t while abar is read at t - 1 (the released code),
imagen w = 9 with zero uncond embeddings. The sidecar declares it (`ode.ddim100_timesteps = paper`),
so `odebench run --student` picks that reference without flags.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import torch

from baselines.distill import DistillConfig
from baselines.image_train import PAPER_RESOLUTION, ImageOptions, ImageRecipe, train_image_student  # noqa: F401

# The paper's settings (PAPER.md, "CM training (as released)"), applied when the teacher is SDXL.
PAPER_DEFAULTS = {"steps": 250, "batch_size": 16, "lr": 1e-4, "weight_decay": 1e-2, "grad_clip": 1.0, "grid": 100,
                  "solver": "ddim", "loss": "l2", "seed": 24, "checkpoint_every": 50, "lora_rank": 64,
                  "lora_alpha": 0.0}  # alpha 0 = the rank: 64/64 by default, and a changed --lora-rank keeps alpha = rank
SDXLOptions = ImageOptions  # the text-to-image trainers' options (the name before SD3 / FLUX.1 trainers)


def _export(stem, m, training, step, base, teacher, cfg, settings, teacher_spec):
    from baselines.sdxl_student import save_lora
    from odebench.students.lcm_sdxl import PAPER, export_sdxl_lcm_student

    save_lora(m.unet, stem.parent / "lora")  # the small artefact, for diffusers and for sharing
    # float32 before merging: the LoRA delta added to fp16 weights would round away
    merged = copy.deepcopy(m.unet).to("cpu", torch.float32).merge_and_unload()
    return export_sdxl_lcm_student(stem, merged, base, steps=1, convention=PAPER,
                                   training={**training, **settings, "student_convention": PAPER.describe(),
                                             "lora_file": "lora/pytorch_lora_weights.safetensors"},
                                   step=step, ode={"ddim100_timesteps": "paper", "grid": cfg.grid, "solver": cfg.solver,
                                                   "unet_timesteps": "the integer t, abar at t - 1"})


def _recipe() -> ImageRecipe:
    from baselines.sdxl_student import SDXL_LORA_TARGETS, SDXLPaperLCM, sdxl_lora

    return ImageRecipe(
        title="SDXL", network="unet", lora=sdxl_lora, student=SDXLPaperLCM, export=_export,
        lora_targets=lambda unet: SDXL_LORA_TARGETS, micro_conditioning=True,
        # the released code's UNet timestep: the paper-mode ODE (see module doc)
        ode_teacher=lambda base: base.with_timestep_shift(1.0),
        teacher_ode=lambda base, cfg: {"grid": "1-indexed, N points (PAPER.md)",
                                       "unet_timesteps": "the integer t, abar at t - 1 (released code)"},
        load_options=lambda options: {"vae": options.vae}, record_key="sdxl")


def train_sdxl_student(cfg: DistillConfig, teacher_spec: str, out: Path, options: ImageOptions, guidance=None,
                       resume: bool = False, progress: Callable[[int, float, float], None] | None = None,
                       record_run: Callable[[dict], None] | None = None) -> Path:
    return train_image_student(cfg, teacher_spec, out, options, _recipe(), PAPER_DEFAULTS, guidance, resume, progress,
                               record_run)
