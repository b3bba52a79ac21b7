"""Report formats: a rich terminal table, Markdown (+ PNG files), one self-contained HTML file, JSON."""
from __future__ import annotations

import base64
import html
import json
import os
import shutil
import tempfile
from pathlib import Path

from odebench.report.compare import Z
from odebench.report.model import Report
from odebench.table import fmt

FIGURES = {  # file stem -> caption
    "ode_vs_quality": "ODE error against each quality metric, one point per run (bars: 95% intervals)",
    "curves": "ODE error vs sigma: the student applied at points of the reference trajectory",
    "per_sample": "Per-sample ODE error against per-sample quality within each run",
}
BEST_NOTE = (f"Best value marked where it beats every other run by more than {Z} standard errors of the "
             "difference (a 5% test); no mark means no clear winner. ± is one standard error.")
AGREEMENT_NOTE = ("Agreement = rank correlation across runs between better ODE solving (lower ODE error) and better "
                  "quality (each metric oriented so that higher is better): +1 means the runs' order by ODE error "
                  "is their order by quality. The 95% interval redraws every run's numbers from their standard "
                  "errors; the verdict is better/worse only when the Spearman interval excludes 0.")


def figures(report: Report) -> dict[str, bytes]:
    """The report's plots as PNG bytes (a figure with nothing to show is left out)."""
    from odebench.report.plots import curves_figure, ode_vs_quality_figure, per_sample_figure

    quality = [a.metric for a in report.agreements] or [row.metric for row in report.rows if not row.metric.startswith("ode_")]
    runs_q = [r for r in report.runs if report.include_oracle or not r.is_oracle]
    made = {"ode_vs_quality": ode_vs_quality_figure(runs_q, report.ode_metric, quality),
            "curves": curves_figure(report.runs), "per_sample": per_sample_figure(report.runs)}
    return {k: v for k, v in made.items() if v is not None}


def scales(report: Report) -> list[tuple[str, str]]:
    """(metric, scale) for the rows whose identity states a scale ("..., scale: raw MMD^2 (x1 ...), ...")."""
    out = []
    for row in report.rows:
        if "scale: " in row.identity:
            text = row.identity.split("scale: ", 1)[1]
            depth, end = 0, len(text)
            for i, ch in enumerate(text):  # up to the first comma or semicolon outside parentheses
                depth += (ch == "(") - (ch == ")")
                if ch in ",;" and depth == 0:
                    end = i
                    break
            out.append((row.metric, text[:end]))
    return out


def _cell(row, i: int) -> str:
    c = row.cells[i]
    return fmt(c.value, c.stderr)


def _interval(ci) -> str:
    lo, hi = ci
    return "-" if lo is None else f"[{lo:+.2f}, {hi:+.2f}]"


def _num(v) -> str:
    return "-" if v is None else f"{v:+.2f}"


def _title(report: Report) -> str:
    return "odebench report: " + " vs ".join(r.name for r in report.runs)


def _context(report: Report) -> str:
    r0 = report.runs[0].result
    g = r0["teacher"].get("guidance", {})
    return (f"teacher `{r0['teacher'].get('teacher')}` ({r0['teacher'].get('fingerprint')}), guidance "
            f"{g.get('form', '?')} w={g.get('w', '?')}, {r0.get('samples')} samples, seed {r0.get('seeds', {}).get('seed')}, "
            f"reference {r0['reference'].get('description')}")


def _floor_cell(info: dict) -> str:
    """The combined floor, and its parts where the run recorded them (odebench.ode.floor)."""
    parts = info.get("reference_floor_parts") or {}
    if "solver" not in parts or "precision" not in parts:
        return fmt(info["reference_floor"])
    return f"{fmt(info['reference_floor'])} ({fmt(parts['solver'])} + {fmt(parts['precision'])})"


