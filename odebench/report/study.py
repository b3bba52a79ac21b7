"""`odebench report --study DIR`: a study's cells over seeds, CM - Direct CM per budget, the rank
agreement of ODE error and quality over runs, and the diagnostics that explain a gap (per-sigma error,
the ODE error by frequency band and the high-frequency energy ratio, per-sample scatter); as a
terminal table, Markdown (+ PNGs), one self-contained HTML page, or JSON.

Reads study.json and the run directories it names; nothing is recomputed."""
from __future__ import annotations

import html
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from odebench.errors import OdebenchError
from odebench.report.render import json_text, write_text
from odebench.report.runs import Run
from odebench.study.stats import (LEVEL, Cell, Difference, RunAgreement, cells, differences, metric_names,
                                  run_agreements)
from odebench.table import fmt

SCHEMA = "odebench.study-report/1"
ODE_METRIC = "ode_mse@ref"
HIDDEN_PREFIXES = ("ode_rmse@ref", "ode_rel@ref")  # in JSON, not in the tables: transforms of ode_mse or its noise
CELL_NOTE = (f"Each cell: mean over training seeds [{LEVEL:.0%} Student-t interval, t_(0.975, n-1) s / sqrt(n)]. "
             "Every student is evaluated on the same noise against the same reference, so the interval is over "
             "training randomness for this evaluation set.")
DIFF_NOTE = (f"CM - Direct CM per metric: paired by training seed (the same data, noise and grid-index stream for "
             f"both targets), mean difference [{LEVEL:.0%} t-interval of the paired differences, n - 1 df]; Welch's "
             "interval where the seeds differ. A method is named better only when the interval excludes 0; "
             "hf_energy_ratio is a diagnostic (target 1), so only which is higher is said.")
AGREE_NOTE = ("Rank agreement across runs between better ODE solving (lower ODE error) and better quality "
              "(each metric oriented so higher is better): +1 means the runs' order by ODE error is their order by "
              f"quality. The {LEVEL:.0%} interval is a pairs bootstrap over runs (whole runs resampled with "
              "replacement, 2,000 seeded draws, percentile interval): runs are draws, not fixed. 'within a budget' "
              "removes the trivial agreement of training longer.")
SPECTRAL_NOTE = ("in the ODE state space; hf_energy_ratio = the samples' energy above 2/3 of Nyquist over the "
                 "reference's from the same noise: 1 matched, < 1 lost high frequencies (blur), > 1 excess")


