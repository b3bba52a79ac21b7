"""odebench: does a few-step student solve its teacher's PF-ODE, and does that matter for samples?

Importing the package is cheap; the API below loads its modules on first use.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["run", "RunConfig", "load_teacher", "load_student", "Guidance", "SolverSpec", "OdebenchError", "__version__"]


def __getattr__(name: str):
    if name in ("run", "RunConfig"):
        from odebench import bench

        return getattr(bench, name)
    if name in ("load_teacher", "Guidance"):
        from odebench import teachers

        return getattr(teachers, name)
    if name == "load_student":
        from odebench.students.load import load_student

        return load_student
    if name == "SolverSpec":
        from odebench.ode.spec import SolverSpec

        return SolverSpec
    if name == "OdebenchError":
        from odebench.errors import OdebenchError

        return OdebenchError
    raise AttributeError(f"module 'odebench' has no attribute {name!r}")