def _info_rows(report: Report) -> list[tuple[str, list[str]]]:
    infos = [report.run_info(r) for r in report.runs]
    return [("student", [str(i["student"]) for i in infos]),
            ("kind", [str(i["kind"]) for i in infos]),
            ("NFE / sample (student)", [fmt(i["student_nfe"]) for i in infos]),
            ("NFE / sample (reference)", [fmt(i["reference_nfe"]) for i in infos]),
            ("reference floor (ode_mse: solver + precision)", [_floor_cell(i) for i in infos]),
            ("flags", [", ".join(f.split(":", 1)[0] for f in i["flags"]) or "-" for i in infos])]


# ---------------------------------------------------------------- terminal

def print_report(console, report: Report) -> None:
    from rich.markup import escape

    from odebench.table import print_grid

    info = _info_rows(report)
    labels = [f"[dim]{label}" for label, _ in info]
    # escaped: metric names such as ode_mse@ref[k=2] would otherwise read as rich markup and lose the [k=2]
    labels += [f"{escape(row.metric)} {'↑' if row.higher_is_better else '↓'}" for row in report.rows]
    columns = []
    for i, r in enumerate(report.runs):
        cells = [f"[dim]{escape(vals[i])}" for _, vals in info]
        cells += [f"[bold green]★ {_cell(row, i)}" if row.best == i else _cell(row, i) for row in report.rows]
        columns.append((escape(r.name), cells))
    print_grid(console, _title(report), labels, columns, caption=BEST_NOTE)
    for metric, scale in scales(report):
        console.print(f"[dim]scale of {metric}: {escape(scale)}")
    console.print(_context(report).replace("`", ""))
    for w in report.warnings:
        console.print(f"[yellow]warning: {escape(w)}")
    for n in report.notes():
        console.print(f"note: {escape(n)}")
    if report.agreements:
        ags = report.agreements
        print_grid(console, f"does lower {escape(report.ode_metric)} go with better samples?", [escape(ag.metric) for ag in ags],
                   [("runs", [str(len(ag.runs)) for ag in ags]),
                    ("Spearman [95%]", [f"{_num(ag.spearman)} {_interval(ag.spearman_ci)}" for ag in ags]),
                    ("Kendall [95%]", [f"{_num(ag.kendall)} {_interval(ag.kendall_ci)}" for ag in ags]),
                    ("verdict", [ag.verdict for ag in ags])], caption=AGREEMENT_NOTE, label_header="quality metric")
        for line in report.verdict_lines():
            console.print(f"verdict: {escape(line)}")
    else:
        console.print("no agreement analysis: it needs two or more non-oracle runs sharing a quality metric")


# ---------------------------------------------------------------- markdown

def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def markdown(report: Report, fig_files: dict[str, str], grid_files: dict[str, str]) -> str:
    """Markdown text; `fig_files` (figure stem -> relative path) and `grid_files` (run name -> relative
    path) are image files written next to it."""
    names = [_md_escape(r.name) for r in report.runs]
    out = [f"# {_title(report)}", "", _context(report), ""]
    for w in report.warnings:
        out.append(f"> **warning:** {_md_escape(w)}")
    for n in report.notes():
        out.append(f"> **note:** {_md_escape(n)}")
    if report.warnings or report.notes():
        out.append("")
    out += ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, vals in _info_rows(report):
        out.append(f"| {label} | " + " | ".join(_md_escape(v) for v in vals) + " |")
    for row in report.rows:
        arrow = "↑" if row.higher_is_better else "↓"
        cells = [f"**{_cell(row, i)}**" if row.best == i else _cell(row, i) for i in range(len(report.runs))]
        out.append(f"| {row.metric} {arrow} | " + " | ".join(cells) + " |")
    out += ["", BEST_NOTE, ""]
    out += [f"- scale of `{m}`: {_md_escape(sc)}" for m, sc in scales(report)]
    out += ["", "<details><summary>Metric definitions (each metric's identity)</summary>", ""]
    out += [f"- `{row.metric}`: {_md_escape(row.identity)}" for row in report.rows]
    out += ["", "</details>", "", f"## Does lower {report.ode_metric} go with better samples?", ""]
    if report.agreements:
        out += ["| quality metric | runs | Spearman | 95% interval | Kendall | 95% interval | verdict |",
                "|---|---:|---:|---|---:|---|---|"]
        for ag in report.agreements:
            out.append(f"| {ag.metric} | {len(ag.runs)} | {_num(ag.spearman)} | {_interval(ag.spearman_ci)} | "
                       f"{_num(ag.kendall)} | {_interval(ag.kendall_ci)} | {ag.verdict} |")
        out += ["", AGREEMENT_NOTE, ""] + [f"- {line}" for line in report.verdict_lines()]
        excluded = [r.name for r in report.runs if r.is_oracle and not report.include_oracle]
        if excluded:
            out.append(f"- (oracle rows left out of the analysis: {', '.join(excluded)}; `--include-oracle` keeps them)")
    else:
        out.append("No agreement analysis: it needs two or more non-oracle runs sharing a quality metric.")
    out.append("")
    for stem, caption in FIGURES.items():
        if stem in fig_files:
            out += [f"## {caption}", "", f"![{caption}]({fig_files[stem]})", ""]
    if grid_files:
        have = [r for r in report.runs if r.name in grid_files]
        out += ["## Samples from the same seeds", "", "| " + " | ".join(_md_escape(r.name) for r in have) + " |",
                "|" + "---|" * len(have), "| " + " | ".join(f"![{_md_escape(r.name)}]({grid_files[r.name]})" for r in have) + " |", ""]
    return "\n".join(out)


