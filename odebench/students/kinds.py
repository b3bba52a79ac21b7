"""The student-kind registry: how a `--student` spec is recognised and loaded, its help text, the
teacher ODE a student file declares, and the rows a kind adds to a default run.

A kind is a `StudentKind` subclass registered at import by its module; the built-in modules are in
BUILTIN (imported on first use) and installed packages may add kinds under the entry-point group
`odebench.student_kinds`. Specs are matched in `priority` order (lower first); the odebench checkpoint
kind comes last because any path may be one. Shipped students are found by name here — teachers
know nothing of students.

Every student says what it is meant to do in `Student.kind` (recorded in results and reports):
`oracle` (the reference itself), `solver` (a few-step solver of the teacher's own ODE), `trajectory`
(trained to solve the ODE: CM, LCM, TCD, PCM, Direct CM), `distribution` (trained to match the data
distribution: DMD2, ADD/Turbo, LADD) or `hybrid` (both: Hyper-SD, Lightning). For the last two the ODE
error is descriptive: they were not trained to solve it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from odebench.errors import OdebenchError
from odebench.registry import Registry

if TYPE_CHECKING:
    from odebench.ode.spec import SolverSpec
    from odebench.students.base import Student
    from odebench.teachers.base import Guidance, Teacher

BUILTIN = ("odebench.students.load", "odebench.students.scheduler", "odebench.students.card", "odebench.students.lcm_sdxl")
ENTRY_POINTS = "odebench.student_kinds"
STUDENT_KINDS = ("oracle", "solver", "trajectory", "distribution", "hybrid")  # what Student.kind may be
DESCRIPTIVE_KINDS = ("distribution", "hybrid")  # ODE error is descriptive for these


@dataclass
class LoadContext:
    """What loading a student may depend on: the run's teacher and reference, conditioning, and the
    user's declarations about an external student (how it was distilled)."""

    teacher: "Teacher"
    reference: "SolverSpec | None" = None
    conditional: bool = False
    allow_mismatch: bool = False
    guidance: "Guidance | None" = None  # --student-guidance
    convention: str | None = None  # --student-convention


@dataclass(frozen=True)
class DeclaredODE:
    """The teacher ODE a student file names (an odebench sidecar, a card): a run without --teacher uses it."""

    teacher: Any  # a spec load_teacher takes
    guidance: "Guidance | None"
    conditional: bool | None
    source: str


class StudentKind:
    name: str = ""
    help: str = ""  # one clause of --student's help
    priority: int = 50

    def matches(self, spec: str) -> bool:
        raise NotImplementedError

    def load(self, spec: str, ctx: LoadContext) -> "tuple[Student, str | None]":
        """(the student, a teacher-mismatch note or None); a mismatch without ctx.allow_mismatch is an error."""
        raise NotImplementedError

    def declared_ode(self, spec: str) -> DeclaredODE | None:
        return None

    def defaults_for(self, teacher: "Teacher") -> tuple[str, ...]:
        """Specs of this kind that a run of `teacher` scores by default (e.g. shipped students)."""
        return ()

    def export(self, *args, **kwargs) -> Any:
        """Write a student in this kind's format (kinds odebench can write override this)."""
        raise OdebenchError(f"odebench does not write students of kind {self.name!r}")


_REGISTRY: "Registry[StudentKind]" = Registry("student kind", BUILTIN, ENTRY_POINTS)


def register(kind: StudentKind) -> StudentKind:
    """Add a kind (a later registration of the same name replaces the earlier one)."""
    return _REGISTRY.register(kind)


def unregister(name: str) -> None:
    _REGISTRY.unregister(name)


def kinds() -> list[StudentKind]:
    """Every registered kind in matching order."""
    return sorted(_REGISTRY.items(), key=lambda k: k.priority)


def get_kind(name: str) -> StudentKind:
    return _REGISTRY.get(name)


def kind_for_spec(spec: str) -> StudentKind:
    for kind in kinds():
        if kind.matches(spec):
            return kind
    raise OdebenchError(f"unknown student {spec!r}: expected {students_help()}")


def students_help() -> str:
    """--student's help, one clause per kind."""
    return "; ".join(k.help for k in kinds() if k.help)


def load_student(spec: str, teacher: "Teacher", reference: "SolverSpec | None" = None, conditional: bool = False,
                 allow_mismatch: bool = False, student_guidance: "Guidance | None" = None,
                 student_convention: str | None = None) -> "tuple[Student, str | None]":
    """Build a student for `teacher`; returns it with a mismatch note (set only when allowed).
    `student_guidance` / `student_convention` declare how an external student was distilled."""
    spec = spec.strip()
    kind = kind_for_spec(spec)
    student, note = kind.load(spec, LoadContext(teacher, reference, conditional, allow_mismatch, student_guidance,
                                                student_convention))
    student.format = kind.name
    if student.kind not in STUDENT_KINDS:
        raise OdebenchError(f"student {spec!r}: kind {student.kind!r} is not one of {', '.join(STUDENT_KINDS)}")
    return student, note


def declared_ode(specs) -> DeclaredODE | None:
    """The teacher ODE the first student file among `specs` declares (None when none does)."""
    for spec in specs:
        found = kind_for_spec(spec.strip()).declared_ode(spec.strip())
        if found is not None:
            return found
    return None


def default_rows(teacher: "Teacher", family_rows: tuple[str, ...]) -> tuple[str, ...]:
    """A default run's rows: the family's, with every kind's defaults for this teacher before `ref`."""
    extra = tuple(s for k in kinds() for s in k.defaults_for(teacher))
    rows = tuple(r for r in family_rows if r != "ref")
    return (*rows, *extra, *(("ref",) if "ref" in family_rows else ()))
