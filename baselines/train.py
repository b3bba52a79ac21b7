"""`odebench train cm|direct`: build the teacher, the student network and the data, then run the loop."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from baselines.data import MixtureData
from baselines.distill import DistillConfig, train
from odebench.errors import OdebenchError
from odebench.fileio import atomic_write_bytes


def train_student(cfg: DistillConfig, teacher_spec: Any, out: Path, guidance=None, conditional: bool | None = None,
                  resume: bool = False, hidden: int = 256, depth: int = 3,
                  progress: Callable[[int, float, float], None] | None = None) -> Path:
    """Distil a student for the teacher ODE (teacher, guidance, conditioning); returns its sidecar."""
    from odebench.students.consistency import export_mlp_student
    from odebench.students.mlp import MLPConsistency
    from odebench.teachers import load_teacher

    cfg.validate()
    teacher = load_teacher(teacher_spec, guidance)
    conditional = teacher.default_conditional if conditional is None else conditional
    if teacher.guidance.needs_uncond and not conditional:
        raise OdebenchError("classifier-free guidance needs class-conditional training (drop --uncond or set --guidance 1)")
    if not hasattr(teacher, "mixture"):
        raise OdebenchError(f"training students for the {teacher.name!r} teacher needs the UNet student, which is not built yet; "
                            "GMM teachers (gmm, gmm64, JSON) are supported")
    record = {"config": asdict(cfg), "teacher": teacher.fingerprint(), "guidance": teacher.guidance.to_dict(),
              "conditional": conditional, "hidden": hidden, "depth": depth}
    rec_path = out / "train_config.json"
    if resume:
        if not rec_path.is_file():
            raise OdebenchError(f"--resume: {out} holds no training run (no {rec_path.name})")
        old = json.loads(rec_path.read_text())
        old["config"]["steps"] = cfg.steps  # extending a run is allowed; everything else must match
        if old != json.loads(json.dumps(record)):
            raise OdebenchError(f"--resume: the flags differ from the run in {out}; resume with the same flags (only --steps may grow)")
    atomic_write_bytes(rec_path, (json.dumps(record, indent=1) + "\n").encode())
    torch.manual_seed(cfg.seed)
    model = MLPConsistency(teacher.shape[0], teacher.sigma_data, teacher.sigma_min, hidden=hidden, depth=depth,
                           num_classes=teacher.num_classes)

    def export(stem, m, training, step):
        return export_mlp_student(stem, m, teacher, conditional, steps=1, training=training, step=step)

    return train(cfg, teacher, model, MixtureData(teacher, conditional), out, conditional, resume, progress, export)