def _file_stem(name: str) -> str:
    from odebench.results import safe_name

    return safe_name(name.replace("/", "-"))


def write_markdown(report: Report, out: Path) -> list[Path]:
    """`out` (.md) plus its images in `<stem>_files/`; the folder is swapped in whole, then the text."""
    from odebench.fileio import atomic_write_bytes

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    files_name = f"{out.stem}_files"
    tmp = Path(tempfile.mkdtemp(prefix=f".{files_name}.tmp-", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the folder is published next to the text
        fig_files, grid_files = {}, {}
        for stem, png in figures(report).items():
            (tmp / f"{stem}.png").write_bytes(png)
            fig_files[stem] = f"{files_name}/{stem}.png"
        for r in report.runs:
            if r.grid is not None:
                fname = f"samples-{_file_stem(r.name)}.png"
                shutil.copyfile(r.grid, tmp / fname)
                grid_files[r.name] = f"{files_name}/{fname}"
        final = out.parent / files_name
        old = None
        if final.exists():  # move the old folder aside first so a failure never leaves neither
            old = Path(tempfile.mkdtemp(prefix=f".{files_name}.old-", dir=out.parent))
            final.rename(old / files_name)
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_bytes(out, markdown(report, fig_files, grid_files).encode())
    return [out, final]


# ---------------------------------------------------------------- html

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#1d1d1f;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.3rem .6rem;text-align:right}th:first-child,td:first-child{text-align:left}
thead th{background:#f3f4f6}tr.info td{color:#666}td.best{background:#e7f6ea;font-weight:600}
.warn{background:#fff7e0;border-left:4px solid #f0b400;padding:.4rem .8rem;margin:.3rem 0}
.note{color:#555;font-size:.85rem}.verdict{font-weight:600}
.grids{display:flex;flex-wrap:wrap;gap:1rem}.grids figure{margin:0;text-align:center}
.grids img{image-rendering:pixelated;width:240px;border:1px solid #ccc}
img.plot{max-width:100%;border:1px solid #eee}
#image-check{color:#b00020;font-weight:600}
"""

# Marks the page once the browser has decoded every embedded image: a headless-browser check reads
# body[data-images] ("ok:N" or "broken:K/N") instead of trusting that the base64 is well formed.
IMAGE_CHECK = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.body.setAttribute('data-images', bad.length ? 'broken:' + bad.length + '/' + imgs.length : 'ok:' + imgs.length);
  if (bad.length) { document.getElementById('image-check').textContent = bad.length + ' image(s) failed to render'; }
});
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def html_page(report: Report) -> str:
    """One self-contained HTML page: tables, plots and sample grids embedded as data URIs."""
    e = html.escape
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{e(_title(report))}</title>",
             f"<style>{CSS}</style><script>{IMAGE_CHECK}</script></head><body>",
             f"<h1>{e(_title(report))}</h1><p>{e(_context(report).replace('`', ''))}</p><p id=image-check></p>"]
    parts += [f"<div class=warn>warning: {e(w)}</div>" for w in report.warnings]
    parts += [f"<div class=warn>note: {e(n)}</div>" for n in report.notes()]
    parts.append("<table id=metrics><thead><tr><th>metric</th>" + "".join(f"<th>{e(r.name)}</th>" for r in report.runs)
                 + "</tr></thead><tbody>")
    for label, vals in _info_rows(report):
        parts.append(f"<tr class=info><td>{e(label)}</td>" + "".join(f"<td>{e(v)}</td>" for v in vals) + "</tr>")
    for row in report.rows:
        arrow = "↑" if row.higher_is_better else "↓"
        cells = "".join(f"<td class=best>★ {e(_cell(row, i))}</td>" if row.best == i else f"<td>{e(_cell(row, i))}</td>"
                        for i in range(len(report.runs)))
        parts.append(f"<tr><td title=\"{e(row.identity)}\">{e(row.metric)} {arrow}</td>{cells}</tr>")
    parts.append(f"</tbody></table><p class=note>{e(BEST_NOTE)}</p>")
    parts += [f"<p class=note>scale of {e(m)}: {e(sc)}</p>" for m, sc in scales(report)]
    parts.append("<details><summary>Metric definitions</summary><ul>"
                 + "".join(f"<li><code>{e(row.metric)}</code>: {e(row.identity)}</li>" for row in report.rows)
                 + "</ul></details>")
    parts.append(f"<h2>Does lower {e(report.ode_metric)} go with better samples?</h2>")
    if report.agreements:
        parts.append("<table id=agreement><thead><tr><th>quality metric</th><th>runs</th><th>Spearman</th><th>95% interval</th>"
                     "<th>Kendall</th><th>95% interval</th><th>verdict</th></tr></thead><tbody>")
        for ag in report.agreements:
            parts.append(f"<tr><td>{e(ag.metric)}</td><td>{len(ag.runs)}</td><td>{_num(ag.spearman)}</td>"
                         f"<td>{_interval(ag.spearman_ci)}</td><td>{_num(ag.kendall)}</td><td>{_interval(ag.kendall_ci)}</td>"
                         f"<td>{e(ag.verdict)}</td></tr>")
        parts.append(f"</tbody></table><p class=note>{e(AGREEMENT_NOTE)}</p><ul>")
        parts += [f"<li class=verdict>{e(line)}</li>" for line in report.verdict_lines()]
        parts.append("</ul>")
    else:
        parts.append("<p>No agreement analysis: it needs two or more non-oracle runs sharing a quality metric.</p>")
    for stem, png in figures(report).items():
        parts.append(f"<h2>{e(FIGURES[stem])}</h2><img class=plot id=fig-{stem} alt=\"{e(FIGURES[stem])}\" src=\"{_data_uri(png)}\">")
    grids = [(r.name, r.grid.read_bytes()) for r in report.runs if r.grid is not None]
    if grids:
        parts.append("<h2>Samples from the same seeds</h2><div class=grids>")
        parts += [f"<figure><img alt=\"samples {e(n)}\" src=\"{_data_uri(b)}\"><figcaption>{e(n)}</figcaption></figure>"
                  for n, b in grids]
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_text(out: Path, text: str) -> list[Path]:
    """One report file, written atomically (the run report's and the study report's html and json)."""
    from odebench.fileio import atomic_write_bytes

    atomic_write_bytes(Path(out), text.encode())
    return [Path(out)]


def write_html(report: Report, out: Path) -> list[Path]:
    return write_text(out, html_page(report))


def json_text(report) -> str:
    """A report (run comparison or study: anything with to_dict) as strict JSON."""
    return json.dumps(report.to_dict(), indent=1, allow_nan=False) + "\n"


def write_json(report: Report, out: Path) -> list[Path]:
    return write_text(out, json_text(report))
