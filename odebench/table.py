"""Terminal tables: metrics as rows and runs as columns, split into as many tables as the width needs,
so that no number is ever cut to an ellipsis (80-column terminals, CI logs, `| tee`)."""
from __future__ import annotations

import math
from typing import Sequence

SHORT = {  # metric -> short label for the run table, in this order; the full names are in result.json and the README
    "ode_mse@ref": "ODE mse", "ode_rmse@ref": "ODE rmse", "ode_mse@ddim100": "ODE mse@ddim100", "ode_rel@ref": "ODE rel",
    "ode_mse@ref_curve_mean": "curve mse", "loglik": "loglik", "fd_exact": "FD", "kid_exact": "KID",
    "precision_exact": "precision", "recall_exact": "recall", "density_exact": "density", "coverage_exact": "coverage",
    "mode_coverage": "mode coverage", "mode_precision": "mode precision", "fd_digits@real": "FD real",
    "fd_digits@teacher": "FD teacher", "kid_digits@real": "KID real", "kid_digits@teacher": "KID teacher",
    "precision_digits@real": "precision real", "recall_digits@real": "recall real",
    "density_digits@real": "density real", "coverage_digits@real": "coverage real",
    "precision_digits@teacher": "precision teacher", "recall_digits@teacher": "recall teacher",
    "density_digits@teacher": "density teacher", "coverage_digits@teacher": "coverage teacher",
    "label_adherence": "label", "confidence": "confidence", "fid@teacher": "FID", "fd_dinov2@teacher": "FD-DINOv2",
    "cmmd@teacher": "CMMD", "clip_score": "CLIP", "aesthetic": "aesthetic",
}
MIN_WIDTH = 40  # below this, one run per table


def fmt(v, e=None) -> str:
    if v is None:
        return "-"
    s = f"{v:.3g}" if (v == 0 or 1e-3 <= abs(v) < 1e4) else f"{v:.2e}"
    if e is not None and math.isfinite(e):
        s += f" ± {e:.1g}"
    return s


def print_grid(console, title: str, labels: Sequence[str], columns: Sequence[tuple[str, Sequence[str]]],
               caption: str | None = None, label_header: str = "metric") -> None:
    """Rows `labels`, one column per (header, cells); as many tables as it takes to fit the console's
    width with every cell whole (rich markup in cells is allowed)."""
    from rich.cells import cell_len
    from rich.table import Table
    from rich.text import Text

    def width(s: str) -> int:
        return cell_len(Text.from_markup(s).plain)

    label_w = max([width(label_header)] + [width(s) for s in labels])
    col_w = [max([width(h)] + [width(c) for c in cells]) for h, cells in columns]
    room = max(console.width, MIN_WIDTH)
    groups: list[list[int]] = [[]]
    used = label_w + 4  # borders and padding of the label column
    for i, w in enumerate(col_w):
        if groups[-1] and used + w + 3 > room:
            groups.append([])
            used = label_w + 4
        groups[-1].append(i)
        used += w + 3
    for g, idx in enumerate(groups):
        part = f" ({g + 1}/{len(groups)})" if len(groups) > 1 else ""
        t = Table(title=title + part, caption=caption if g == len(groups) - 1 else None, title_justify="left")
        t.add_column(label_header, no_wrap=True, min_width=label_w)
        for i in idx:
            t.add_column(columns[i][0], justify="right", no_wrap=True, min_width=col_w[i])
        for r, label in enumerate(labels):
            t.add_row(label, *[columns[i][1][r] for i in idx])
        console.print(t)


def print_run_table(console, outcomes) -> None:
    """`odebench run`'s summary: metrics as rows, students as columns."""
    from rich.markup import escape

    if not outcomes:
        return
    first = outcomes[0].result
    metrics = [m for m in SHORT if any(m in o.result["metrics"] for o in outcomes)]
    metrics += sorted({m for o in outcomes for m in o.result["metrics"] if m not in SHORT})
    # escaped: names such as ode_mse@ref[k=2] would otherwise read as rich markup and lose the [k=2]
    labels = ["NFE / sample"] + [f"{escape(SHORT.get(m, m))} {'↑' if _higher(outcomes, m) else '↓'}" for m in metrics]
    columns = []
    for o in outcomes:
        res = o.result
        cells = [fmt(res["nfe"]["student_per_sample"])]
        for m in metrics:
            v = res["metrics"].get(m)
            cells.append(fmt(v["value"], v["stderr"]) if v else "-")
        columns.append((escape(o.name), cells))
    g = first["teacher"]["guidance"]
    g_text = f"imagen w={g['imagen_w']:g}" if "imagen_w" in g else f"{g['form']} w={g['w']:g}"  # embedded: an input, not CFG
    print_grid(console, f"odebench · teacher {first['teacher']['teacher']} · {first['samples']} samples · "
                        f"guidance {g_text}", labels, columns, caption="± is one standard error")
    for o in outcomes:
        for flag in o.result["flags"]:
            console.print(f"[yellow]flag[/] {o.name}: {flag}")
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


def _higher(outcomes, metric: str) -> bool:
    return any(o.result["metrics"].get(metric, {}).get("higher_is_better") for o in outcomes)
