"""Student specs: `ref`, `ddim:K`, `euler:K`, `heun:K`, `dpm2:K`, or a student checkpoint path."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from odebench.errors import OdebenchError
from odebench.ode.spec import SolverSpec
from odebench.students.base import Student
from odebench.students.solvers import SOLVER_KINDS
from odebench.teachers.base import Guidance, Teacher

SOLVER_RE = re.compile(r"^([a-z0-9]+):(.*)$")
SPEC_HELP = "ref, ddim:K, euler:K, heun:K, dpm2:K, cm / direct (shipped digits students), a student checkpoint (.json sidecar, weights file or directory), or for SDXL an LCM-LoRA, an LCM-SDXL UNet folder or a direct-cms checkpoint-* folder (path or cached hub id)"


SHIPPED = ("cm", "direct")  # digits students trained by `odebench train`, in odebench/assets/students


def shipped_path(spec: str) -> str:
    """A shipped student's sidecar path for its short name; other specs unchanged."""
    if spec in SHIPPED:
        from importlib import resources

        return str(resources.files("odebench.assets").joinpath("students", f"{spec}.json"))
    return spec


def is_checkpoint_spec(spec: str) -> bool:
    return spec != "ref" and not (SOLVER_RE.match(spec) and SOLVER_RE.match(spec).group(1) in SOLVER_KINDS)


def is_external_spec(spec: str) -> bool:
    """An SDXL student that is not an odebench checkpoint: LCM-LoRA, LCM-SDXL UNet, direct-cms checkpoint."""
    from odebench.students.lcm_sdxl import external_kind

    if not is_checkpoint_spec(spec) or spec in SHIPPED or spec.lower().endswith(".json"):
        return False
    try:
        return external_kind(spec) is not None
    except OdebenchError:  # a hub id that is not on this machine: loading it gives the "put it here" error
        from odebench.weights import _is_hub_id

        return _is_hub_id(spec) and not Path(spec).exists()


def checkpoint_sidecar(spec: str) -> tuple[Path, dict[str, Any]]:
    from odebench.students.checkpoint import read_sidecar, resolve_sidecar

    path = Path(shipped_path(spec))
    if not path.exists() and not any(spec.endswith(s) for s in (".json", ".safetensors", ".pt", ".pth", ".bin")) and "/" not in spec:
        raise OdebenchError(f"unknown student {spec!r}: expected {SPEC_HELP}")
    side_path = resolve_sidecar(path)
    return side_path, read_sidecar(side_path)


def build_model(side: dict[str, Any], source: Path) -> torch.nn.Module:
    from odebench.students.mlp import MLPConsistency

    arch = dict(side["architecture"])
    param = side["parameterisation"]
    kind = arch.pop("kind", None)
    if kind == "unet-lcm" and param.get("kind") == "lcm":
        from diffusers import UNet2DModel

        from odebench.students.unet_lcm import UNetLCM
        from odebench.teachers.unet import alphas_cumprod_from_schedule

        try:
            unet = UNet2DModel.from_config(arch["unet_config"])
            return UNetLCM(unet, alphas_cumprod_from_schedule(arch["schedule"]), arch["null_class"],
                           float(param["sigma_data"]), float(param["timestep_scaling"]))
        except (TypeError, KeyError, ValueError) as e:
            raise OdebenchError(f"{source}: malformed unet-lcm architecture ({e})") from None
    if kind != "mlp" or param.get("kind") != "edm-cm":
        raise OdebenchError(f"{source}: unsupported student architecture {kind!r} / parameterisation {param.get('kind')!r} (this odebench knows mlp / edm-cm and unet-lcm / lcm)")
    try:
        return MLPConsistency(sigma_data=float(param["sigma_data"]), sigma_min=float(param["sigma_min"]), **arch)
    except (TypeError, KeyError, ValueError) as e:
        raise OdebenchError(f"{source}: malformed architecture or parameterisation ({e})") from None


