"""`odebench train cm|direct`: build the teacher, the student network and the data, then run the loop."""
from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from baselines.data import ImageData, MixtureData
from baselines.distill import DistillConfig, train
from odebench.errors import OdebenchError
from odebench.fileio import atomic_write_bytes


# The paper's LoRA targets (attention projections, feed-forward, resnet convs, down/upsamplers,
# time-embedding projections), as far as they exist in the UNet at hand.
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2",
                "conv_shortcut", "conv", "time_emb_proj", "linear_1", "linear_2")


def with_lora(unet, rank: int, alpha: float):
    """Wrap `unet` with peft LoRA adapters (B = 0 at start, so the student starts as the teacher)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise OdebenchError("--lora-rank needs peft: pip install 'odebench[train]'") from None
    present = {name for name, _ in unet.named_modules()}
    targets = [t for t in LORA_TARGETS if any(n == t or n.endswith("." + t) for n in present)]
    torch.manual_seed(0)  # the LoRA A init, reproducibly
    return get_peft_model(unet, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, init_lora_weights="gaussian",
                                           target_modules=targets))


def record_run(out: Path, record: dict, resume: bool, write: bool = True) -> None:
    """Write OUT/train_config.json, or on --resume check that the flags match the recorded run."""
    rec_path = out / "train_config.json"
    if resume:
        if not rec_path.is_file():
            raise OdebenchError(f"--resume: {out} holds no training run (no {rec_path.name})")
        old = json.loads(rec_path.read_text())
        old["config"]["steps"] = record["config"]["steps"]  # extending a run is allowed; everything else must match
        if old != json.loads(json.dumps(record)):
            raise OdebenchError(f"--resume: the flags differ from the run in {out}; resume with the same flags (only --steps may grow)")
    if write:
        atomic_write_bytes(rec_path, (json.dumps(record, indent=1) + "\n").encode())


def train_student(cfg: DistillConfig, teacher_spec: Any, out: Path, guidance=None, conditional: bool | None = None,
                  resume: bool = False, hidden: int = 256, depth: int = 3,
                  progress: Callable[[int, float, float], None] | None = None, sdxl=None) -> Path:
    """Distil a student for the teacher ODE (teacher, guidance, conditioning); returns its sidecar.
    An SDXL teacher goes to baselines.sdxl_train with `sdxl` (SDXLOptions)."""
    from odebench.students.consistency import export_mlp_student, export_unet_lcm_student
    from odebench.students.mlp import MLPConsistency
    from odebench.students.unet_lcm import UNetLCM
    from odebench.teachers import load_teacher
    from odebench.teachers.sdxl import is_sdxl_spec

    cfg.validate()
    from odebench.fileio import check_writable_dir

    check_writable_dir(Path(out))  # before the teacher loads and any step runs
    if is_sdxl_spec(teacher_spec):
        from baselines.sdxl_train import SDXLOptions, train_sdxl_student

        if conditional is False:
            raise OdebenchError("SDXL students are caption-conditioned; --uncond does not apply")
        return train_sdxl_student(cfg, str(teacher_spec), out, sdxl or SDXLOptions(), guidance, resume, progress,
                                  record_run=lambda record, write=True: record_run(out, record, resume, write))
    if sdxl is not None:
        raise OdebenchError(f"--data, --resolution, --mixed-precision, --optimizer, --device and --vae apply to SDXL teachers, not {teacher_spec!r}")
    teacher = load_teacher(teacher_spec, guidance)
    conditional = teacher.default_conditional if conditional is None else conditional
    if teacher.guidance.needs_uncond and not conditional:
        raise OdebenchError("classifier-free guidance needs class-conditional training (drop --uncond or set --guidance 1)")
    is_unet = hasattr(teacher, "unet")
    if not (is_unet or hasattr(teacher, "mixture")):
        raise OdebenchError(f"no student architecture for the {teacher.name!r} teacher")
    record = {"config": asdict(cfg), "teacher": teacher.fingerprint(), "guidance": teacher.guidance.to_dict(),
              "conditional": conditional, "hidden": hidden, "depth": depth}
    record_run(out, record, resume)
    torch.manual_seed(cfg.seed)
    if is_unet:
        # a copy of the teacher's UNet in the LCM parameterisation: LoRA (peft) or a full fine-tune
        unet = copy.deepcopy(teacher.unet).requires_grad_(True)
        if cfg.lora_rank:
            unet = with_lora(unet, cfg.lora_rank, cfg.lora_alpha or cfg.lora_rank)
        model = UNetLCM(unet, teacher.alphas_cumprod, teacher.null_class)
        data = ImageData(conditional)

        def export(stem, m, training, step):
            if cfg.lora_rank:  # ship plain UNet weights: LoRA merged in, no peft needed to load
                m = UNetLCM(copy.deepcopy(m.unet).merge_and_unload(), teacher.alphas_cumprod, teacher.null_class)
            return export_unet_lcm_student(stem, m, teacher, conditional, steps=1, training=training, step=step)
    else:
        model = MLPConsistency(teacher.shape[0], teacher.sigma_data, teacher.sigma_min, hidden=hidden, depth=depth,
                               num_classes=teacher.num_classes)
        data = MixtureData(teacher, conditional)

        def export(stem, m, training, step):
            return export_mlp_student(stem, m, teacher, conditional, steps=1, training=training, step=step)

    return train(cfg, teacher, model, data, out, resume, progress, export)


def ship_student(sidecar: Path, stem: Path) -> Path:
    """Copy a trained student to `stem`.json/.safetensors (e.g. odebench/assets/students/cm), re-checksummed."""
    from odebench.students.checkpoint import load_weights, read_sidecar, save_student

    side = read_sidecar(Path(sidecar))
    state = load_weights(Path(sidecar).parent / side["weights"], side.get("weights_sha256"))
    fields = {k: v for k, v in side.items() if k not in ("format", "format_version", "weights", "weights_sha256")}
    return save_student(stem, state, fields)
