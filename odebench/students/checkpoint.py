"""The odebench student format: safetensors weights plus a JSON sidecar that fully describes them.

Sidecar (`<stem>.json`, format "odebench-student", version 1):
  weights          file name of the weights, relative to the sidecar (.safetensors; .pt/.pth are
                   read with torch.load(weights_only=True) and refused if they hold code)
  weights_sha256   checksum of the weights file
  architecture     {"kind": "mlp", ...constructor arguments}
  parameterisation {"kind": "edm-cm", "sigma_data", "sigma_min"}
  sampler          {"steps": default k, "grid": "karras", "rho": 7}
  teacher          {"name", "fingerprint", "spec"}: the teacher ODE it was distilled from
  guidance         {"w", "form", "uncond"}; conditional: bool
  training, step   free-form record of how it was made
A path given to `odebench run --student` may be the sidecar, the weights file (sidecar beside it)
or a directory holding exactly one sidecar.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from odebench.errors import OdebenchError
from odebench.fileio import atomic_write_bytes, file_sha256, load_torch_tensors, read_json_object
from odebench.schema import Bool, Int, Num, Obj, OneOf, Opt, Str, validate
from odebench.teachers.base import GUIDANCE_FORMS

FORMAT = "odebench-student"
FORMAT_VERSION = 1
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
REQUIRED = ("weights", "architecture", "parameterisation", "sampler", "teacher", "guidance")

# What the loaders read, with the ranges that keep them meaningful; free-form records stay unchecked.
# Noise levels are bounded so that their squares stay far from float32 overflow.
SIGMA = 1e8
GUIDANCE = Obj({"w": Num(abs_le=1e6), "form": Str(GUIDANCE_FORMS), "uncond": Str(("null", "zeros", "empty-prompt")),
                "imagen_w": Num()}, required=("w",))
_SCHEDULE = Obj({"kind": Str(), "beta_schedule": Str(), "beta_start": Num(gt=0, lt=1), "beta_end": Num(gt=0, lt=1),
                 "num_train_timesteps": Int(ge=2)}, required=("kind", "beta_schedule", "beta_start", "beta_end", "num_train_timesteps"))
# the fields each kind needs on top of SIDECAR (odebench.students.load.build_model and the samplers read them)
KIND_SCHEMAS = {
    ("architecture", "mlp"): Obj({"kind": Str(), "dim": Int(ge=1), "hidden": Int(ge=1), "depth": Int(ge=1),
                                  "emb_dim": Int(ge=2, multiple_of=2), "num_classes": Opt(Int(ge=1))},
                                 required=("kind", "dim", "hidden", "depth", "emb_dim"), extra=False),
    ("architecture", "unet-lcm"): Obj(required=("unet_config",)),
    ("parameterisation", "edm-cm"): Obj(required=("sigma_data", "sigma_min")),
    ("parameterisation", "lcm"): Obj(required=("sigma_data", "sigma_min", "timestep_scaling")),
    ("sampler", "lcm"): Obj(required=("num_train_timesteps",)),
}
SIDECAR = Obj({
    "format": Str((FORMAT,)),
    "format_version": Int(),
    "weights": Str(nonempty=True),
    "weights_sha256": Str(test=lambda h: len(h) == 64 and all(c in "0123456789abcdef" for c in h), what="64 lowercase hex digits"),
    "architecture": Obj({"kind": Str(nonempty=True), "unet_config": Obj(), "schedule": _SCHEDULE, "null_class": Int(ge=0),
                         "unet_class": Str()}, required=("kind",)),
    "parameterisation": Obj({"kind": Str(nonempty=True), "sigma_data": Num(gt=0, le=SIGMA), "sigma_min": Num(ge=0, le=SIGMA),
                             "timestep_scaling": Num(gt=0, le=1e6), "unet_timestep_offset": Num(abs_le=1e6),
                             "scalings_timestep_offset": Num(abs_le=1e6), "skip": Str()}, required=("kind",)),
    "sampler": Obj({"steps": Int(ge=1), "rho": Num(gt=0, le=1e3), "sigma_max": Num(gt=0, le=SIGMA), "grid": Str(), "kind": Str(),
                    "num_train_timesteps": Int(ge=1), "grid_steps": Int(ge=1), "schedule": Str()}),
    "teacher": Obj({"name": Str(), "fingerprint": Str(), "spec": OneOf(Obj(), Str(nonempty=True))}, required=("fingerprint",)),
    "guidance": GUIDANCE,
    "guidance_embedding": Obj({"w_lcm": Num(abs_le=1e6)}, required=("w_lcm",)),
    "conditional": Bool(),
    "step": Int(ge=0),
    "dtype": Str(("float32", "float64", "float16", "bfloat16")),
    "training": Obj(),
    "ode": Obj(),
}, required=REQUIRED)


def save_student(stem: Path | str, state_dict: dict[str, torch.Tensor], sidecar: dict[str, Any]) -> Path:
    """Write `<stem>.safetensors` then `<stem>.json` (sidecar last, so a sidecar implies weights)."""
    from safetensors.torch import save

    stem = Path(stem)
    weights = stem.with_suffix(".safetensors")
    blob = save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, metadata={"format": FORMAT})
    atomic_write_bytes(weights, blob)
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, **sidecar, "weights": weights.name,
            "weights_sha256": hashlib.sha256(blob).hexdigest()}
    side = stem.with_suffix(".json")
    atomic_write_bytes(side, (json.dumps(full, indent=1, sort_keys=True) + "\n").encode())
    return side


def resolve_sidecar(path: Path) -> Path:
    """The sidecar for a user-given student path."""
    if path.is_dir():
        sidecars = [p for p in sorted(path.glob("*.json")) if _looks_like_sidecar(p)]
        if len(sidecars) != 1:
            raise OdebenchError(f"{path}: expected exactly one odebench student sidecar (*.json) in the directory, found {len(sidecars)}")
        return sidecars[0]
    if not path.exists():
        raise OdebenchError(f"student checkpoint not found: {path}")
    if path.suffix.lower() == ".json":
        return path
    if path.suffix.lower() in WEIGHT_SUFFIXES:
        side = path.with_suffix(".json")
        if not side.exists():
            raise OdebenchError(f"{path}: no sidecar {side.name} beside the weights; odebench needs it to know the architecture and teacher")
        return side
    raise OdebenchError(f"{path}: not a student checkpoint (expected .json sidecar, {'/'.join(WEIGHT_SUFFIXES)} weights, or a directory)")


def _looks_like_sidecar(p: Path) -> bool:
    try:
        return json.loads(p.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_sidecar(path: Path) -> dict[str, Any]:
    """The sidecar at `path`, checked against SIDECAR (and its architecture's schema) before any use."""
    side = read_json_object(path, "student sidecar")
    if side.get("format") != FORMAT:
        raise OdebenchError(f"{path}: not an odebench student sidecar (\"format\" must be \"{FORMAT}\")")
    if side.get("format_version") != FORMAT_VERSION:
        raise OdebenchError(f"{path}: student format version {side.get('format_version')!r} is not supported (this odebench reads {FORMAT_VERSION})")
    missing = [k for k in REQUIRED if k not in side]
    if missing:
        raise OdebenchError(f"{path}: student sidecar lacks {', '.join(missing)}")
    validate(side, SIDECAR, str(path))
    for (part, kind), schema in KIND_SCHEMAS.items():
        if side[part].get("kind") == kind:
            validate(side, Obj({part: schema}), str(path))
    sampler, param = side["sampler"], side["parameterisation"]
    if param.get("kind") == "edm-cm" and "sigma_max" in sampler and not sampler["sigma_max"] > param["sigma_min"]:
        raise OdebenchError(f"{path}: \"sampler.sigma_max\" must be above \"parameterisation.sigma_min\" "
                            f"({param['sigma_min']}), got {sampler['sigma_max']}")
    if sampler.get("kind") == "lcm" and sampler.get("steps", 1) > sampler["num_train_timesteps"]:
        raise OdebenchError(f"{path}: \"sampler.steps\" must be at most \"sampler.num_train_timesteps\" "
                            f"({sampler['num_train_timesteps']}), got {sampler['steps']}")
    return side


def load_weights(path: Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors only: safetensors, or torch.load(weights_only=True), which refuses pickled code."""
    if not path.is_file():
        raise OdebenchError(f"student weights not found: {path}")
    if expected_sha256 and file_sha256(path) != expected_sha256:
        raise OdebenchError(f"{path}: weights do not match the checksum in the sidecar (file changed or corrupt)")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise OdebenchError(f"{path}: unreadable safetensors file ({e})") from None
    state = load_torch_tensors(path, "student weights file")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise OdebenchError(f"{path}: expected a flat dict of tensors (a state dict)")
    return state