@dataclass
class StudyReport:
    root: Path
    study: dict[str, Any]
    points: list[dict[str, Any]]
    runs: dict[str, Run]  # point name -> its run directory
    cells: list[Cell]
    differences: list[Difference]
    agreements: list[RunAgreement]
    metrics: list[str]
    ode_metric: str = ODE_METRIC

    @property
    def shown_metrics(self) -> list[str]:
        return [m for m in self.metrics if not m.startswith(HIDDEN_PREFIXES)]

    def varying(self) -> list[str]:
        """The factors besides method and steps that take more than one value (they label cells)."""
        return [f for f in ("loss", "solver", "lora_rank") if len({p[f] for p in self.points}) > 1]

    def series_label(self, f: dict[str, Any]) -> str:
        """Method and the other varying factors (a line over training steps in the figures)."""
        extra = [f"lora {f[k]}" if k == "lora_rank" else str(f[k]) for k in self.varying()]
        return " ".join(([f["method"]] if "method" in f else []) + extra)

    def cell_label(self, c: Cell | dict[str, Any]) -> str:
        f = c.factors if isinstance(c, Cell) else c
        return " ".join(x for x in (self.series_label(f), f"{f['steps']} steps") if x)

    def compute(self) -> dict[str, Any]:
        """Training and evaluation seconds, and seconds per training step by method."""
        c = self.study.get("compute", {})
        per: dict[str, list[float]] = {}
        for p in self.points:
            pc = p.get("compute", {})
            if pc.get("trained_steps"):
                per.setdefault(p["method"], []).append(pc["train_s"] / pc["trained_steps"])
        return {"train_s": c.get("train_s"), "eval_s": c.get("eval_s"), "train_steps": c.get("train_steps"),
                "s_per_step": {m: sum(v) / len(v) for m, v in per.items()}}

    def headline(self) -> list[str]:
        """One line per budget: the ODE-error difference and the quality metrics where the methods separate."""
        lines = []
        groups: dict[str, list[Difference]] = {}
        for d in self.differences:
            groups.setdefault(self.cell_label(d.group), []).append(d)
        for label, ds in groups.items():
            ode = next((d for d in ds if d.metric == self.ode_metric), None)
            head = f"{label}: "
            if ode is not None:
                head += f"{self.ode_metric} CM - Direct {_iv(ode.interval)} ({ode.verdict})"
            sep = [d for d in ds if not d.metric.startswith("ode_") and d.verdict != "indistinguishable"]
            same = [d for d in ds if not d.metric.startswith("ode_") and d.verdict == "indistinguishable"]
            if sep:
                head += "; separated: " + ", ".join(f"{d.metric} {_iv(d.interval)} ({d.verdict})" for d in sep)
            if same:
                head += f"; indistinguishable on {len(same)} other metric{'s' if len(same) > 1 else ''}"
            lines.append(head)
        return lines

    def spectral_lines(self) -> list[str]:
        """Per cell: the high band's share of the ODE error and the blur indicator (image domains only)."""
        lines = []
        for c in self.cells:
            hf, high, total = (c.stats.get(k) for k in ("hf_energy_ratio", "ode_mse@ref[band=high]", ODE_METRIC))
            if hf is None or hf.mean is None or high is None or not total.mean:
                continue
            lines.append(f"{self.cell_label(c)}: {high.mean / total.mean:.0%} of the ODE error in the high band; "
                         f"hf_energy_ratio {_iv(hf)}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "study": str(self.root), "teacher": self.study.get("teacher"),
                "config": self.study.get("config"), "compute": self.compute(), "headline": self.headline(),
                "spectral": self.spectral_lines(),
                "cells": [{**c.to_dict(), "label": self.cell_label(c)} for c in self.cells],
                "differences": [d.to_dict() for d in self.differences],
                "agreement": [a.to_dict() for a in self.agreements],
                "points": [{k: p[k] for k in ("key", "name", "method", "loss", "solver", "lora_rank", "steps", "seed", "run",
                                              "compute")} for p in self.points]}


def _iv(iv) -> str:
    if iv.mean is None:
        return "-"
    if iv.lo is None:
        return f"{fmt(iv.mean)} (n={iv.n})"
    return f"{fmt(iv.mean)} [{fmt(iv.lo)}, {fmt(iv.hi)}]"


def build_study_report(root: Path, ode_metric: str = ODE_METRIC) -> StudyReport:
    from odebench.results import read_result
    from odebench.study.store import read_study

    root = Path(root)
    study = read_study(root)
    points = study["points"]
    if not points:
        raise OdebenchError(f"the study in {root} has no finished points yet (run `odebench study` first)")
    if not any(ode_metric in p["metrics"] for p in points):
        raise OdebenchError(f"no point of the study has {ode_metric!r}")
    runs = {}
    for p in points:
        path = root / p["run"]
        if (path / "result.json").is_file():
            runs[p["name"]] = Run(p["name"], path, read_result(path))
    names = metric_names(points)
    return StudyReport(root, study, points, runs, cells(points, names), differences(points, metrics=names),
                       run_agreements(points, ode_metric), names, ode_metric)


# ------------------------------------------------------------------------------- tables (rows of text)

def cell_table(rep: StudyReport) -> tuple[list[str], list[list[str]]]:
    header = ["metric"] + [f"{rep.cell_label(c)} (n={len(c.points)})" for c in rep.cells]
    rows = []
    for m in rep.shown_metrics:
        arrow = _arrow(rep, m)
        rows.append([f"{m} {arrow}"] + [_iv(c.stats[m]) for c in rep.cells])
    return header, rows


def _arrow(rep: StudyReport, m: str) -> str:
    from odebench.metrics.spectral import is_diagnostic
    from odebench.study.stats import direction

    return "(target 1)" if is_diagnostic(m) else ("↑" if direction(rep.points, m) else "↓")


