"""`odebench train cm|direct --teacher <sdxl>`: the paper's SDXL distillation on the shared loop.

Builds, in order: the runtime (accelerate under `accelerate launch` or on CUDA), the teacher on
that device (fp16 weights under fp16 mixed precision; the ODE state stays float32), the teacher ODE
the student is distilled for, the caption-folder data, the LoRA student, the optimiser; then runs
baselines.distill.train and exports an odebench SDXL student (LoRA merged into float32 UNet
weights) whose sidecar records every setting, plus the LoRA alone in diffusers' layout (OUT/lora/).

The teacher ODE is the paper-mode one that `ode_mse@ddim100` measures on SDXL: DDIM on the 1-indexed
100-point grid with the UNet given the integer t while abar is read at t - 1 (the released code),
imagen w = 9 with zero uncond embeddings. The sidecar declares it (`ode.ddim100_timesteps = paper`),
so `odebench run --student` picks that reference without flags.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from baselines.distill import DistillConfig, train
from odebench.errors import OdebenchError

# The paper's settings (PAPER.md, "CM training (as released)"), applied when the teacher is SDXL.
PAPER_DEFAULTS = {"steps": 250, "batch_size": 16, "lr": 1e-4, "weight_decay": 1e-2, "grad_clip": 1.0, "grid": 100,
                  "solver": "ddim", "loss": "l2", "seed": 24, "checkpoint_every": 50, "lora_rank": 64,
                  "lora_alpha": 0.0}  # alpha 0 = the rank: 64/64 by default, and a changed --lora-rank keeps alpha = rank
PAPER_RESOLUTION = 1024


@dataclass(frozen=True)
class SDXLOptions:
    data: Path | None = None  # the caption folder (baselines.caption_folder)
    resolution: int = PAPER_RESOLUTION
    mixed_precision: str | None = None  # None: fp16 on CUDA, no on CPU
    gradient_checkpointing: bool | None = None  # None: on with CUDA
    optimizer: str = "auto"  # auto: adamw8bit with bitsandbytes on CUDA, else adamw
    device: str | None = None
    vae: str | None = None  # a separate (fp16-fix) VAE
    vae_batch: int = 4

    def to_record(self) -> dict[str, Any]:
        return {**asdict(self), "data": str(self.data) if self.data is not None else None}


def train_sdxl_student(cfg: DistillConfig, teacher_spec: str, out: Path, options: SDXLOptions, guidance=None,
                       resume: bool = False, progress: Callable[[int, float, float], None] | None = None,
                       record_run: Callable[[dict], None] | None = None) -> Path:
    from baselines.optim import make_optimizer, resolve_optimizer
    from baselines.runtime import make_runtime
    from baselines.sdxl_data import SDXLCaptionData
    from baselines.sdxl_student import SDXL_LORA_TARGETS, SDXLPaperLCM, save_lora, sdxl_lora
    from baselines.caption_folder import folder_identity, read_caption_folder
    from odebench.students.lcm_sdxl import PAPER, export_sdxl_lcm_student
    from odebench.teachers import load_teacher

    cfg.validate()
    if options.data is None:
        raise OdebenchError("SDXL training needs --data FOLDER (images with metadata.jsonl, or a .txt caption beside each image)")
    if not cfg.lora_rank:
        raise OdebenchError("SDXL students are LoRA students: --lora-rank must be positive (the paper: 64)")
    if options.resolution < 8:
        raise OdebenchError(f"--resolution must be at least 8 pixels, got {options.resolution}")
    if options.vae_batch < 1:
        raise OdebenchError(f"vae_batch must be a positive integer, got {options.vae_batch}")
    items = read_caption_folder(options.data)  # before the (slow) teacher load: a bad folder fails at once
    rt = make_runtime(options.device, options.mixed_precision)
    cuda = rt.device.type == "cuda"
    checkpointing = cuda if options.gradient_checkpointing is None else bool(options.gradient_checkpointing)
    opt_kind = resolve_optimizer(options.optimizer, rt.device)
    weights = {"fp16": "fp16", "bf16": "bf16"}.get(rt.mixed_precision, "fp32")
    base = load_teacher(teacher_spec, guidance, dtype=weights, device=str(rt.device), height=options.resolution,
                        width=options.resolution, vae=options.vae)
    teacher = base.with_timestep_shift(1.0)  # the released code's UNet timestep: the paper-mode ODE (see module doc)
    data = SDXLCaptionData(teacher, options.data, options.resolution, options.vae_batch, items=items)
    record = {"config": asdict(cfg), "teacher": base.fingerprint(), "guidance": base.guidance.to_dict(),
              "conditional": True, "sdxl": {**options.to_record(), "mixed_precision": rt.mixed_precision,
                                           "gradient_checkpointing": checkpointing, "optimizer": opt_kind,
                                           "data_identity": folder_identity(data.items)}}
    if record_run is not None:
        record_run(record, rt.is_main)

    unet = copy.deepcopy(base.unet)
    if checkpointing:
        unet.enable_gradient_checkpointing()  # recompute activations in backward: the 1024 px UNet fits
    unet = sdxl_lora(unet, cfg.lora_rank, cfg.lora_alpha or cfg.lora_rank)
    model = SDXLPaperLCM(unet, teacher)

    def optimizer(m):
        return make_optimizer(opt_kind, m.parameters(), cfg.lr, cfg.weight_decay)

    settings = {"paper_defaults": PAPER_DEFAULTS, "resolution": options.resolution, "mixed_precision": rt.mixed_precision,
                "gradient_checkpointing": checkpointing, "optimizer": opt_kind, "runtime": rt.describe(),
                "lora": {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha or cfg.lora_rank, "dropout": 0.0,
                         "target_modules": list(SDXL_LORA_TARGETS), "init": "gaussian A, zero B"},
                "teacher_weights_dtype": weights, "vae": options.vae or "the teacher's VAE (float32)",
                "data": {"folder": str(options.data), **folder_identity(data.items),
                         "crop": "short side resized to the resolution (bilinear), random crop; add_time_ids = original (H, W), crop (top, left), target (H, W)",
                         "latents": "VAE posterior sample x scaling factor"},
                "teacher_ode": {"grid": "1-indexed, N points (PAPER.md)", "unet_timesteps": "the integer t, abar at t - 1 (released code)",
                                "guidance": base.guidance.to_dict()},
                "student_convention": PAPER.describe()}

    def export(stem, m, training, step):
        save_lora(m.unet, stem.parent / "lora")  # the small artefact, for diffusers and for sharing
        # float32 before merging: the LoRA delta added to fp16 weights would round away
        merged = copy.deepcopy(m.unet).to("cpu", torch.float32).merge_and_unload()
        return export_sdxl_lcm_student(stem, merged, base, steps=1, convention=PAPER,
                                       training={**training, **settings, "lora_file": "lora/pytorch_lora_weights.safetensors"},
                                       step=step, ode={"ddim100_timesteps": "paper", "grid": cfg.grid, "solver": cfg.solver,
                                                       "unet_timesteps": "the integer t, abar at t - 1"})

    return train(cfg, teacher, model, data, out, resume, progress, export, runtime=rt, optimizer=optimizer)
