"""`odebench train cm|direct`: build the teacher, the student network and the data, then run the loop."""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
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


@dataclass(frozen=True)
class Trainer:
    """How `odebench train` distils a student for one teacher family: its default settings, whether it
    takes the text-to-image options (--data, --resolution, ...), and the function that trains."""

    family: str
    run: Callable[..., Path]
    defaults: Callable[[], dict[str, Any]]  # the flags' defaults (a function: the SDXL ones import lazily)
    image_options: bool = False


PLAIN_DEFAULTS = {"steps": 2000, "batch_size": 256, "lr": 1e-3, "weight_decay": 0.0, "seed": 0, "checkpoint_every": 500,
                  "lora_rank": 0, "lora_alpha": 0.0}


def _train_sdxl(cfg, teacher_spec, out, guidance, conditional, resume, progress, sdxl, **_):
    from baselines.sdxl_train import SDXLOptions, train_sdxl_student

    if conditional is False:
        raise OdebenchError("SDXL students are caption-conditioned; --uncond does not apply")
    return train_sdxl_student(cfg, str(teacher_spec), out, sdxl or SDXLOptions(), guidance, resume, progress,
                              record_run=lambda record, write=True: record_run(out, record, resume, write))


def _flow_image(title: str):
    """A flow-transformer family's trainer (SD3 / SD3.5, FLUX.1): baselines.flow_train."""

    def run(cfg, teacher_spec, out, guidance, conditional, resume, progress, sdxl, **_):
        from baselines.flow_train import train_flow_student
        from baselines.image_train import ImageOptions

        if conditional is False:
            raise OdebenchError(f"{title} students are caption-conditioned; --uncond does not apply")
        return train_flow_student(cfg, str(teacher_spec), out, sdxl or ImageOptions(), title, guidance, resume, progress,
                                  record_run=lambda record, write=True: record_run(out, record, resume, write))

    return run


def _train_mixture(cfg, teacher, out, conditional, resume, progress, hidden, depth):
    from odebench.students.consistency import export_mlp_student
    from odebench.students.mlp import MLPConsistency

    model = MLPConsistency(teacher.shape[0], teacher.sigma_data, teacher.sigma_min, hidden=hidden, depth=depth,
                           num_classes=teacher.num_classes)
    data = MixtureData(teacher, conditional)

    def export(stem, m, training, step):
        return export_mlp_student(stem, m, teacher, conditional, steps=1, training=training, step=step)

    return train(cfg, teacher, model, data, out, resume, progress, export)


def _train_class_unet(cfg, teacher, out, conditional, resume, progress, hidden, depth):
    from odebench.students.consistency import export_unet_lcm_student
    from odebench.students.unet_lcm import UNetLCM

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

    return train(cfg, teacher, model, data, out, resume, progress, export)


def _plain(build):
    """A trainer on a teacher odebench loads itself: the teacher ODE, the run record, then `build`'s loop."""

    def run(cfg, teacher_spec, out, guidance, conditional, resume, progress, sdxl, hidden=256, depth=3):
        from odebench.teachers import load_teacher

        if sdxl is not None:
            raise OdebenchError(f"--data, --resolution, --mixed-precision, --optimizer, --device and --vae apply to SDXL teachers, not {teacher_spec!r}")
        teacher = load_teacher(teacher_spec, guidance)
        conditional = teacher.default_conditional if conditional is None else conditional
        if teacher.guidance.needs_uncond and not conditional:
            raise OdebenchError("classifier-free guidance needs class-conditional training (drop --uncond or set --guidance 1)")
        record = {"config": asdict(cfg), "teacher": teacher.fingerprint(), "guidance": teacher.guidance.to_dict(),
                  "conditional": conditional, "hidden": hidden, "depth": depth}
        record_run(out, record, resume)
        torch.manual_seed(cfg.seed)
        return build(cfg, teacher, out, conditional, resume, progress, hidden, depth)

    return run


def _sdxl_defaults() -> dict[str, Any]:
    from baselines.sdxl_train import PAPER_DEFAULTS

    return PAPER_DEFAULTS


def _flow_defaults() -> dict[str, Any]:
    from baselines.flow_train import FLOW_DEFAULTS

    return FLOW_DEFAULTS


# family name (odebench.teachers.family) -> its trainer; a family without one cannot be trained on
TRAINERS: dict[str, Trainer] = {
    "gmm": Trainer("gmm", _plain(_train_mixture), lambda: PLAIN_DEFAULTS),
    "digits": Trainer("digits", _plain(_train_class_unet), lambda: PLAIN_DEFAULTS),
    "sdxl": Trainer("sdxl", _train_sdxl, _sdxl_defaults, image_options=True),
    "sd3": Trainer("sd3", _flow_image("SD3"), _flow_defaults, image_options=True),
    "flux": Trainer("flux", _flow_image("FLUX.1"), _flow_defaults, image_options=True),
}


def trainer_for(teacher_spec: Any) -> Trainer:
    """The trainer registered for the family of `teacher_spec`."""
    from odebench.teachers.family import family_for_spec

    family = family_for_spec(teacher_spec)
    if family.name not in TRAINERS:
        raise OdebenchError(f"no student architecture for {family.name} teachers (odebench trains on {', '.join(TRAINERS)})")
    return TRAINERS[family.name]


def train_student(cfg: DistillConfig, teacher_spec: Any, out: Path, guidance=None, conditional: bool | None = None,
                  resume: bool = False, hidden: int = 256, depth: int = 3,
                  progress: Callable[[int, float, float], None] | None = None, sdxl=None) -> Path:
    """Distil a student for the teacher ODE (teacher, guidance, conditioning); returns its sidecar.
    A text-to-image teacher's trainer takes `sdxl` (baselines.image_train.ImageOptions)."""
    cfg.validate()
    from odebench.fileio import check_writable_dir

    check_writable_dir(Path(out))  # before the teacher loads and any step runs
    return trainer_for(teacher_spec).run(cfg, teacher_spec, out, guidance, conditional, resume, progress, sdxl,
                                         hidden=hidden, depth=depth)


def ship_student(sidecar: Path, stem: Path) -> Path:
    """Copy a trained student to `stem`.json/.safetensors (e.g. odebench/assets/students/cm), re-checksummed."""
    from odebench.students.checkpoint import load_weights, read_sidecar, save_student

    side = read_sidecar(Path(sidecar))
    state = load_weights(Path(sidecar).parent / side["weights"], side.get("weights_sha256"))
    fields = {k: v for k, v in side.items() if k not in ("format", "format_version", "weights", "weights_sha256")}
    return save_student(stem, state, fields)
