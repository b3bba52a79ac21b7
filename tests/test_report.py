"""`odebench report`: rank statistics against scipy, the best-value rule, comparability warnings, and the
md/html/json outputs of real runs (the HTML rendered in headless Chromium where available)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import scipy.stats
from typer.testing import CliRunner

from odebench.cli import app
from odebench.report.compare import Cell, best_index, comparability_warnings
from odebench.report.correlation import agreement, kendall_tau_b, rankdata, spearman
from odebench.report.model import build_report
from odebench.report.runs import find_runs

pytestmark = pytest.mark.usefixtures("one_torch_thread", "wide_console")
RUN = ["--samples", "96", "--curve-points", "4", "--curve-samples", "16", "--floor-samples", "8"]


def invoke(args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def gmm_runs(tmp_path_factory):
    """Three solver students and the oracle on the GMM ring, plus one run with other seeds."""
    root = tmp_path_factory.mktemp("report")
    mp = pytest.MonkeyPatch()
    mp.setenv("ODEBENCH_CACHE", str(root / "cache"))
    mp.chdir(root)
    try:
        r = invoke(["run", "--teacher", "gmm", "-s", "ddim:2", "-s", "ddim:8", "-s", "heun:3", "-s", "ref", *RUN])
        assert r.exit_code == 0, r.output
        r = invoke(["run", "--teacher", "gmm", "-s", "ddim:8", "--seed", "1", "--name", "ddim8-seed1", *RUN])
        assert r.exit_code == 0, r.output
    finally:
        mp.undo()
    return root / "runs"


# ------------------------------------------------------------------ statistics vs scipy

def test_rank_statistics_match_scipy_with_and_without_ties():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 9):
        for _ in range(20):
            x = rng.normal(size=n)
            y = rng.integers(0, 3, size=n).astype(float)  # heavy ties
            np.testing.assert_allclose(rankdata(y), scipy.stats.rankdata(y))
            for a, b in ((x, y), (x, x ** 3 + rng.normal(size=n))):
                rho, tau = spearman(a, b), kendall_tau_b(a, b)
                if np.ptp(b) == 0:
                    assert np.isnan(rho) and np.isnan(tau)
                    continue
                assert rho == pytest.approx(scipy.stats.spearmanr(a, b).statistic, abs=1e-12)
                assert tau == pytest.approx(scipy.stats.kendalltau(a, b, variant="b").statistic, abs=1e-12)
    # batched along the last axis, as the bootstrap uses them
    xb, yb = rng.normal(size=(7, 6)), rng.normal(size=(7, 6))
    np.testing.assert_allclose(spearman(xb, yb), [scipy.stats.spearmanr(a, b).statistic for a, b in zip(xb, yb)], atol=1e-12)
    np.testing.assert_allclose(kendall_tau_b(xb, yb), [scipy.stats.kendalltau(a, b).statistic for a, b in zip(xb, yb)], atol=1e-12)


def test_agreement_verdicts():
    ode = np.array([0.1, 0.2, 0.4, 0.8])
    small = np.full(4, 1e-3)
    # FD (lower is better) rising with ODE error: better ODE solving went with better samples
    a = agreement("fd", list("abcd"), ode, small, np.array([1.0, 2.0, 3.0, 4.0]), small, higher_is_better=False)
    assert (a.spearman, a.kendall, a.verdict) == (1.0, 1.0, "better")
    assert a.spearman_ci == (1.0, 1.0)
    # the paper's finding: the lower-error student has the worse FD
    a = agreement("fd", ["cm", "direct"], np.array([0.29, 0.24]), np.array([0.01, 0.01]),
                  np.array([95.3, 166.0]), np.array([3.0, 3.0]), higher_is_better=False)
    assert (a.spearman, a.verdict) == (-1.0, "worse")
    assert "went with worse fd" in a.sentence("ode_mse@ref")
    # a quality difference far inside its noise: no verdict either way
    a = agreement("clip", ["cm", "direct"], np.array([0.29, 0.24]), np.array([0.01, 0.01]),
                  np.array([0.210, 0.209]), np.array([0.01, 0.01]), higher_is_better=True)
    assert a.verdict == "indistinguishable"
    assert a.spearman_ci[0] < 0 < a.spearman_ci[1]


def test_best_needs_a_significant_gap():
    assert best_index([Cell(1.0, 0.1), Cell(2.0, 0.1)], higher_is_better=False) == 0
    assert best_index([Cell(1.0, 0.1), Cell(2.0, 0.1)], higher_is_better=True) == 1
    assert best_index([Cell(1.0, 0.3), Cell(1.5, 0.3)], higher_is_better=False) is None  # 0.5 < 1.96 * 0.42
    # 95% intervals overlap a little, but the difference is 2.6 standard errors: significant
    assert best_index([Cell(0.736, 0.02), Cell(0.809, 0.02)], higher_is_better=True) == 1
    # the runner-up is clear but a noisy third run still reaches the leader
    assert best_index([Cell(1.0, 0.01), Cell(1.5, 0.01), Cell(3.0, 1.5)], higher_is_better=False) is None
    assert best_index([Cell(1.0, None), Cell(None, None)], higher_is_better=False) is None  # one value: nothing to beat
    assert best_index([Cell(1.0, 0.0), Cell(1.0, 0.0)], higher_is_better=False) is None  # a tie


# ------------------------------------------------------------------ real runs

def test_report_of_real_runs(gmm_runs):
    runs = find_runs(["ddim-2", "ddim-8", "heun-3", "ref"], gmm_runs)
    rep = build_report(runs)
    assert rep.warnings == []  # same teacher, guidance, solver, seeds and sample count
    rows = {r.metric: r for r in rep.rows}
    assert [r.metric for r in rep.rows][:2] == ["ode_mse@ref", "ode_rmse@ref"]  # ODE metrics first
    assert rows["ode_mse@ref"].best == 3  # the oracle: exactly 0
    values = [c.value for c in rows["ode_mse@ref"].cells]
    assert values[3] == 0.0 and values[1] < values[0]  # ddim:8 solves the ODE better than ddim:2
    # the analysis leaves the oracle out and covers every quality metric of the GMM domain
    assert {a.metric for a in rep.agreements} == {"loglik", "fd_exact", "kid_exact", "mode_coverage", "mode_precision",
                                                  "precision_exact", "recall_exact", "density_exact", "coverage_exact"}
    assert all(a.runs == ["ddim-2", "ddim-8", "heun-3"] for a in rep.agreements)
    # the numbers come straight from the result files: recompute one agreement with scipy
    m = [r.result["metrics"] for r in runs[:3]]
    fd = next(a for a in rep.agreements if a.metric == "fd_exact")
    expect = scipy.stats.spearmanr([-x["ode_mse@ref"]["value"] for x in m], [-x["fd_exact"]["value"] for x in m]).statistic
    assert fd.spearman == pytest.approx(expect)
    assert len(build_report(runs, include_oracle=True).agreements[0].runs) == 4


def test_per_sample_quality_is_stored_and_matches_the_density(gmm_runs):
    import torch

    from odebench.teachers import load_teacher

    run = find_runs(["ddim-8"], gmm_runs)[0]
    ps = run.per_sample()
    mix = load_teacher("gmm").mixture.to(torch.float64)
    ll = mix.log_prob(torch.from_numpy(ps["samples"]), 0.0, None).numpy()
    np.testing.assert_allclose(ps["quality.loglik"], ll, rtol=1e-5, atol=1e-5)  # samples are stored in float32
    assert ps["quality.loglik"].mean() == pytest.approx(run.result["metrics"]["loglik"]["value"], rel=1e-5)


def test_comparability_warnings(gmm_runs):
    runs = find_runs(["ddim-8", "ddim8-seed1"], gmm_runs)
    warns = comparability_warnings(runs)
    assert any(w.startswith("seeds differ") for w in warns), warns
    other = json.loads((gmm_runs / "ddim-2" / "result.json").read_text())
    other["samples"] = 5
    other["reference"]["solver"]["rtol"] = 1e-6
    (gmm_runs / "edited").mkdir(exist_ok=True)
    (gmm_runs / "edited" / "result.json").write_text(json.dumps(other))
    warns = comparability_warnings(find_runs(["ddim-8", "edited"], gmm_runs))
    assert any(w.startswith("sample count differs") for w in warns)
    assert any(w.startswith("reference solver differs") for w in warns)
    shutil.rmtree(gmm_runs / "edited")


def test_cli_report_formats(gmm_runs, tmp_path, monkeypatch):
    monkeypatch.chdir(gmm_runs.parent)
    r = invoke(["report", "--compare", "ddim-2", "ddim-8", "ref"])  # `--compare a b c`
    assert r.exit_code == 0, r.output
    assert "ddim-2" in r.output and "★" in r.output and "verdict: lower ode_mse@ref went with" in r.output
    # json: machine-readable, the same numbers as the result files
    r = invoke(["report", "-c", "ddim-2", "-c", "ddim-8", "--format", "json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["schema"] == "odebench.report/1" and [x["name"] for x in data["runs"]] == ["ddim-2", "ddim-8"]
    mse = next(row for row in data["rows"] if row["metric"] == "ode_mse@ref")
    res = json.loads((gmm_runs / "ddim-8" / "result.json").read_text())
    assert mse["values"][1]["value"] == res["metrics"]["ode_mse@ref"]["value"]
    # markdown: text plus PNG files next to it
    md = tmp_path / "out" / "cmp.md"
    r = invoke(["report", "ddim-2", "ddim-8", "heun-3", "ref", "-f", "md", "--out", md])
    assert r.exit_code == 0, r.output
    text = md.read_text()
    for png in re.findall(r"\]\((cmp_files/[^)]+\.png)\)", text):
        assert (md.parent / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"cmp_files/curves.png", "cmp_files/ode_vs_quality.png", "cmp_files/per_sample.png"} <= set(re.findall(r"\]\(([^)]+)\)", text))
    assert "| ode_mse@ref ↓ |" in text and "**0 ± 0**" in text
    # html: one file, every image embedded
    page = tmp_path / "cmp.html"
    r = invoke(["report", "ddim-2", "ddim-8", "heun-3", "ref", "-f", "html", "--out", page])
    assert r.exit_code == 0, r.output
    html = page.read_text()
    srcs = re.findall(r'src="([^"]+)"', html)
    assert len(srcs) == 3 and all(s.startswith("data:image/png;base64,") for s in srcs)


def test_terminal_report_is_whole_at_80_columns(gmm_runs):
    """Every number and verdict whole at 80 columns (the width of CI logs and `| tee`): no ellipsis."""
    import io

    from rich.console import Console

    from odebench.report.render import _cell, print_report

    rep = build_report(find_runs(["ddim-2", "ddim-8", "heun-3", "ref", "ddim8-seed1"], gmm_runs))
    buf = io.StringIO()
    print_report(Console(file=buf, width=80, color_system=None), rep)
    out = buf.getvalue()
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80
    for row in rep.rows:
        for i in range(len(rep.runs)):
            assert _cell(row, i) in out
    for ag in rep.agreements:
        assert ag.verdict in out
    assert "scale of kid_exact: raw unbiased MMD^2" in out


@pytest.mark.parametrize("args, needle", [
    (["report", "nope"], "no run 'nope'"),
    (["report", "ddim-2", "-f", "pdf"], "unknown --format"),
    (["report", "ddim-2", "-f", "html"], "give --out"),
    (["report", "ddim-2", "ddim-2"], "listed twice"),
    (["report", "ddim-2", "--ode-metric", "ode_mse@ddim100"], "no run has 'ode_mse@ddim100'"),
])
def test_cli_report_bad_input(gmm_runs, monkeypatch, args, needle):
    monkeypatch.chdir(gmm_runs.parent)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.output


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.browser
def test_html_report_renders_in_headless_chromium(gmm_runs, tmp_path):
    """A real browser decodes every embedded image (the page marks body[data-images]) and the
    screenshot holds the table and plots (a page of mostly non-white pixels, not an error page)."""
    exe = _chromium()
    if exe is None:
        if os.environ.get("ODEBENCH_REQUIRE_BROWSER"):
            pytest.fail("ODEBENCH_REQUIRE_BROWSER is set but no chromium is installed")
        pytest.skip("no chromium (apt-get install chromium); .ci/run installs it and requires this test")
    page = tmp_path / "report.html"
    rep = build_report(find_runs(["ddim-2", "ddim-8", "heun-3", "ref"], gmm_runs))
    from odebench.report.render import write_html

    write_html(rep, page)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    dom = subprocess.run([exe, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert re.search(r'<body[^>]*data-images="ok:3"', dom.stdout), dom.stdout[:500]
    assert 'id="metrics"' in dom.stdout and 'id="agreement"' in dom.stdout
    shot = tmp_path / "shot.png"
    r = subprocess.run([exe, *flags, "--window-size=1300,2400", f"--screenshot={shot}", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert img.shape == (2400, 1300)
    # table text, plot axes and curves: a real render has a few percent dark pixels spread over the page
    dark = img < 128
    assert 0.01 < dark.mean() < 0.5
    rows_with_ink = dark.any(axis=1).mean()
    assert rows_with_ink > 0.3, rows_with_ink
