"""Figures of a study report (matplotlib, Agg, PNG bytes); each returns None when it has nothing to show."""
from __future__ import annotations

import numpy as np

from odebench.report.correlation import spearman
from odebench.report.plots import _grid, _png, _pyplot

MAX_PANELS = 16


def _series(rep) -> dict[str, list]:
    """Cells grouped into lines over training steps: one per method and the other varying factors."""
    out: dict[str, list] = {}
    for c in rep.cells:
        out.setdefault(rep.series_label(c.factors), []).append(c)
    return out


def _colors(labels):
    plt = _pyplot()
    cmap = plt.get_cmap("tab10")
    return {lab: cmap(i % 10) for i, lab in enumerate(labels)}


def _steps_axis(ax, steps) -> None:
    """Log axis of training steps, ticked at the study's budgets."""
    ax.set_xscale("log")
    ax.set_xticks(steps, [str(s) for s in steps])
    ax.minorticks_off()


def _quality(rep) -> list[str]:
    from odebench.metrics.spectral import is_diagnostic

    return [m for m in rep.shown_metrics if not m.startswith("ode_") and not is_diagnostic(m)]


def metrics_vs_steps(rep) -> bytes | None:
    from odebench.metrics.spectral import is_diagnostic

    metrics = [m for m in [rep.ode_metric] + _quality(rep) + [m for m in rep.shown_metrics if is_diagnostic(m)]
               if any(m in p["metrics"] for p in rep.points)][:MAX_PANELS]
    if not metrics:
        return None
    series = _series(rep)
    colors = _colors(series)
    fig, axes = _grid(len(metrics), 4, 3.6, 2.9)
    for ax, m in zip(axes, metrics):
        for label, cs in series.items():
            cs = sorted(cs, key=lambda c: c.factors["steps"])
            x = np.array([c.factors["steps"] for c in cs], float)
            ivs = [c.stats.get(m) for c in cs]
            mean = np.array([iv.mean if iv and iv.mean is not None else np.nan for iv in ivs])
            lo = np.array([iv.lo if iv and iv.lo is not None else np.nan for iv in ivs])
            hi = np.array([iv.hi if iv and iv.hi is not None else np.nan for iv in ivs])
            err = np.vstack([np.nan_to_num(mean - lo), np.nan_to_num(hi - mean)])
            ax.errorbar(x, mean, yerr=err, marker="o", ms=3, capsize=2, color=colors[label], label=label)
            for c in cs:
                vals = [p["metrics"].get(m, {}).get("value") for p in c.points]
                vals = [v for v in vals if v is not None]
                ax.scatter([c.factors["steps"]] * len(vals), vals, s=6, alpha=0.35, color=colors[label])
        if is_diagnostic(m):
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        _steps_axis(ax, sorted({c.factors["steps"] for c in rep.cells}))
        if m.startswith("ode_"):
            ax.set_yscale("log")
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("training steps", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _mean_curve(runs, key: str, field: str):
    """Mean over runs of curves[key][field] on a shared x grid (the curves of one study share it)."""
    cs = [r.result.get("curves", {}).get(key) for r in runs]
    cs = [c for c in cs if c]
    if not cs:
        return None, None
    xkey = "sigma" if key == "ode_mse_vs_sigma" else "frequency"
    x = np.asarray(cs[0][xkey], float)
    ys = [np.asarray(c[field], float) for c in cs if len(c[field]) == len(x)]
    return x, np.mean(ys, axis=0)


def curves(rep) -> bytes | None:
    steps = sorted({c.factors["steps"] for c in rep.cells})
    have = any("ode_mse_vs_sigma" in r.result.get("curves", {}) for r in rep.runs.values())
    if not have:
        return None
    series = _series(rep)
    colors = _colors(series)
    fig, axes = _grid(len(steps), 3, 4.3, 3.3)
    for ax, s in zip(axes, steps):
        for label, cs in series.items():
            c = next((c for c in cs if c.factors["steps"] == s), None)
            if c is None:
                continue
            x, y = _mean_curve([rep.runs[p["name"]] for p in c.points if p["name"] in rep.runs], "ode_mse_vs_sigma", "ode_mse")
            if x is not None:
                ax.plot(x, np.maximum(y, 1e-300), marker="o", ms=3, color=colors[label], label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.invert_xaxis()
        ax.set_title(f"{s} training steps", fontsize=9)
        ax.set_xlabel("sigma", fontsize=8)
        ax.set_ylabel("ODE error (MSE to reference endpoint)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def spectrum(rep) -> bytes | None:
    runs_with = [r for r in rep.runs.values() if "spectrum" in r.result.get("curves", {})]
    if not runs_with:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.0))
    names = runs_with[0].result["curves"]["spectrum"]["bands"]["names"]
    # (a) the ODE error of each cell split by band (means over seeds), stacked
    labels, parts = [], []
    for c in rep.cells:
        vals = [c.stats.get(f"ode_mse@ref[band={b}]") for b in names]
        if all(v is not None and v.mean is not None for v in vals):
            labels.append(rep.cell_label(c))
            parts.append([v.mean for v in vals])
    ax = axes[0]
    if parts:
        parts = np.asarray(parts)
        bottom = np.zeros(len(labels))
        for j, b in enumerate(names):
            ax.bar(range(len(labels)), parts[:, j], bottom=bottom, label=f"{b} band")
            bottom += parts[:, j]
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        # linear: stacked segments on a log axis hide the lowest band wherever it falls below the autoscaled floor
        ax.set_ylim(0, float(bottom.max()) * 1.05)
        ax.set_ylabel("ODE error (MSE), stacked by band", fontsize=8)
        ax.legend(fontsize=7)
        ax.set_title("ODE error by spatial-frequency band", fontsize=9)
    # (b) radially averaged error spectrum at the largest budget, mean over seeds
    ax = axes[1]
    top = max(c.factors["steps"] for c in rep.cells)
    series = _series(rep)
    colors = _colors(series)
    ref_drawn = False
    for label, cs in series.items():
        c = next((c for c in cs if c.factors["steps"] == top), None)
        if c is None:
            continue
        runs = [rep.runs[p["name"]] for p in c.points if p["name"] in rep.runs]
        x, err = _mean_curve(runs, "spectrum", "error_power")
        if x is None:
            continue
        _, smp = _mean_curve(runs, "spectrum", "sample_power")
        ax.plot(x, err, color=colors[label], marker="o", ms=3, label=f"{label}: error")
        ax.plot(x, smp, color=colors[label], ls=":", label=f"{label}: samples")
        if not ref_drawn:
            _, refp = _mean_curve(runs, "spectrum", "reference_power")
            ax.plot(x, refp, color="black", ls="--", label="reference samples")
            ref_drawn = True
    ax.set_yscale("log")
    ax.set_xlabel("radial frequency / Nyquist", fontsize=8)
    ax.set_ylabel("radially averaged power", fontsize=8)
    ax.set_title(f"spectra at {top} steps (mean over seeds)", fontsize=9)
    ax.legend(fontsize=6)
    # (c) high-frequency energy ratio against steps
    ax = axes[2]
    for label, cs in series.items():
        cs = sorted(cs, key=lambda c: c.factors["steps"])
        ivs = [c.stats.get("hf_energy_ratio") for c in cs]
        if not all(iv is not None and iv.mean is not None for iv in ivs):
            continue
        x = [c.factors["steps"] for c in cs]
        mean = np.array([iv.mean for iv in ivs])
        err = np.vstack([np.nan_to_num(mean - np.array([iv.lo if iv.lo is not None else np.nan for iv in ivs])),
                         np.nan_to_num(np.array([iv.hi if iv.hi is not None else np.nan for iv in ivs]) - mean)])
        ax.errorbar(x, mean, yerr=err, marker="o", ms=3, capsize=2, color=colors[label], label=label)
    ax.axhline(1.0, color="grey", ls="--", lw=0.8)
    _steps_axis(ax, sorted({c.factors["steps"] for c in rep.cells}))
    ax.set_xlabel("training steps", fontsize=8)
    ax.set_ylabel("high-band energy: samples / reference", fontsize=8)
    ax.set_title("blur indicator (< 1: lost high frequencies)", fontsize=9)
    ax.legend(fontsize=7)
    for a in axes:
        a.tick_params(labelsize=7)
        a.grid(True, alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def ode_vs_quality(rep) -> bytes | None:
    ode = rep.ode_metric
    metrics = [m for m in _quality(rep) if sum(m in p["metrics"] for p in rep.points) >= 2][:MAX_PANELS]
    if not metrics:
        return None
    methods = sorted({p["method"] for p in rep.points})
    colors = _colors(methods)
    steps = sorted({p["steps"] for p in rep.points})
    size = {s: 10 + 40 * i / max(len(steps) - 1, 1) for i, s in enumerate(steps)}
    fig, axes = _grid(len(metrics), 4, 3.6, 2.9)
    for ax, m in zip(axes, metrics):
        for meth in methods:
            pts = [p for p in rep.points if p["method"] == meth and m in p["metrics"] and ode in p["metrics"]]
            ax.scatter([p["metrics"][ode]["value"] for p in pts], [p["metrics"][m]["value"] for p in pts],
                       s=[size[p["steps"]] for p in pts], color=colors[meth], alpha=0.7, label=meth)
        ax.set_xscale("log")
        ax.set_title(m, fontsize=9)
        ax.set_xlabel(ode, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def per_sample(rep) -> bytes | None:
    top = max(c.factors["steps"] for c in rep.cells)
    panels = []
    for c in rep.cells:
        if c.factors["steps"] != top:
            continue
        first = min(c.points, key=lambda p: p["seed"])
        run = rep.runs.get(first["name"])
        if run is None:
            continue
        ps = run.per_sample()
        keys = sorted(k for k in ps if k.startswith("quality.")) + [k for k in ps if k == "spectral.hf_energy_ratio"]
        for k in keys:
            if "ode_se" in ps and len(ps[k]) == len(ps["ode_se"]):
                q = k.split(".", 1)[1] + (" (target 1)" if k.startswith("spectral.") else "")
                panels.append((rep.cell_label(c), q, ps["ode_se"], ps[k]))
    if not panels:
        return None
    panels = panels[:MAX_PANELS]
    fig, axes = _grid(len(panels), 4, 3.6, 3.0)
    for ax, (name, q, se, score) in zip(axes, panels):
        from matplotlib.ticker import NullFormatter

        ok = np.isfinite(score)
        ax.scatter(np.maximum(se[ok], 1e-12), score[ok], s=4, alpha=0.5)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        rho = spearman(se[ok], score[ok])
        ax.set_title(f"{name}: rho={rho:+.2f}" if np.isfinite(rho) else name, fontsize=8)
        ax.set_xlabel("per-sample ODE error", fontsize=8)
        ax.set_ylabel(q, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _png(fig)
