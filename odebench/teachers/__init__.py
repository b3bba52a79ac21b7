"""Teachers: the family registry (odebench.teachers.family) and the loader that asks it."""
from __future__ import annotations

from pathlib import Path

from odebench.errors import OdebenchError
from odebench.teachers.base import Guidance, Teacher, check_network_dtype

DEFAULT_TEACHER = "digits"


def load_teacher(spec: str | dict | Path | None = None, guidance: Guidance | None = None, dtype: str | None = None,
                 **options) -> Teacher:
    """A teacher from a preset name, a JSON file path, an inline definition (as in sidecars), a diffusers
    folder or a cached hub id: the first registered family that matches the spec loads it, with the
    teacher `options` that family takes (e.g. vae, device, height, width, uncond).

    `dtype` (fp32 | bf16 | fp16) is the precision of the teacher's network, on every network family: a
    family that loads its network in a dtype takes it as an option, any other gets
    `teacher.with_network_dtype(dtype)` (a cast copy; analytic teachers give a one-line error). The ODE
    state's dtype is the SolverSpec's (--state-dtype)."""
    from odebench.teachers.family import families, family_for_spec

    if spec is None:
        spec = DEFAULT_TEACHER
    options = {k: v for k, v in options.items() if v is not None}
    family = family_for_spec(spec)
    extra = [k for k in options if k not in family.options]
    if extra:
        takers = [f.title or f.name for f in families() if set(extra) <= set(f.options)]
        where = f"{' / '.join(takers)} teachers only" if takers else "no teacher"
        raise OdebenchError(f"{', '.join('--' + k for k in extra)} apply to {where}, not {spec!r}")
    at_load = dtype is not None and "dtype" in family.options
    if dtype is not None and not at_load:
        check_network_dtype(dtype)  # an unknown name fails before anything loads
    teacher = family.load(spec, **options, **({"dtype": dtype} if at_load else {}))
    if dtype is not None and not at_load:
        teacher = teacher.with_network_dtype(dtype)
    return teacher.with_guidance(guidance) if guidance is not None else teacher


def __getattr__(name: str):
    if name == "PRESETS":  # every family's named presets (for `odebench ls`)
        from odebench.teachers.family import presets

        return presets()
    raise AttributeError(f"module 'odebench.teachers' has no attribute {name!r}")


__all__ = ["Guidance", "Teacher", "load_teacher", "DEFAULT_TEACHER"]
