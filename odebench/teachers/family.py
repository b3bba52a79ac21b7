"""The teacher-family registry: how a `--teacher` spec is recognised and loaded, and what a run of
each family gets by default (rows, the paper-grid reference, quality metrics, help text).

A family is one module that subclasses `TeacherFamily` and calls `register(...)` at import; the
built-in ones are listed in BUILTIN (imported on first use, so `import odebench` stays light) and
installed packages may add theirs under the entry-point group `odebench.teacher_families`. Adding a
family is that module plus its line in BUILTIN. The run asks the family of a teacher (`family_of`) —
never the teacher's class or name — what it can do.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from odebench.errors import OdebenchError
from odebench.registry import Registry

if TYPE_CHECKING:
    from odebench.teachers.base import Teacher

BUILTIN = ("odebench.teachers.gmm", "odebench.teachers.unet", "odebench.teachers.sdxl", "odebench.teachers.sd",
           "odebench.teachers.flow_pipelines")
ENTRY_POINTS = "odebench.teacher_families"


@dataclass(frozen=True)
class PaperGrid:
    """The paper-mode reference of a discrete family (PAPER.md): `solver` on the 1-indexed N-point grid.
    `unet_timesteps` is the default of --ddim100-timesteps: "sigma" (the network sees the timestep of
    sigma, abar index t - 1) or "paper" (the released code: the network sees the integer t)."""

    n: int = 100
    solver: str = "ddim"
    unet_timesteps: str = "sigma"


class TeacherFamily:
    """One family of teachers. Subclasses set the class attributes and implement matches / load."""

    name: str = ""
    title: str = ""  # display name in messages (default: name)
    help: str = ""  # one line for --help and `odebench ls`
    presets: dict[str, str] = {}  # spec names this family answers to -> what they are
    options: tuple[str, ...] = ()  # teacher options it takes (--dtype, --device, --vae, --height, --width, --uncond)
    paper_grid: PaperGrid | None = None  # the ode_mse@ddim100 reference, if the family has one
    default_rows: tuple[str, ...] = ("ddim:1", "ddim:2", "ddim:4", "ddim:16", "heun:8", "ref")

    def matches(self, spec: Any) -> bool:
        """Whether `spec` (a name, path, hub id or inline definition) names a teacher of this family."""
        raise NotImplementedError

    def load(self, spec: Any, **options) -> "Teacher":
        """The teacher `spec` names, with this family's `options` (already checked to be among them)."""
        raise NotImplementedError

    def rows(self, teacher: "Teacher") -> tuple[str, ...]:
        """The student rows a run of `teacher` scores when none are asked for (trained students the
        student-kind registry ships for this teacher are added before `ref`)."""
        return self.default_rows

    def quality(self, teacher: "Teacher", conditions, seed: int, n: int, selection: str = "auto",
                weights: dict[str, Any] | None = None, device=None, fd_bootstrap: int = 10):
        """The quality scorer for this family's samples (odebench.quality), or None."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "help": self.help, "presets": dict(self.presets), "options": list(self.options),
                "paper_grid": None if self.paper_grid is None else vars(self.paper_grid)}


_REGISTRY: "Registry[TeacherFamily]" = Registry("teacher family", BUILTIN, ENTRY_POINTS)


def register(family: TeacherFamily) -> TeacherFamily:
    """Add a family (a later registration of the same name replaces the earlier one)."""
    return _REGISTRY.register(family)


def unregister(name: str) -> None:
    _REGISTRY.unregister(name)


def families() -> list[TeacherFamily]:
    """Every registered family, in registration order (the order specs are matched in)."""
    return _REGISTRY.items()


def get_family(name: str) -> TeacherFamily:
    return _REGISTRY.get(name)


def family_of(teacher: "Teacher") -> TeacherFamily:
    """The family a teacher declares (`Teacher.family`)."""
    return get_family(teacher.family)


def family_for_spec(spec: Any) -> TeacherFamily:
    """The first registered family whose `matches(spec)` is true; a one-line error otherwise."""
    for fam in families():
        if fam.matches(spec):
            return fam
    from odebench.weights import _is_hub_id, resolve_weights

    s = str(spec)
    if isinstance(spec, str) and _is_hub_id(s):
        resolve_weights(s, f"teacher {s}", describe="a diffusers pipeline folder", flag="--teacher PATH")  # raises if absent
        raise OdebenchError(f"teacher {s}: its folder is not a pipeline any teacher family knows ({families_help()})")
    raise OdebenchError(f"unknown teacher {s!r}: expected {families_help()}")


def families_help() -> str:
    """One line naming every family and its presets, for error messages and --help."""
    parts = []
    for fam in families():
        names = " | ".join(fam.presets) if fam.presets else fam.name
        parts.append(f"{names} ({fam.help})" if fam.help else names)
    return "; ".join(parts)


def presets() -> dict[str, str]:
    """Every family's named presets -> what they are (for `odebench ls`)."""
    out: dict[str, str] = {}
    for fam in families():
        out.update(fam.presets)
    return out
