"""The rich results table printed by `odebench run`."""
from __future__ import annotations

import math

COLUMNS = {  # metric -> short header; the full names are in result.json and the README
    "ode_mse@ref": "ODE mse", "ode_mse@ddim100": "mse@ddim100", "ode_rel@ref": "ODE rel", "ode_mse@ref_curve_mean": "curve mse",
    "loglik": "loglik", "fd_exact": "FD", "kid_exact": "KID", "mode_coverage": "cover", "mode_precision": "prec",
    "fd_digits@real": "FD real", "fd_digits@teacher": "FD teacher", "precision_digits@real": "prec",
    "recall_digits@real": "recall", "label_adherence": "label", "confidence": "conf",
    "fid@teacher": "FID", "fd_dinov2@teacher": "FD-DINOv2", "clip_score": "CLIP", "aesthetic": "aesth",
}


def fmt(v, e=None) -> str:
    if v is None:
        return "-"
    s = f"{v:.3g}" if (v == 0 or 1e-3 <= abs(v) < 1e4) else f"{v:.2e}"
    if e is not None and math.isfinite(e):
        s += f" ± {e:.1g}"
    return s


def print_run_table(console, outcomes) -> None:
    from rich.table import Table

    if not outcomes:
        return
    first = outcomes[0].result
    cols = [c for c in COLUMNS if any(c in o.result["metrics"] for o in outcomes)]
    arrows = {c: "↑" if first["metrics"].get(c, {}).get("higher_is_better") else "↓" for c in cols}
    t = Table(title=f"odebench · teacher {first['teacher']['teacher']} · {first['samples']} samples · "
                    f"guidance {first['teacher']['guidance']['imagen_w']:g} (imagen)")
    t.add_column("student")
    t.add_column("NFE", justify="right")
    for c in cols:
        t.add_column(f"{COLUMNS[c]} {arrows[c]}", justify="right")
    t.add_column("flags")
    for o in outcomes:
        r = o.result
        m = r["metrics"]
        nfe = r["nfe"]["student_per_sample"]
        t.add_row(o.name, fmt(nfe), *[fmt(m[c]["value"], m[c]["stderr"]) if c in m else "-" for c in cols],
                  ", ".join(f.split(":", 1)[0] for f in r["flags"]))
    console.print(t)
    ref = first["reference"]
    nfe = first["nfe"]["reference"]
    floor = ref["floor"]
    console.print(f"reference: {ref['description']}; {nfe['per_sample']:.1f} NFE/sample "
                  f"({nfe['accepted_steps']} accepted, {nfe['rejected_steps']} rejected steps); "
                  f"teacher evaluations this run: {nfe['teacher_evals_this_run']} "
                  f"(cache {nfe['cache_hits']} hit / {nfe['cache_misses']} miss)")
    halves = first.get("extras", {}).get("fd_digits_real_halves")
    if halves:
        console.print(f"FD between two halves of the held-out real digits (n={halves['n']} each): {fmt(halves['value'])}")
    skipped = first.get("extras", {}).get("skipped_metrics")
    if skipped:
        for metric, why in skipped.items():
            console.print(f"skipped {metric}: {why}")
    if floor:
        parts = floor.get("parts", {})
        split = (f" = solver {fmt(parts['solver']['ode_mse'])} + precision {fmt(parts['precision']['ode_mse'])}"
                 if "solver" in parts and "precision" in parts else "")
        console.print(f"reference floor (ode_mse, n={floor['n']}): {fmt(floor['ode_mse'], floor['stderr'])}{split}")
    console.print(f"results: {', '.join(str(o.path) for o in outcomes)}")