def difference_table(rep: StudyReport) -> tuple[list[str], list[list[str]]]:
    labels: list[str] = []
    for d in rep.differences:
        if rep.cell_label(d.group) not in labels:
            labels.append(rep.cell_label(d.group))
    by = {(d.metric, rep.cell_label(d.group)): d for d in rep.differences}
    header = ["metric (CM - Direct CM)"] + labels
    rows = []
    for m in rep.shown_metrics:
        if not any((m, lab) in by for lab in labels):
            continue
        cells_ = []
        for lab in labels:
            d = by.get((m, lab))
            cells_.append("-" if d is None else f"{_iv(d.interval)} {'' if d.verdict == 'indistinguishable' else '**' + d.verdict + '**'}".strip())
        rows.append([f"{m} {_arrow(rep, m)}"] + cells_)
    return header, rows


def agreement_table(rep: StudyReport) -> tuple[list[str], list[list[str]]]:
    header = ["quality metric", "scope", "runs", "Spearman", "95% interval", "Kendall", "95% interval", "verdict"]
    rows = []
    for a in rep.agreements:
        rows.append([a.metric, a.scope, str(len(a.runs)), _signed(a.spearman), _ci(a.spearman_ci), _signed(a.kendall),
                     _ci(a.kendall_ci), a.verdict])
    return header, rows


def _signed(v) -> str:
    return "-" if v is None else f"{v:+.2f}"


def _ci(ci) -> str:
    return "-" if ci[0] is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def _context(rep: StudyReport) -> str:
    t = rep.study.get("teacher", {})
    ev = rep.points[0]["identity"]["evaluation"]
    tr = rep.points[0]["identity"]["train"]
    g = t.get("guidance", {})
    comp = rep.compute()
    per = ", ".join(f"{m} {s:.3g} s/step" for m, s in comp["s_per_step"].items())
    grid = (f"methods {', '.join(sorted({p['method'] for p in rep.points}))}; budgets "
            f"{', '.join(str(s) for s in sorted({p['steps'] for p in rep.points}))} steps; seeds "
            f"{', '.join(str(s) for s in sorted({p['seed'] for p in rep.points}))}")
    for f in ("loss", "solver", "lora_rank"):
        vals = sorted({str(p[f]) for p in rep.points})
        grid += f"; {f.replace('_', ' ')} {', '.join(vals)}"
    return (f"Teacher `{t.get('spec')}` ({t.get('fingerprint')}), guidance {g.get('form', '?')} w={g.get('w', '?')}. "
            f"Training: the one distillation loop, batch {tr['batch_size']}, lr {tr['lr']:g} (AdamW, constant), "
            f"grid N={tr['grid']}, grad clip {tr['grad_clip']:g}, EMA {tr['ema']:g}. Grid: {grid} "
            f"({len(rep.points)} runs). Evaluation: {ev['samples']} samples from noise seed {ev['seed']}, reference "
            f"{ev['reference']['method']} rtol={ev['reference']['rtol']:g} atol={ev['reference']['atol']:g}, one "
            f"reference for every run. Compute: training {(comp['train_s'] or 0) / 60:.1f} min ({comp['train_steps']} "
            f"optimiser steps; {per}), evaluation {(comp['eval_s'] or 0) / 60:.1f} min; {len(rep.cells)} cells.")


# -------------------------------------------------------------------------------------------- figures

FIGURES = {  # stem -> caption
    "metrics_vs_steps": "Metrics against training steps: mean over seeds with 95% t-intervals (faint: each seed)",
    "curves": "ODE error vs sigma per cell (mean over seeds): the student applied at points of the reference trajectory",
    "spectrum": "Where the ODE error lives: its share by frequency band per cell, the radially averaged error spectrum "
                "at the largest budget, and the samples' high-frequency energy relative to the reference's (1 = matched, "
                "< 1 = lost high frequencies)",
    "ode_vs_quality": "ODE error against each quality metric, one point per run (colour: method, size: budget)",
    "per_sample": "Per-sample ODE error against per-sample quality at the largest budget (first seed)",
}


