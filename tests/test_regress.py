"""`odebench regress`: the tolerance model, a fresh baseline of a small GMM suite end to end, and the
committed baseline itself: it holds under other CPU instruction sets and catches small real
regressions injected into the code (a one-step grid shift, a 1% scale on a metric, an off-by-one
timestep)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from odebench import regress as rg
from odebench.cli import app

pytestmark = pytest.mark.usefixtures("wide_console")
ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "reports" / "baseline.json"
SUITE = {"name": "tiny", "config": {"teacher": "gmm", "students": ["ddim:2", "ref"], "samples": 64,
                                    "curve_points": 3, "curve_samples": 16, "floor_samples": 8}}
# one variant of each kind: in-process threads/batch, and a CPU instruction set in a subprocess
FEW_VARIANTS = (rg.VARIANTS[0], rg.VARIANTS[1], rg.VARIANTS[4])


def invoke(args):
    return CliRunner().invoke(app, [str(a) for a in args])


def ex(v, e=None):
    return {"value": v, "stderr": e}


# ----------------------------------------------------------------------------- the tolerance model --

def test_each_class_gets_its_rule():
    stat = rg.tolerance("fd_x@teacher", [ex(6.0, 2.0), ex(6.001, 2.0), ex(5.9995, 2.0)], "float32")
    assert stat["class"] == "statistical" and stat["spread"] == pytest.approx(1.5e-3)
    assert stat["allowed"] == pytest.approx(rg.STAT_FRAC * 2.0)  # a tenth of a standard error beats 10 x spread
    noisy = rg.tolerance("ode_mse@ref", [ex(0.03, 1e-4), ex(0.0301, 1e-4)], "float32")
    assert noisy["allowed"] == pytest.approx(rg.SAFETY * 1e-4)  # here the measured spread dominates
    num = rg.tolerance("ode_rel_thing", [ex(2.0), ex(2.0)], "float64")
    assert num["class"] == "numeric" and num["allowed"] == pytest.approx(rg.REL_FLOOR["float64"] * 2.0)
    assert rg.tolerance("nfe.student_per_sample", [ex(4.0)] * 3, "float32") == \
        {"value": 4.0, "stderr": None, "spread": 0.0, "class": "exact", "allowed": 0.0}
    ada = rg.tolerance("nfe.reference_per_sample", [ex(100.0), ex(106.0)], "float32")
    assert ada["class"] == "adaptive" and ada["factor"] == pytest.approx(1 + rg.SAFETY * 0.06)
    floor = rg.tolerance("reference.floor", [ex(8e-7, 1e-7), ex(1.1e-6, 1e-7)], "float32")
    assert floor["class"] == "chaotic" and floor["factor"] == rg.CHAOTIC_FACTOR


def test_rules_decide_ok_moved_regressed():
    def check(entry, v):
        suite = {"name": "s", "runs": {"r": {"identity": None, "metrics": {"x": entry}}}}
        return [c.status for c in rg.compare(suite, {"r": {"identity": None, "values": {"x": ex(v)}}})]

    absolute = {"value": 2.0, "class": "statistical", "allowed": 0.1}
    assert check(absolute, 2.0) == ["ok"] and check(absolute, 2.09) == ["moved"]
    assert check(absolute, 1.89) == ["REGRESSED"] and check(absolute, float("nan")) == ["REGRESSED"]
    ratio = {"value": 1e-6, "class": "chaotic", "factor": 4.0}
    assert check(ratio, 3.9e-6) == ["moved"] and check(ratio, 2.6e-7) == ["moved"]
    assert check(ratio, 4.1e-6) == ["REGRESSED"] and check(ratio, 0.0) == ["REGRESSED"]
    suite = {"name": "s", "runs": {"r": {"identity": None, "metrics": {"x": absolute}}}}
    assert [c.status for c in rg.compare(suite, {"r": {"identity": None, "values": {}}})] == ["missing"]
    assert [c.status for c in rg.compare(suite, {})] == ["missing"]
    both = {"r": {"identity": None, "values": {"x": ex(2.0), "y": ex(1.0)}}}
    assert [c.status for c in rg.compare(suite, both)] == ["ok", "new"]


# ----------------------------------------------------------------------- a fresh baseline, end to end --

@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """A baseline of the tiny suite measured under an in-process and a subprocess (CPU ISA) variant."""
    root = tmp_path_factory.mktemp("regress")
    mp = pytest.MonkeyPatch()
    mp.setenv("ODEBENCH_CACHE", str(root / "cache"))
    try:
        data = rg.build_baseline([SUITE], variants=FEW_VARIANTS)
    finally:
        mp.undo()
    path = root / "baseline.json"
    rg.write_baseline(path, data)
    return path


def test_update_writes_values_classes_and_the_model(baseline):
    data = json.loads(baseline.read_text())
    assert data["schema"] == rg.SCHEMA and [v["name"] for v in data["variants"]] == [v.name for v in FEW_VARIANTS]
    assert data["variants"][2]["env"] == {"ATEN_CPU_CAPABILITY": "default"}
    assert set(data["tolerance_model"]) >= set(rg.CLASSES)
    runs = data["suites"][0]["runs"]
    assert set(runs) == {"tiny-ddim-2", "tiny-ref"}
    m = runs["tiny-ddim-2"]["metrics"]
    assert m["nfe.student_per_sample"] == {"value": 2.0, "stderr": None, "spread": 0.0, "class": "exact", "allowed": 0.0}
    assert m["ode_mse@ref"]["class"] == "statistical" and m["ode_mse@ref"]["stderr"] > 0
    assert m["ode_mse@ref"]["allowed"] >= rg.STAT_FRAC * m["ode_mse@ref"]["stderr"]
    assert m["reference.floor"]["class"] == "chaotic" and m["nfe.reference_per_sample"]["class"] == "adaptive"
    assert runs["tiny-ref"]["metrics"]["ode_mse@ref"]["value"] == 0.0
    # how much each run measured is pinned, defaults included: a later default change cannot move it
    config = data["suites"][0]["config"]
    assert config["floor_samples"] == 8 and config["seed"] == 0 and config["ksteps"] == [1, 2, 4]
    assert set(rg.PINNED_KEYS) <= set(config)


def test_committed_suites_pin_how_much_they_measure():
    for suite in json.loads(COMMITTED.read_text())["suites"]:
        assert set(rg.PINNED_KEYS) <= set(suite["config"]), suite["name"]


def test_regress_passes_then_fails_on_a_perturbed_baseline(baseline, tmp_path):
    r = invoke(["regress", "--baseline", baseline])
    assert r.exit_code == 0, r.output
    assert "0 regressed or missing" in r.output
    data = json.loads(baseline.read_text())
    entry = data["suites"][0]["runs"]["tiny-ddim-2"]["metrics"]["ode_mse@ref"]
    entry["value"] += 3 * entry["allowed"]  # a metric that moved by 3x its tolerance
    bad = tmp_path / "perturbed.json"
    bad.write_text(json.dumps(data))
    r = invoke(["regress", "--baseline", bad])
    assert r.exit_code == 1, r.output
    assert "REGRESSED tiny/tiny-ddim-2 ode_mse@ref" in r.output and "1 regressed or missing" in r.output
    entry["value"] -= 2.5 * entry["allowed"]  # within tolerance: reported as moved, still passes
    bad.write_text(json.dumps(data))
    r = invoke(["regress", "--baseline", bad])
    assert r.exit_code == 0 and "moved tiny/tiny-ddim-2 ode_mse@ref" in r.output, r.output
    data["suites"][0]["runs"]["tiny-ref"]["metrics"]["made_up_metric"] = {"value": 1.0, "class": "numeric", "allowed": 0.1}
    bad.write_text(json.dumps(data))
    r = invoke(["regress", "--baseline", bad])
    assert r.exit_code == 1 and "missing tiny/tiny-ref made_up_metric" in r.output, r.output


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
    ('{"schema": "odebench.baseline/1", "suites": []}', "re-record it with: odebench regress"),
    ('{"schema": "odebench.baseline/2", "suites": [{"name": "x"}]}', "malformed baseline"),
    ('{"schema": "odebench.baseline/2", "suites": [{"name": "x", "config": {}, "runs": {"r": {"metrics": '
     '{"m": {"value": 1, "class": "chaotic", "allowed": 1}}}}}]}', "class chaotic needs 'factor'"),
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


# ---------------------------------------------------------------- the committed baseline, for real --

def committed_suite(name: str, students: tuple[str, ...] | None = None) -> dict:
    """A suite of reports/baseline.json, optionally only some of its students (each run's numbers do not
    depend on the other students of the suite, so the subset's entries are the suite's)."""
    suite = next(s for s in rg.read_baseline(COMMITTED)["suites"] if s["name"] == name)
    if students is None:
        return suite
    assert len(students) > 1  # one student would name its run after the suite alone
    config = {**suite["config"], "students": list(students)}
    runs = {k: v for k, v in suite["runs"].items() if v["identity"]["student"] in students}
    assert len(runs) == len(students)
    return {**suite, "config": config, "runs": runs}


def regressed(suite: dict) -> list[str]:
    return [f"{c.run}/{c.metric}" for c in rg.compare(suite, rg.compute_suite(suite)) if c.failed]


def test_committed_gmm_suite_holds_as_is():
    assert regressed(committed_suite("gmm")) == []


def test_one_step_grid_shift_is_caught(monkeypatch):
    """The Karras grid of the solver rows shifted by one step (its first level dropped, one more appended)."""
    import odebench.students.solvers as solvers

    real = solvers.karras_sigmas
    monkeypatch.setattr(solvers, "karras_sigmas", lambda k, lo, hi, rho=7.0: real(k + 1, lo, hi, rho)[1:])
    bad = regressed(committed_suite("gmm", ("ddim:4", "heun:3")))
    assert "gmm-ddim-4/ode_mse@ref" in bad and "gmm-heun-3/ode_mse@ref" in bad, bad


def test_one_percent_on_a_metric_is_caught(monkeypatch):
    import odebench.metrics.ode_error as oe

    real = oe.ode_error_metrics

    def scaled(*a, **k):
        out = real(*a, **k)
        out[next(key for key in out if key.startswith("ode_mse@ref"))].value *= 1.01
        return out

    monkeypatch.setattr(oe, "ode_error_metrics", scaled)
    bad = regressed(committed_suite("gmm", ("ddim:2", "dpm2:3")))
    assert "gmm-ddim-2/ode_mse@ref" in bad and "gmm-dpm2-3/ode_mse@ref" in bad, bad


@pytest.mark.slow
def test_off_by_one_timestep_is_caught(monkeypatch):
    """The paper's 1-indexed grid reading abar at t instead of t - 1 (the released code's convention,
    PAPER.md): the DDIM-100 reference moves. The oracle row's `ode_mse@ddim100` (the converged
    reference against the DDIM-100 solve: the discretisation gap itself) catches it; a student's
    (ODE errors of 3e-2 against a shift of ~1e-5) does not move beyond its tolerance."""
    import odebench.ode.paper_grid as paper_grid

    real = paper_grid.grid_for

    def off_by_one(teacher, n):
        g = real(teacher, n)
        if g.kind != "discrete-1-indexed":
            return g
        at_t = g.timesteps[:-1].long().clamp(max=teacher.num_timesteps - 1)
        return paper_grid.DistillGrid(torch.cat([teacher.sigmas[at_t], torch.zeros(1, dtype=torch.float64)]),
                                      g.timesteps, g.kind)

    monkeypatch.setattr(paper_grid, "grid_for", off_by_one)
    bad = regressed(committed_suite("digits", ("ddim:4", "ref")))
    assert "digits-ref/ode_mse@ddim100" in bad, bad


@pytest.mark.slow
def test_committed_baseline_holds_under_the_oldest_instruction_sets(tmp_path):
    """What another CPU computes: torch's scalar kernels, oneDNN at SSE4.1 and MKL at SSE4.2, in a fresh
    interpreter (they are read when the libraries load). .ci/run checks every suite under each ISA."""
    suites = [committed_suite("digits", ("ddim:4", "cm"))]
    job = tmp_path / "job.py"
    job.write_text("import json, sys\nfrom odebench import regress as rg\n"
                   "suites = json.loads(sys.stdin.read())\n"
                   "print(json.dumps([f'{c.run}/{c.metric}' for s in suites for c in rg.compare(s, rg.compute_suite(s)) if c.failed]))\n")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}
    out = subprocess.run([sys.executable, str(job)], input=json.dumps(suites), text=True, capture_output=True, env=env,
                         check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []
