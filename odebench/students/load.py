"""The built-in student kinds: `ref`, the solver rows `ddim:K` / `euler:K` / `heun:K` / `dpm2:K`, the
shipped students (`cm`, `direct`: found by name) and odebench checkpoints (a .json sidecar, its
weights file or a directory holding one sidecar; odebench.students.checkpoint)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from odebench.errors import OdebenchError
from odebench.ode.spec import SolverSpec
from odebench.students.kinds import DeclaredODE, LoadContext, StudentKind, load_student, register  # noqa: F401 (load_student re-exported)
from odebench.students.solvers import SOLVER_KINDS
from odebench.teachers.base import Guidance, Teacher

SOLVER_RE = re.compile(r"^([a-z0-9]+):(.*)$")
SHIPPED = ("cm", "direct")  # digits students trained by `odebench train`, in odebench/assets/students
WEIGHT_SUFFIXES = (".json", ".safetensors", ".pt", ".pth", ".bin")


def shipped_path(spec: str) -> str:
    """A shipped student's sidecar path for its short name; other specs unchanged."""
    if spec in SHIPPED:
        from importlib import resources

        return str(resources.files("odebench.assets").joinpath("students", f"{spec}.json"))
    return spec


def checkpoint_sidecar(spec: str) -> tuple[Path, dict[str, Any]]:
    from odebench.students.checkpoint import read_sidecar, resolve_sidecar

    side_path = resolve_sidecar(Path(shipped_path(spec)))
    return side_path, read_sidecar(side_path)


def build_model(side: dict[str, Any], source: Path) -> torch.nn.Module:
    from odebench.students.mlp import MLPConsistency

    arch = dict(side["architecture"])
    param = side["parameterisation"]
    kind = arch.pop("kind", None)
    if kind == "unet-lcm" and param.get("kind") == "lcm":
        from diffusers import UNet2DModel

        from odebench.students.unet_lcm import UNetLCM
        from odebench.teachers.discrete import alphas_cumprod_from_schedule

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


class ReferenceKind(StudentKind):
    name = "ref"
    help = "ref (the reference solver itself: the zero-error oracle row)"
    priority = 0

    def matches(self, spec):
        return spec == "ref"

    def load(self, spec, ctx):
        from odebench.students.reference import ReferenceStudent

        return ReferenceStudent(ctx.teacher, (ctx.reference or SolverSpec()).resolved(
            "float64" if ctx.teacher.default_dtype == torch.float64 else "float32")), None


class SolverKind(StudentKind):
    name = "solver"
    help = ("ddim:K | euler:K | heun:K | dpm2:K (the teacher's own ODE on the Karras grid (rho=7) of K levels "
            "sigma_max..sigma_min then a final step to 0; ddim/euler cost K teacher evaluations, heun/dpm2 2K-1)")
    priority = 10

    def matches(self, spec):
        m = SOLVER_RE.match(spec)
        return bool(m) and m.group(1) in SOLVER_KINDS

    def load(self, spec, ctx):
        from odebench.students.solvers import SolverStudent

        method, k = SOLVER_RE.match(spec).groups()
        if not k.isdigit() or int(k) < 1:
            raise OdebenchError(f"student {spec!r}: the step count K must be a positive integer (e.g. {method}:4)")
        return SolverStudent(ctx.teacher, method, int(k)), None


class CheckpointKind(StudentKind):
    """odebench's own student format (odebench.students.checkpoint); any path may be one, so it matches last."""

    name = "odebench"
    help = "a student checkpoint (.json sidecar, weights file or directory)"
    priority = 90

    def matches(self, spec):
        return spec.lower().endswith(WEIGHT_SUFFIXES) or "/" in spec or Path(spec).exists()

    def export(self, stem, state_dict, sidecar):
        """save_student: `<stem>.safetensors` then the sidecar `<stem>.json` (odebench.students.checkpoint)."""
        from odebench.students.checkpoint import save_student

        return save_student(stem, state_dict, sidecar)

    def declared_ode(self, spec):
        _, side = checkpoint_sidecar(spec)
        t = side["teacher"]
        return DeclaredODE(t.get("spec") or t.get("name"), Guidance.from_dict(side["guidance"]),
                           bool(side.get("conditional", False)), f"student {spec}")

    def load(self, spec, ctx):
        from odebench.students.checkpoint import load_weights
        from odebench.students.consistency import ConsistencyStudent

        teacher = ctx.teacher
        side_path, side = checkpoint_sidecar(spec)
        note = check_compatible(side, teacher, ctx.conditional, side_path)
        if note and not ctx.allow_mismatch:
            raise OdebenchError(note + "; pass --allow-mismatch to score it against this teacher anyway")
        if side["architecture"].get("unet_class") == "UNet2DConditionModel":  # an odebench text-to-image UNet student
            from odebench.students.lcm_sdxl import build_odebench_sdxl_student

            state = load_weights(side_path.parent / side["weights"], side.get("weights_sha256"))
            return build_odebench_sdxl_student(side, side_path, state, teacher), note
        model = build_model(side, side_path)
        if tuple(model.sample_shape) != tuple(teacher.shape):
            raise OdebenchError(f"{side_path.name} works on data of shape {tuple(model.sample_shape)}, but teacher "
                                f"{teacher.name!r} has shape {tuple(teacher.shape)}")
        if ctx.conditional and model.num_classes != teacher.num_classes:
            raise OdebenchError(f"{side_path.name} knows {model.num_classes} classes, but teacher {teacher.name!r} has {teacher.num_classes}")
        state = load_weights(side_path.parent / side["weights"], side.get("weights_sha256"))
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise OdebenchError(f"{side_path}: weights do not fit the architecture in the sidecar ({str(e).splitlines()[0]})") from None
        name = side_path.stem if side_path.stem != "student" else side_path.parent.name
        return ConsistencyStudent(model, side, spec, name), note


class ShippedKind(CheckpointKind):
    """The students odebench ships (odebench/assets/students), by name; a default run of the teacher they
    were distilled from scores them."""

    name = "shipped"
    help = f"{' | '.join(SHIPPED)} (the shipped digits students)"
    priority = 30

    def matches(self, spec):
        return spec in SHIPPED

    def defaults_for(self, teacher):
        found = []
        for name in SHIPPED:
            path = Path(shipped_path(name))
            if path.is_file() and json.loads(path.read_text())["teacher"].get("fingerprint") == teacher.fingerprint():
                found.append(name)
        return tuple(found)


for _kind in (ReferenceKind(), SolverKind(), ShippedKind(), CheckpointKind()):
    register(_kind)