FIGURE_TITLES = {  # stem -> section heading (a caption's first clause can be cut mid-parenthesis)
    "metrics_vs_steps": "Metrics against training steps", "curves": "ODE error vs sigma per cell",
    "spectrum": "Where the ODE error lives (frequency bands)", "ode_vs_quality": "ODE error against quality, per run",
    "per_sample": "Per-sample ODE error against per-sample quality",
}


def figures(rep: StudyReport) -> dict[str, bytes]:
    from odebench.report import study_plots as sp

    made = {"metrics_vs_steps": sp.metrics_vs_steps(rep), "curves": sp.curves(rep), "spectrum": sp.spectrum(rep),
            "ode_vs_quality": sp.ode_vs_quality(rep), "per_sample": sp.per_sample(rep)}
    return {k: v for k, v in made.items() if v is not None}


def sample_grids(rep: StudyReport) -> list[tuple[str, Path]]:
    """The sample grid of each method's first seed at the largest budget (image domains)."""
    top = max(p["steps"] for p in rep.points)
    out = []
    for c in rep.cells:
        if c.factors["steps"] != top:
            continue
        first = min(c.points, key=lambda p: p["seed"])
        run = rep.runs.get(first["name"])
        if run is not None and run.grid is not None:
            out.append((f"{rep.cell_label(c)}, seed {first['seed']}", run.grid))
    return out


# ----------------------------------------------------------------------------------------- renderers

