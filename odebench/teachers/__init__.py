"""Teachers: built-in presets by name, JSON-defined teachers, and the loader that picks one."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from odebench.errors import OdebenchError
from odebench.teachers.base import Guidance, Teacher, check_network_dtype

PRESETS = {
    "digits": "class-conditional 8x8 pixel UNet (diffusers), eps-prediction on SD's discrete VP schedule, trained here on sklearn digits",
    "gmm": "2-D ring of 8 isotropic Gaussians (one class each), exact score",
    "gmm64": "64-D mixture of 16 diagonal Gaussians in 4 classes, exact score",
    "sdxl": "Stable Diffusion XL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0) from the local HF cache; also any diffusers SDXL folder or cached hub id",
}


DEFAULT_TEACHER = "digits"


def _preset_spec(name: str) -> dict[str, Any]:
    text = resources.files("odebench.assets").joinpath("teachers", f"{name}.json").read_text()
    return json.loads(text)


def load_teacher(spec: str | dict | Path | None = None, guidance: Guidance | None = None, dtype: str | None = None,
                 **sdxl_options) -> Teacher:
    """A teacher from a preset name, a JSON file path, or an inline definition (as in sidecars);
    `sdxl`, an SDXL diffusers folder or hub id load through odebench.teachers.sdxl with `sdxl_options`
    (vae, device, height, width, uncond). `dtype` (fp32 | bf16 | fp16) is the precision of a network
    teacher's network (an error for analytic teachers); the ODE state dtype is the SolverSpec's."""
    from odebench.teachers.gmm import gmm_from_spec
    from odebench.teachers.sdxl import is_sdxl_spec

    if spec is None:
        spec = DEFAULT_TEACHER
    sdxl_options = {k: v for k, v in sdxl_options.items() if v is not None}
    if dtype is not None:
        check_network_dtype(dtype)
    if is_sdxl_spec(spec):
        from odebench.teachers.sdxl import load_sdxl_teacher

        teacher = load_sdxl_teacher(str(spec), **sdxl_options, **({"dtype": dtype} if dtype is not None else {}))
        return teacher.with_guidance(guidance) if guidance is not None else teacher
    if sdxl_options:
        raise OdebenchError(f"{', '.join('--' + k for k in sdxl_options)} apply to SDXL teachers only, not {spec!r}")
    if spec == "digits":
        from odebench.teachers.unet import load_unet_teacher

        teacher = load_unet_teacher(Path(str(resources.files("odebench.assets").joinpath("digits", "teacher.json"))), "digits")
    elif isinstance(spec, dict):
        teacher = gmm_from_spec(spec, "teacher definition")
    elif str(spec) in PRESETS:
        teacher = gmm_from_spec(_preset_spec(str(spec)), f"preset {spec}")
    else:
        path = Path(spec)
        if path.suffix.lower() != ".json" and not path.exists():
            raise OdebenchError(f"unknown teacher {str(spec)!r}: expected one of {', '.join(PRESETS)} or a teacher JSON file")
        if not path.is_file():
            raise OdebenchError(f"teacher file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise OdebenchError(f"{path}: not valid JSON ({e})") from None
        if isinstance(data, dict) and "name" not in data:
            data = {**data, "name": path.stem}  # a file's teacher is not the "gmm" preset
        teacher = gmm_from_spec(data, str(path))
    if dtype is not None:
        teacher = teacher.with_network_dtype(dtype)
    if guidance is not None:
        teacher = teacher.with_guidance(guidance)
    return teacher


__all__ = ["Guidance", "Teacher", "load_teacher", "PRESETS"]
