"""The side-by-side table: one row per metric, one column per run, the best value marked only when it
beats every other run significantly; and the reasons two runs are not comparable."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from odebench.report.runs import Run

Z = 1.96  # 95% under a normal approximation


@dataclass
class Cell:
    value: float | None
    stderr: float | None


@dataclass
class Row:
    metric: str
    higher_is_better: bool
    cells: list[Cell]
    best: int | None  # index of the run whose interval beats every other run's; None: no clear winner
    identity: str

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "higher_is_better": self.higher_is_better, "best": self.best,
                "identity": self.identity, "values": [{"value": c.value, "stderr": c.stderr} for c in self.cells]}


def best_index(cells: list[Cell], higher_is_better: bool) -> int | None:
    """The run that beats every other run by more than Z standard errors of the difference
    (sqrt(se_a^2 + se_b^2), a two-sided 5% test under a normal approximation), else None."""
    have = [(i, c) for i, c in enumerate(cells) if c.value is not None]
    if len(have) < 2:
        return None
    sign = 1.0 if higher_is_better else -1.0
    have.sort(key=lambda ic: sign * ic[1].value, reverse=True)
    i0, c0 = have[0]
    # not only the runner-up: a noisy run further down the order can still be within reach
    for _, c in have[1:]:
        gap = sign * (c0.value - c.value)
        if gap <= Z * math.hypot(c0.stderr or 0.0, c.stderr or 0.0):
            return None
    return i0


def metric_rows(runs: list[Run]) -> list[Row]:
    """Every metric any run has, ODE-error metrics first, in first-seen order."""
    from odebench.metrics.spectral import is_diagnostic

    names: list[str] = []
    for r in runs:
        names += [k for k in r.result["metrics"] if k not in names]
    names.sort(key=lambda k: (not k.startswith("ode_"),))  # stable: keeps first-seen order within groups
    rows = []
    for k in names:
        defs = [r.result["metrics"][k] for r in runs if k in r.result["metrics"]]
        cells = [Cell(r.result["metrics"][k]["value"], r.result["metrics"][k]["stderr"]) if k in r.result["metrics"]
                 else Cell(None, None) for r in runs]
        hib = bool(defs[0]["higher_is_better"])
        idents = sorted({d["identity"] for d in defs})
        best = None if is_diagnostic(k) else best_index(cells, hib)  # a diagnostic has a target value, not a best
        rows.append(Row(k, hib, cells, best, idents[0] if len(idents) == 1 else " | ".join(idents)))
    return rows


def _canon(x: Any) -> str:
    return json.dumps(x, sort_keys=True)


def comparability_warnings(runs: list[Run]) -> list[str]:
    """Why numbers in different columns may not be comparable: teacher, guidance, reference solver,
    seeds, sample count, conditioning or metric definitions differ, or a run carries a mismatch flag."""
    if len(runs) < 2:
        return []
    checks = {
        "teacher fingerprint": lambda r: r.result["teacher"].get("fingerprint"),
        "teacher guidance": lambda r: r.result["teacher"].get("guidance"),
        "reference solver": lambda r: r.result["reference"].get("solver"),
        "seeds": lambda r: r.result.get("seeds", {}).get("seed"),
        "sample count": lambda r: r.result.get("samples"),
        "conditioning": lambda r: r.result.get("conditioning"),
    }
    out = []
    for what, get in checks.items():
        groups: dict[str, list[str]] = {}
        for r in runs:
            groups.setdefault(_canon(get(r)), []).append(r.name)
        if len(groups) > 1:
            parts = "; ".join(f"{', '.join(ns)}: {json.loads(k)}" for k, ns in groups.items())
            out.append(f"{what} differs ({parts})")
    for row_name in sorted({k for r in runs for k in r.result["metrics"]}):
        idents = {r.result["metrics"][row_name]["identity"] for r in runs if row_name in r.result["metrics"]}
        # the ODE metrics' identity names the reference (checked above); others name backbone and reference set
        if len(idents) > 1 and not row_name.startswith("ode_"):
            out.append(f"{row_name} is defined differently across runs ({len(idents)} identities)")
    for r in runs:
        for f in r.result.get("flags", []):
            if f.startswith("teacher-mismatch"):
                out.append(f"{r.name}: {f}")
    return out
