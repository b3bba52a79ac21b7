"""`odebench train cm|direct` on a text-to-image teacher: one builder for every family, on the shared loop.

Builds, in order: the runtime (accelerate under `accelerate launch` or on CUDA), the teacher on that device
(fp16/bf16 weights under mixed precision; the ODE state stays float32), the teacher ODE the student is
distilled for (the family's `ode_teacher`), the caption-folder data (baselines.sdxl_data, with the family's
micro-conditioning or none), the family's LoRA student, the optimiser; then runs baselines.distill.train and
the family's export. A family (`ImageRecipe`: SDXL in baselines.sdxl_train, SD3 / FLUX.1 in
baselines.flow_train) gives only what differs: the network it LoRAs, the student module around it, the
teacher ODE and the export.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from baselines.distill import DistillConfig, train
from odebench.errors import OdebenchError

PAPER_RESOLUTION = 1024


@dataclass(frozen=True)
class ImageOptions:
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


@dataclass(frozen=True)
class ImageRecipe:
    """What one text-to-image family's trainer does differently (module docstring)."""

    title: str  # "SDXL", "SD3", "FLUX.1": messages
    network: str  # the teacher attribute a LoRA copy is made of: "unet" or "transformer"
    lora: Callable  # (network copy, rank, alpha) -> peft model
    student: Callable  # (peft network, ode teacher) -> the nn.Module the loop trains
    export: Callable  # (stem, model, training, step, base teacher, ode teacher, cfg, settings, teacher_spec) -> path
    lora_targets: Callable  # (network) -> the target module names, for the record
    ode_teacher: Callable = lambda base: base  # the teacher ODE the student is distilled on (SDXL: the paper's)
    micro_conditioning: bool = False  # SDXL's add_time_ids per training crop
    teacher_ode: Callable = lambda base, cfg: {}  # what the record says about that ODE
    load_options: Callable = lambda options: {}  # extra load_teacher options (SDXL: the separate VAE)
    record_key: str = "image"  # where train_config.json keeps the image options (SDXL's runs say "sdxl": --resume reads them)


def train_image_student(cfg: DistillConfig, teacher_spec: str, out: Path, options: ImageOptions, recipe: ImageRecipe,
                        defaults: dict[str, Any], guidance=None, resume: bool = False,
                        progress: Callable[[int, float, float], None] | None = None,
                        record_run: Callable[[dict], None] | None = None) -> Path:
    from baselines.caption_folder import folder_identity, read_caption_folder
    from baselines.optim import make_optimizer, resolve_optimizer
    from baselines.runtime import make_runtime
    from baselines.sdxl_data import SDXLCaptionData
    from odebench.teachers import load_teacher

    cfg.validate()
    if options.data is None:
        raise OdebenchError(f"{recipe.title} training needs --data FOLDER (images with metadata.jsonl, or a .txt caption beside each image)")
    if not cfg.lora_rank:
        raise OdebenchError(f"{recipe.title} students are LoRA students: --lora-rank must be positive (the paper: 64)")
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
                        width=options.resolution, **recipe.load_options(options))
    teacher = recipe.ode_teacher(base)
    data = SDXLCaptionData(teacher, options.data, options.resolution, options.vae_batch, items=items,
                           micro_conditioning=recipe.micro_conditioning)
    record = {"config": asdict(cfg), "teacher": base.fingerprint(), "guidance": base.guidance.to_dict(),
              "conditional": True,
              recipe.record_key: {**options.to_record(), "mixed_precision": rt.mixed_precision,
                                  "gradient_checkpointing": checkpointing, "optimizer": opt_kind,
                                  "data_identity": folder_identity(data.items)}}
    if record_run is not None:
        record_run(record, rt.is_main)

    network = copy.deepcopy(getattr(base, recipe.network))
    if checkpointing:
        network.enable_gradient_checkpointing()  # recompute activations in backward: the 1024 px network fits
    targets = recipe.lora_targets(network)
    model = recipe.student(recipe.lora(network, cfg.lora_rank, cfg.lora_alpha or cfg.lora_rank), teacher)

    def optimizer(m):
        return make_optimizer(opt_kind, m.parameters(), cfg.lr, cfg.weight_decay)

    settings = {"paper_defaults": defaults, "resolution": options.resolution, "mixed_precision": rt.mixed_precision,
                "gradient_checkpointing": checkpointing, "optimizer": opt_kind, "runtime": rt.describe(),
                "lora": {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha or cfg.lora_rank, "dropout": 0.0,
                         "target_modules": list(targets), "init": "gaussian A, zero B"},
                "teacher_weights_dtype": weights, "vae": options.vae or "the teacher's VAE (float32)",
                "data": {"folder": str(options.data), **folder_identity(data.items),
                         "crop": "short side resized to the resolution (bilinear), random crop"
                                 + ("; add_time_ids = original (H, W), crop (top, left), target (H, W)" if recipe.micro_conditioning else ""),
                         "latents": "VAE posterior sample, scaled as the teacher's decode inverts"},
                "teacher_ode": {**recipe.teacher_ode(base, cfg), "guidance": base.guidance.to_dict()}}

    def export(stem, m, training, step):
        return recipe.export(stem, m, training, step, base, teacher, cfg, settings, teacher_spec)

    return train(cfg, teacher, model, data, out, resume, progress, export, runtime=rt, optimizer=optimizer)
