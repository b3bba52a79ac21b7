"""Finding and reading the run directories a report compares."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from odebench.errors import OdebenchError
from odebench.students.kinds import DESCRIPTIVE_KINDS, STUDENT_KINDS

LEGACY_KINDS = {"ReferenceStudent": "oracle", "SolverStudent": "solver"}


@dataclass
class Run:
    name: str
    path: Path
    result: dict[str, Any]
    _per_sample: dict[str, np.ndarray] | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        """What the student was trained to do: oracle | solver | trajectory | distribution | hybrid."""
        kind = self.result["student"].get("kind")
        # results written before student kinds held the class name there
        return LEGACY_KINDS.get(kind, "trajectory") if kind not in STUDENT_KINDS else kind

    @property
    def is_oracle(self) -> bool:
        """The `ref` row: the reference solver itself, zero ODE error by construction."""
        return self.kind == "oracle"

    @property
    def descriptive(self) -> bool:
        """A distribution or hybrid student: its ODE error describes it, it does not grade it."""
        return self.kind in DESCRIPTIVE_KINDS

    @property
    def grid(self) -> Path | None:
        p = self.path / "samples.png"
        return p if p.is_file() else None

    def per_sample(self) -> dict[str, np.ndarray]:
        """per_sample.safetensors as float64 arrays ({} when the file is absent)."""
        if self._per_sample is None:
            f = self.path / "per_sample.safetensors"
            if not f.is_file():
                self._per_sample = {}
            else:
                from safetensors.numpy import load_file

                try:
                    self._per_sample = {k: v.astype(np.float64) for k, v in load_file(str(f)).items()}
                except Exception as e:  # a truncated or foreign file: say which, never a traceback
                    raise OdebenchError(f"{f}: unreadable per-sample file ({e})") from None
        return self._per_sample


def find_runs(names: list[str], runs_dir: Path) -> list[Run]:
    """Runs by name (a directory under `runs_dir`) or path (a run directory or its result.json), in the
    order given; with no names, every run in `runs_dir` in the order they were written (the row order
    of the `odebench run` that made them), ties by name."""
    from odebench.results import read_result

    runs_dir = Path(runs_dir)
    if not names:
        if not runs_dir.is_dir():
            raise OdebenchError(f"no runs directory {runs_dir} (give run names, or --runs-dir)")
        found = [p for p in runs_dir.iterdir() if (p / "result.json").is_file()]
        names = [p.name for p in sorted(found, key=lambda p: ((p / "result.json").stat().st_mtime_ns, p.name))]
        if not names:
            raise OdebenchError(f"no runs in {runs_dir} (a run is a directory with result.json; make one with `odebench run`)")
    runs: list[Run] = []
    for name in names:
        p = Path(name)
        if p.name == "result.json":
            p = p.parent
        if not (p / "result.json").is_file():
            p = runs_dir / name
        if not (p / "result.json").is_file():
            have = sorted(d.name for d in runs_dir.iterdir() if (d / "result.json").is_file()) if runs_dir.is_dir() else []
            raise OdebenchError(f"no run {name!r} in {runs_dir}" + (f" (runs there: {', '.join(have)})" if have else ""))
        runs.append(Run(p.name, p, read_result(p)))
    seen: dict[Path, str] = {}
    for r in runs:
        key = r.path.resolve()
        if key in seen:
            raise OdebenchError(f"run {r.name!r} is listed twice")
        seen[key] = r.name
    if len({r.name for r in runs}) != len(runs):  # same directory name from two runs dirs: tell them apart
        for r in runs:
            r.name = f"{r.path.parent.name}/{r.name}"
    return runs
