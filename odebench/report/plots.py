"""Report figures (matplotlib, Agg, PNG bytes): ODE error vs sigma, ODE error vs each quality metric
across runs, and per-sample ODE error against per-sample quality within each run."""
from __future__ import annotations

import io
import math

import numpy as np

from odebench.report.compare import Z
from odebench.report.correlation import spearman
from odebench.report.runs import Run

DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless; never opens a window
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    return buf.getvalue()


def _grid(n: int, max_cols: int, width: float, height: float):
    """A figure with n panels in rows of at most max_cols (spare axes hidden), and the n axes."""
    plt = _pyplot()
    cols = min(max_cols, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return fig, list(axes.flat)[:n]


def curves_figure(runs: list[Run]) -> bytes | None:
    """ODE error of the student applied along the reference trajectory, per sigma, one line per run."""
    have = [r for r in runs if r.result.get("curves", {}).get("ode_mse_vs_sigma")]
    if not have:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in have:
        c = r.result["curves"]["ode_mse_vs_sigma"]
        sig, mse = np.asarray(c["sigma"], dtype=float), np.asarray(c["ode_mse"], dtype=float)
        err = np.asarray([e if e is not None else 0.0 for e in c.get("stderr", [0.0] * len(mse))], dtype=float)
        ax.errorbar(sig, np.maximum(mse, 1e-300), yerr=Z * err, marker="o", ms=3, capsize=2, label=r.name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.invert_xaxis()  # sampling runs from high noise to low
    ax.set_xlabel("sigma (student applied to the reference trajectory at this noise level)")
    ax.set_ylabel("ODE error (MSE to reference endpoint)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("ODE error vs sigma")
    return _png(fig)


def ode_vs_quality_figure(runs: list[Run], ode_metric: str, metrics: list[str]) -> bytes | None:
    """One panel per quality metric: each run at (ODE error, quality) with 95% error bars."""
    metrics = [k for k in metrics if sum(k in r.result["metrics"] and ode_metric in r.result["metrics"] for r in runs) >= 2]
    if not metrics:
        return None
    fig, axes = _grid(len(metrics), 3, 4.3, 3.4)
    for ax, k in zip(axes, metrics):
        for r in runs:
            m = r.result["metrics"]
            if k not in m or ode_metric not in m or m[k]["value"] is None:
                continue
            x, y = m[ode_metric]["value"], m[k]["value"]
            ax.errorbar(x, y, xerr=Z * (m[ode_metric]["stderr"] or 0), yerr=Z * (m[k]["stderr"] or 0), fmt="o", ms=4, capsize=2)
            ax.annotate(r.name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        hib = next(r.result["metrics"][k]["higher_is_better"] for r in runs if k in r.result["metrics"])
        ax.set_xscale("symlog", linthresh=1e-4)  # the oracle row sits at exactly 0
        ax.set_xlabel(ode_metric)
        ax.set_ylabel(f"{k} ({'higher' if hib else 'lower'} is better)")
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{ode_metric} vs quality, one point per run (bars: 95%)")
    fig.tight_layout()
    return _png(fig)


def per_sample_figure(runs: list[Run]) -> bytes | None:
    """Within each run: each sample's ODE error against its per-sample quality scores (Spearman in the title)."""
    panels = []
    for r in runs:
        if r.is_oracle:
            continue  # zero error for every sample: nothing to scatter
        ps = r.per_sample()
        for k in sorted(x for x in ps if x.startswith("quality.")):
            if "ode_se" in ps and len(ps[k]) == len(ps["ode_se"]):
                panels.append((r.name, k.split(".", 1)[1], ps["ode_se"], ps[k]))
    if not panels:
        return None
    fig, axes = _grid(len(panels), 4, 3.6, 3.0)
    for ax, (name, q, se, score) in zip(axes, panels):
        ax.scatter(np.maximum(se, 1e-12), score, s=4, alpha=0.5)
        ax.set_xscale("log")
        rho = spearman(se, score)
        ax.set_title(f"{name}: rho={rho:+.2f}" if np.isfinite(rho) else name, fontsize=9)
        ax.set_xlabel("per-sample ODE error", fontsize=8)
        ax.set_ylabel(q, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _png(fig)
