"""The report's content, independent of its format: runs, metric rows, warnings, agreement analysis."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from odebench.report.compare import Row, comparability_warnings, metric_rows
from odebench.report.correlation import Agreement, agreements
from odebench.report.runs import Run

SCHEMA = "odebench.report/1"


@dataclass
class Report:
    runs: list[Run]
    rows: list[Row]
    warnings: list[str]
    agreements: list[Agreement]
    ode_metric: str
    include_oracle: bool

    def run_info(self, r: Run) -> dict[str, Any]:
        res = r.result
        ref = res["reference"]
        return {"name": r.name, "path": str(r.path), "student": res["student"].get("spec"),
                "teacher": res["teacher"].get("teacher"), "teacher_fingerprint": res["teacher"].get("fingerprint"),
                "guidance": res["teacher"].get("guidance"), "samples": res.get("samples"),
                "seed": res.get("seeds", {}).get("seed"), "student_nfe": res["nfe"].get("student_per_sample"),
                "reference": ref.get("description"), "reference_nfe": res["nfe"]["reference"].get("per_sample"),
                "reference_floor": (ref.get("floor") or {}).get("ode_mse"),
                "reference_floor_parts": {k: v.get("ode_mse") for k, v in ((ref.get("floor") or {}).get("parts") or {}).items()},
                "flags": res.get("flags", []),
                "kind": r.kind, "oracle": r.is_oracle}

    def notes(self) -> list[str]:
        """What a reader must know to read the ODE-error rows (distribution / hybrid students)."""
        return [f"{r.name} is a {r.kind} student: it was trained to match the data distribution, not to solve the "
                f"teacher's ODE, so its ODE error is descriptive (how far it lands from the ODE solution), not a grade"
                for r in self.runs if r.descriptive]

    def verdict_lines(self) -> list[str]:
        return [a.sentence(self.ode_metric) for a in self.agreements]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "ode_metric": self.ode_metric, "include_oracle": self.include_oracle,
                "runs": [self.run_info(r) for r in self.runs], "warnings": self.warnings, "notes": self.notes(),
                "rows": [row.to_dict() for row in self.rows],
                "agreement": [a.to_dict() for a in self.agreements], "verdicts": self.verdict_lines()}


def build_report(runs: list[Run], ode_metric: str = "ode_mse@ref", include_oracle: bool = False) -> Report:
    from odebench.errors import OdebenchError

    if not any(ode_metric in r.result["metrics"] for r in runs):
        have = sorted({k for r in runs for k in r.result["metrics"] if k.startswith("ode_")})
        raise OdebenchError(f"no run has {ode_metric!r} (ODE metrics present: {', '.join(have) or 'none'})")
    return Report(runs, metric_rows(runs), comparability_warnings(runs),
                  agreements(runs, ode_metric, include_oracle), ode_metric, include_oracle)
