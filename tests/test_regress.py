"""`odebench regress`: tolerance arithmetic, and end to end on a small GMM suite: a fresh baseline
passes, a perturbed or incomplete one fails with exit 1, a different configuration is refused."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from odebench.cli import app
from odebench.regress import ABS_FLOOR, REL_TOL, SAFETY, compare, tolerances

pytestmark = pytest.mark.usefixtures("one_torch_thread", "wide_console")
SUITE = {"name": "tiny", "config": {"teacher": "gmm", "students": ["ddim:2", "ref"], "samples": 64,
                                    "curve_points": 3, "curve_samples": 16, "floor_samples": 8}}


def invoke(args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_tolerances_come_from_the_measured_spread():
    t = tolerances([{"a": 1.0, "b": 5.0}, {"a": 1.0 + 2e-7, "b": 5.0}, {"a": 1.0 - 1e-7, "b": 5.0}])
    assert t["a"]["value"] == 1.0 and t["a"]["spread"] == pytest.approx(3e-7)
    assert t["a"]["abs_tol"] == pytest.approx(SAFETY * 3e-7) and t["a"]["rel_tol"] == REL_TOL
    assert t["b"]["spread"] == 0 and t["b"]["abs_tol"] == ABS_FLOOR


def _suite(metrics, identity=None):
    return {"name": "s", "runs": {"r": {"identity": identity, "metrics": metrics}}}


def test_compare_statuses():
    m = {"x": {"value": 2.0, "abs_tol": 0.1, "rel_tol": 0.01}}  # allowed: 0.1 + 0.02
    now = lambda v: {"r": {"identity": None, "values": v}}  # noqa: E731
    assert [c.status for c in compare(_suite(m), now({"x": 2.0}))] == ["ok"]
    assert [c.status for c in compare(_suite(m), now({"x": 2.11}))] == ["moved"]
    assert [c.status for c in compare(_suite(m), now({"x": 1.87}))] == ["REGRESSED"]
    assert [c.status for c in compare(_suite(m), now({"x": float("nan")}))] == ["REGRESSED"]
    assert [c.status for c in compare(_suite(m), now({}))] == ["missing"]
    assert [c.status for c in compare(_suite(m), now({"x": 2.0, "y": 1.0}))] == ["ok", "new"]
    assert [c.status for c in compare(_suite(m), {})] == ["missing"]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """A baseline of the tiny suite made by `odebench regress --update` (three executions)."""
    root = tmp_path_factory.mktemp("regress")
    mp = pytest.MonkeyPatch()
    mp.setenv("ODEBENCH_CACHE", str(root / "cache"))
    try:
        path = root / "baseline.json"
        path.write_text(json.dumps({"schema": "odebench.baseline/1", "suites": [{**SUITE, "runs": {}}]}))
        r = invoke(["regress", "--baseline", path, "--update"])
        assert r.exit_code == 0, r.output
    finally:
        mp.undo()
    return path


def test_update_writes_values_and_tolerances(baseline):
    data = json.loads(baseline.read_text())
    runs = data["suites"][0]["runs"]
    assert set(runs) == {"tiny-ddim-2", "tiny-ref"}
    m = runs["tiny-ddim-2"]["metrics"]
    assert {"ode_mse@ref", "fd_exact", "loglik", "nfe.student_per_sample", "nfe.reference_per_sample", "reference.floor"} <= set(m)
    assert m["nfe.student_per_sample"]["value"] == 2
    assert all(e["abs_tol"] >= ABS_FLOOR and e["abs_tol"] == max(SAFETY * e["spread"], ABS_FLOOR) for e in m.values())
    assert runs["tiny-ref"]["metrics"]["ode_mse@ref"]["value"] == 0.0
    assert runs["tiny-ddim-2"]["identity"]["samples"] == 64


def test_regress_passes_then_fails_on_a_perturbed_baseline(baseline, tmp_path):
    r = invoke(["regress", "--baseline", baseline])
    assert r.exit_code == 0, r.output
    assert "0 regressed or missing" in r.output
    data = json.loads(baseline.read_text())
    entry = data["suites"][0]["runs"]["tiny-ddim-2"]["metrics"]["ode_mse@ref"]
    allowed = entry["abs_tol"] + entry["rel_tol"] * abs(entry["value"])
    entry["value"] += 3 * allowed  # a metric that moved by 3x its tolerance
    bad = tmp_path / "perturbed.json"
    bad.write_text(json.dumps(data))
    r = invoke(["regress", "--baseline", bad])
    assert r.exit_code == 1, r.output
    assert "REGRESSED" in r.output and "ode_mse@ref" in r.output and "1 regressed or missing" in r.output
    # within tolerance: reported as moved, still passes
    entry["value"] -= 2.5 * allowed
    bad.write_text(json.dumps(data))
    r = invoke(["regress", "--baseline", bad])
    assert r.exit_code == 0 and "moved" in r.output, r.output
    # a number the code no longer produces fails too
    data["suites"][0]["runs"]["tiny-ref"]["metrics"]["made_up_metric"] = {"value": 1.0, "abs_tol": 0.1, "rel_tol": 0.0}
    bad.write_text(json.dumps(data))
    r = invoke(["regress", "--baseline", bad])
    assert r.exit_code == 1 and "missing" in r.output, r.output


def test_regress_reads_existing_runs(baseline, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = SUITE["config"]
    args = ["run", "--teacher", "gmm", "-s", "ddim:2", "-s", "ref", "--samples", cfg["samples"], "--curve-points", 3,
            "--curve-samples", 16, "--floor-samples", 8, "--name", "tiny"]
    assert invoke(args).exit_code == 0
    r = invoke(["regress", "--baseline", baseline, "--runs", "runs"])
    assert r.exit_code == 0, r.output
    # runs of another configuration are refused, not compared
    assert invoke(args[:-4] + ["--seed", 3, "--name", "tiny"]).exit_code == 0
    r = invoke(["regress", "--baseline", baseline, "--runs", "runs"])
    assert r.exit_code == 2 and "not the baseline's configuration (differs in seed)" in r.output, r.output


@pytest.mark.parametrize("content, needle", [
    ("{", "unreadable baseline"),
    ('{"schema": "odebench.result/1"}', "not an odebench baseline"),
    ('{"schema": "odebench.baseline/1", "suites": [{"name": "x"}]}', "malformed baseline"),
])
def test_bad_baselines_are_one_line_errors(tmp_path, content, needle):
    p = tmp_path / "b.json"
    p.write_text(content)
    r = invoke(["regress", "--baseline", p])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.output


def test_unknown_suite_and_update_with_runs_are_refused(baseline):
    r = invoke(["regress", "--baseline", baseline, "--suite", "nope"])
    assert r.exit_code == 2 and "no suite 'nope'" in r.output
    r = invoke(["regress", "--baseline", baseline, "--update", "--runs", "runs"])
    assert r.exit_code == 2 and "drop --runs" in r.output