def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = [h.replace("|", "\\|") for h in header]
    out = ["| " + " | ".join(esc) + " |", "|---|" + "---:|" * (len(header) - 1)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def markdown(rep: StudyReport, fig_files: dict[str, str], grid_files: list[tuple[str, str]]) -> str:
    title = f"odebench study: CM vs Direct CM on `{rep.study.get('teacher', {}).get('spec')}`"
    out = [f"# {title}", "", _context(rep), "", "## Headline (CM - Direct CM per budget)", ""]
    out += [f"- {line}" for line in rep.headline()] + [""]
    if rep.spectral_lines():
        out += [f"Spectral diagnostics ({SPECTRAL_NOTE}):", ""] + [f"- {line}" for line in rep.spectral_lines()] + [""]
    out += ["## CM - Direct CM, per metric and budget", ""] + _md_table(*difference_table(rep)) + ["", DIFF_NOTE, ""]
    out += ["## Cells over seeds", ""] + _md_table(*cell_table(rep)) + ["", CELL_NOTE, ""]
    out += [f"## Does lower {rep.ode_metric} go with better samples?", ""]
    if rep.agreements:
        out += _md_table(*agreement_table(rep)) + ["", AGREE_NOTE, ""]
    else:
        out += ["No agreement analysis: it needs three or more runs sharing a quality metric.", ""]
    for stem, caption in FIGURES.items():
        if stem in fig_files:
            out += [f"## {FIGURE_TITLES[stem]}", "", caption + ".", "", f"![{stem}]({fig_files[stem]})", ""]
    if grid_files:
        out += ["## Samples from the same noise (largest budget)", "", "| " + " | ".join(n for n, _ in grid_files) + " |",
                "|" + "---|" * len(grid_files), "| " + " | ".join(f"![{n}]({f})" for n, f in grid_files) + " |", ""]
    out += ["## Runs", "", "| run | key | trained steps (from) | train s | eval s |", "|---|---|---:|---:|---:|"]
    for p in rep.points:
        c = p.get("compute", {})
        out.append(f"| {p['name']} | `{p['key']}` | {c.get('trained_steps')} ({c.get('resumed_from_step')}) | "
                   f"{c.get('train_s', 0):.1f} | {c.get('eval_s', 0):.1f} |")
    out.append("")
    return "\n".join(out)


def write_markdown(rep: StudyReport, out: Path) -> list[Path]:
    """`out` (.md) plus its images in `<stem>_files/`, swapped in whole, then the text."""
    from odebench.fileio import atomic_write_bytes

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    files_name = f"{out.stem}_files"
    tmp = Path(tempfile.mkdtemp(prefix=f".{files_name}.tmp-", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        fig_files = {}
        for stem, png in figures(rep).items():
            (tmp / f"{stem}.png").write_bytes(png)
            fig_files[stem] = f"{files_name}/{stem}.png"
        grid_files = []
        for i, (label, path) in enumerate(sample_grids(rep)):
            fname = f"samples-{i}.png"
            shutil.copyfile(path, tmp / fname)
            grid_files.append((label, f"{files_name}/{fname}"))
        final = out.parent / files_name
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{files_name}.old-", dir=out.parent))
            final.rename(old / files_name)
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_bytes(out, markdown(rep, fig_files, grid_files).encode())
    return [out, final]


def _html_table(header: list[str], rows: list[list[str]], tid: str) -> str:
    e = html.escape
    h = "".join(f"<th>{e(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{e(c).replace('**', '')}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table id={tid}><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def html_page(rep: StudyReport) -> str:
    from odebench.report.render import CSS, IMAGE_CHECK, _data_uri

    e = html.escape
    title = f"odebench study: CM vs Direct CM on {rep.study.get('teacher', {}).get('spec')}"
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{e(title)}</title>",
             f"<style>{CSS}</style><script>{IMAGE_CHECK}</script></head><body>",
             f"<h1>{e(title)}</h1><p>{e(_context(rep).replace('`', ''))}</p><p id=image-check></p>",
             "<h2>Headline (CM - Direct CM per budget)</h2><ul>"]
    parts += [f"<li class=verdict>{e(line)}</li>" for line in rep.headline()]
    if rep.spectral_lines():
        parts += [f"</ul><p>Spectral diagnostics ({e(SPECTRAL_NOTE)}):</p><ul>"]
        parts += [f"<li>{e(line)}</li>" for line in rep.spectral_lines()]
    parts += ["</ul><h2>CM - Direct CM, per metric and budget</h2>", _html_table(*difference_table(rep), "differences"),
              f"<p class=note>{e(DIFF_NOTE)}</p><h2>Cells over seeds</h2>", _html_table(*cell_table(rep), "cells"),
              f"<p class=note>{e(CELL_NOTE)}</p><h2>Does lower {e(rep.ode_metric)} go with better samples?</h2>"]
    if rep.agreements:
        parts += [_html_table(*agreement_table(rep), "agreement"), f"<p class=note>{e(AGREE_NOTE)}</p>"]
    for stem, png in figures(rep).items():
        parts.append(f"<h2>{e(FIGURE_TITLES[stem])}</h2><p class=note>{e(FIGURES[stem])}.</p>"
                     f"<img class=plot id=fig-{stem} alt=\"{e(stem)}\" src=\"{_data_uri(png)}\">")
    grids = sample_grids(rep)
    if grids:
        parts.append("<h2>Samples from the same noise (largest budget)</h2><div class=grids>")
        parts += [f"<figure><img alt=\"samples {e(n)}\" src=\"{_data_uri(p.read_bytes())}\"><figcaption>{e(n)}</figcaption></figure>"
                  for n, p in grids]
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(rep: StudyReport, out: Path) -> list[Path]:
    return write_text(out, html_page(rep))


def write_json(rep: StudyReport, out: Path) -> list[Path]:
    return write_text(out, json_text(rep))


def print_study(console, rep: StudyReport) -> None:
    from rich.markup import escape
    from rich.table import Table

    # escaped throughout: metric names such as ode_mse@ref[k=2] would otherwise read as rich markup
    console.print(escape(_context(rep).replace("`", "")))
    for line in rep.headline():
        console.print(f"verdict: {escape(line)}")
    for line in rep.spectral_lines():
        console.print(f"spectral: {escape(line)}")
    for title, (header, rows), note in (("CM - Direct CM", difference_table(rep), DIFF_NOTE),
                                        ("cells over seeds", cell_table(rep), CELL_NOTE),
                                        (f"does lower {rep.ode_metric} go with better samples?", agreement_table(rep), AGREE_NOTE)):
        if not rows:
            continue
        t = Table(title=escape(title), caption=note)
        for i, h in enumerate(header):
            t.add_column(escape(h), justify="left" if i == 0 else "right")
        for r in rows:
            t.add_row(*[escape(c.replace("**", "")) for c in r])
        console.print(t)
