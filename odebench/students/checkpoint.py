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
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from odebench.errors import OdebenchError
from odebench.fileio import atomic_write_bytes, file_sha256, read_json_object

FORMAT = "odebench-student"
FORMAT_VERSION = 1
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
REQUIRED = ("weights", "architecture", "parameterisation", "sampler", "teacher", "guidance")


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
    side = read_json_object(path, "student sidecar")
    if side.get("format") != FORMAT:
        raise OdebenchError(f"{path}: not an odebench student sidecar (\"format\" must be \"{FORMAT}\")")
    if side.get("format_version") != FORMAT_VERSION:
        raise OdebenchError(f"{path}: student format version {side.get('format_version')!r} is not supported (this odebench reads {FORMAT_VERSION})")
    missing = [k for k in REQUIRED if k not in side]
    if missing:
        raise OdebenchError(f"{path}: student sidecar lacks {', '.join(missing)}")
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
    try:
        with warnings.catch_warnings():  # torch warns about some pickle protocols; our error says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OdebenchError(f"refusing to load {path}: not a plain tensor checkpoint ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise OdebenchError(f"{path}: expected a flat dict of tensors (a state dict)")
    return state