def check_compatible(side: dict[str, Any], teacher: Teacher, conditional: bool, source: Path) -> str | None:
    """Why the run's teacher ODE is not the one this student was distilled from (None if it is)."""
    t = side["teacher"]
    if t.get("fingerprint") != teacher.fingerprint():
        return (f"{source.name} was trained for teacher {t.get('name')!r} ({t.get('fingerprint')}), "
                f"but this run's teacher is {teacher.name!r} ({teacher.fingerprint()})")
    g = Guidance.from_dict(side["guidance"])
    if not g.same_ode(teacher.guidance):
        return (f"{source.name} was trained for guidance {g.describe()}, but this run uses {teacher.guidance.describe()}")
    if bool(side.get("conditional", False)) != conditional:
        want = "class-conditional" if side.get("conditional") else "unconditional"
        return f"{source.name} was trained {want}, but this run is {'class-conditional' if conditional else 'unconditional'}"
    return None


def load_student(spec: str, teacher: Teacher, reference: SolverSpec | None = None, conditional: bool = False,
                 allow_mismatch: bool = False, student_guidance: Guidance | None = None,
                 student_convention: str | None = None) -> tuple[Student, str | None]:
    """Build a student for `teacher`; returns it with a mismatch note (set only when allowed).
    `student_guidance` / `student_convention` declare how an external SDXL student was distilled."""
    from odebench.students.consistency import ConsistencyStudent
    from odebench.students.reference import ReferenceStudent
    from odebench.students.solvers import SolverStudent
    from odebench.students.checkpoint import load_weights

    spec = spec.strip()
    if spec == "ref":
        return ReferenceStudent(teacher, (reference or SolverSpec()).resolved(
            "float64" if teacher.default_dtype == torch.float64 else "float32")), None
    m = SOLVER_RE.match(spec)
    if m and m.group(1) in SOLVER_KINDS:
        if not m.group(2).isdigit() or int(m.group(2)) < 1:
            raise OdebenchError(f"student {spec!r}: the step count K must be a positive integer (e.g. {m.group(1)}:4)")
        return SolverStudent(teacher, m.group(1), int(m.group(2))), None
    if is_external_spec(spec):
        from odebench.students.lcm_sdxl import load_external_student

        return load_external_student(spec, teacher, guidance=student_guidance, convention=student_convention,
                                     allow_mismatch=allow_mismatch)
    side_path, side = checkpoint_sidecar(spec)
    note = check_compatible(side, teacher, conditional, side_path)
    if note and not allow_mismatch:
        raise OdebenchError(note + "; pass --allow-mismatch to score it against this teacher anyway")
    if side["architecture"].get("unet_class") == "UNet2DConditionModel":  # an odebench SDXL student
        from odebench.students.lcm_sdxl import build_odebench_sdxl_student

        state = load_weights(side_path.parent / side["weights"], side.get("weights_sha256"))
        return build_odebench_sdxl_student(side, side_path, state, teacher), note
    model = build_model(side, side_path)
    shape = (model.dim,) if hasattr(model, "dim") else (model.unet.config.in_channels, model.unet.config.sample_size, model.unet.config.sample_size)
    if tuple(shape) != tuple(teacher.shape):
        raise OdebenchError(f"{side_path.name} works on data of shape {tuple(shape)}, but teacher {teacher.name!r} has shape {tuple(teacher.shape)}")
    if conditional and getattr(model, "num_classes", teacher.num_classes) != teacher.num_classes:
        raise OdebenchError(f"{side_path.name} knows {model.num_classes} classes, but teacher {teacher.name!r} has {teacher.num_classes}")
    state = load_weights(side_path.parent / side["weights"], side.get("weights_sha256"))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise OdebenchError(f"{side_path}: weights do not fit the architecture in the sidecar ({str(e).splitlines()[0]})") from None
    name = side_path.stem if side_path.stem != "student" else side_path.parent.name
    return ConsistencyStudent(model, side, spec, name), note
