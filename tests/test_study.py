"""`odebench study`: the runner resumes after an interruption and never retrains or re-evaluates a finished
point; across-seed aggregation against hand-computed intervals (and scipy's t-tests); the pairs
bootstrap against scipy's; bad input before any training; the study report in every format."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from typer.testing import CliRunner

from odebench.cli import app
from odebench.errors import OdebenchError
from odebench.study.plan import StudyConfig, plan
from odebench.study.runner import StudyProgress, run_study
from odebench.study.stats import cells, differences, pairs_bootstrap_agreement, run_agreements, t_interval, welch_interval

pytestmark = pytest.mark.usefixtures("one_torch_thread", "wide_console")

TINY = dict(teacher="gmm", steps=(4, 8), seeds=(0, 1), batch_size=16, hidden=16, depth=1, grid=10, checkpoint_every=2,
            samples=64, curve_points=2, curve_samples=8, floor_samples=0, ksteps=())
T_975 = {1: 12.706204736174707, 2: 4.302652729911275, 3: 3.182446305284263}  # Student t quantiles (tables)


class Recorder(StudyProgress):
    """Records what the runner does; raises KeyboardInterrupt at (point name, step) to interrupt it."""

    def __init__(self, stop_at: tuple[str, int] | None = None):
        self.stop_at = stop_at
        self.started: list[tuple[str, str]] = []
        self.steps: dict[str, list[int]] = {}

    def point_start(self, point, index, total, what):
        self.started.append((point.name, what))

    def train_step(self, point, step, loss):
        self.steps.setdefault(point.name, []).append(step)
        if self.stop_at == (point.name, step):
            raise KeyboardInterrupt


def _files(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted((root / "runs").rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("study") / "a"
    mp = pytest.MonkeyPatch()
    mp.setenv("ODEBENCH_CACHE", str(root.parent / "cache"))
    try:
        study = run_study(StudyConfig(**TINY), root)
    finally:
        mp.undo()
    return root, study


def test_interrupted_study_resumes_and_never_retrains_a_finished_point(uninterrupted, tmp_path):
    root_a, study_a = uninterrupted
    assert len(study_a["points"]) == 8
    # one training run per method and seed serves both budgets: 8 steps each, not 4 + 8
    assert study_a["compute"]["train_steps"] == 4 * 8
    # one reference for the grid: solved by the first run, read from the cache by all others, same noise
    results = [json.loads((root_a / p["run"] / "result.json").read_text()) for p in study_a["points"]]
    assert results[0]["nfe"]["reference"]["teacher_evals_this_run"] > 0
    assert all(r["nfe"]["reference"]["teacher_evals_this_run"] == 0 for r in results[1:])
    assert len({json.dumps([r["reference"]["solver"], r["seeds"], r["samples"]]) for r in results}) == 1
    root = tmp_path / "b"
    stop = "direct-l2-ddim-full-seed0-8steps"
    first = Recorder(stop_at=(stop, 7))  # after the checkpoint at step 6
    with pytest.raises(KeyboardInterrupt):
        run_study(StudyConfig(**TINY), root, first)
    done = json.loads((root / "study.json").read_text())["points"]
    assert [p["name"] for p in done] == ["cm-l2-ddim-full-seed0-4steps", "cm-l2-ddim-full-seed0-8steps",
                                         "cm-l2-ddim-full-seed1-4steps", "cm-l2-ddim-full-seed1-8steps",
                                         "direct-l2-ddim-full-seed0-4steps"]
    before = _files(root)

    second = Recorder()
    study = run_study(StudyConfig(**TINY), root, second)
    # only the three unfinished points train and evaluate; the interrupted run resumes from its checkpoint
    assert [n for n, what in second.started if what == "train"] == [stop, "direct-l2-ddim-full-seed1-4steps",
                                                                     "direct-l2-ddim-full-seed1-8steps"]
    assert second.steps[stop] == [7, 8]
    assert second.steps["direct-l2-ddim-full-seed1-8steps"] == [5, 6, 7, 8]
    after = _files(root)
    assert all(after[k] == v for k, v in before.items())  # finished runs: same bytes, never rewritten
    resumed = next(p for p in study["points"] if p["name"] == stop)
    assert resumed["compute"]["resumed_from_step"] == 6 and resumed["compute"]["trained_steps"] == 2
    # resumed training is bitwise the uninterrupted one: same students, same numbers
    for p in study_a["points"]:
        a = (root_a / p["student"]).with_suffix(".safetensors").read_bytes()
        assert (root / p["student"]).with_suffix(".safetensors").read_bytes() == a, p["name"]
    by_a = {p["key"]: p["metrics"] for p in study_a["points"]}
    assert {p["key"]: p["metrics"] for p in study["points"]} == by_a

    third = Recorder()
    run_study(StudyConfig(**TINY), root, third)
    assert third.started == [] and third.steps == {}
    assert _files(root) == after


def test_a_growing_grid_trains_only_new_points_and_other_settings_are_refused(uninterrupted, tmp_path):
    root = tmp_path / "c"
    shutil.copytree(uninterrupted[0], root)
    rec = Recorder()
    grown = dict(TINY, steps=(4, 8, 10))
    study = run_study(StudyConfig(**grown), root, rec)
    assert [n for n, what in rec.started if what == "train"] == [f"{m}-l2-ddim-full-seed{s}-10steps" for m in ("cm", "direct")
                                                                 for s in (0, 1)]
    assert all(steps == [9, 10] for steps in rec.steps.values())  # each run continues from 8
    assert len(study["points"]) == 12
    with pytest.raises(OdebenchError, match=r"other settings \(lr differ\)"):
        run_study(StudyConfig(**dict(TINY, lr=5e-3)), root)
    # a study's training run that went past a budget: that budget trains on its own, from scratch
    rec = Recorder()
    (root / "study.json").write_text(json.dumps({**study, "points": [p for p in study["points"]
                                                                     if p["name"] != "cm-l2-ddim-full-seed0-4steps"]}))
    run_study(StudyConfig(**grown), root, rec)
    assert rec.steps == {"cm-l2-ddim-full-seed0-4steps": [1, 2, 3, 4]}
    again = json.loads((root / "study.json").read_text())
    point = next(p for p in again["points"] if p["name"] == "cm-l2-ddim-full-seed0-4steps")
    orig = next(p for p in study["points"] if p["name"] == "cm-l2-ddim-full-seed0-4steps")
    assert point["metrics"] == orig["metrics"]  # the same student, trained from scratch


@pytest.mark.parametrize("change,needle", [
    (dict(methods=("cm", "ddpm")), "unknown method"),
    (dict(solvers=("ddim", "euler")), "same step"),
    (dict(losses=("l1",)), "unknown loss"),
    (dict(lora_ranks=(0, 4)), "UNet teachers"),
    (dict(steps=(4, 4)), "lists a value twice"),
    (dict(steps=(0,)), "positive"),
    (dict(teacher="sdxl"), "CPU-sized"),
    (dict(samples=0), "--samples"),
])
def test_bad_grids_are_refused_before_training(change, needle, tmp_path):
    with pytest.raises(OdebenchError, match=needle):
        run_study(StudyConfig(**dict(TINY, **change)), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_point_keys_cover_the_full_config():
    points, _ = plan(StudyConfig(**TINY))
    keys = {p.key for p in points}
    assert len(keys) == 8
    # any setting that changes the numbers changes every key; the trajectory key ignores only the step count
    for change in (dict(lr=2e-3), dict(grid=12), dict(samples=32), dict(eval_seed=1), dict(hidden=8), dict(huber_c=0.01)):
        other, _ = plan(StudyConfig(**dict(TINY, **change)))
        assert not keys & {p.key for p in other}, change
    p4, p8 = points[0], points[1]
    assert p4.steps == 4 and p8.steps == 8 and p4.trajectory_key == p8.trajectory_key and p4.key != p8.key


# ------------------------------------------------------------------------------ statistics

def _point(method, steps, seed, **metrics):
    return {"name": f"{method}-{steps}-{seed}", "key": f"{method}{steps}{seed}", "method": method, "loss": "l2",
            "solver": "ddim", "lora_rank": 0, "steps": steps, "seed": seed,
            "metrics": {k: {"value": v, "stderr": 0.01, "higher_is_better": k == "recall", "n": 100}
                        for k, v in metrics.items()}}


def synthetic_points():
    cm = {0: (1.0, 0.5), 1: (2.0, 0.6), 2: (4.0, 0.9)}  # seed: (ode_mse@ref, recall)
    direct = {0: (0.5, 0.4), 1: (1.0, 0.4), 2: (3.0, 0.7)}
    pts = [_point("cm", 100, s, **{"ode_mse@ref": o, "recall": r}) for s, (o, r) in cm.items()]
    pts += [_point("direct", 100, s, **{"ode_mse@ref": o, "recall": r}) for s, (o, r) in direct.items()]
    return pts


def test_cell_intervals_by_hand():
    c = {(x.factors["method"], x.factors["steps"]): x for x in cells(synthetic_points())}
    iv = c[("cm", 100)].stats["ode_mse@ref"]
    # 1, 2, 4: mean 7/3, s^2 = (16/9 + 1/9 + 25/9) / 2 = 7/3, half = t_{0.975,2} sqrt(7/3) / sqrt(3)
    half = T_975[2] * math.sqrt(7 / 3) / math.sqrt(3)
    assert (iv.mean, iv.lo, iv.hi, iv.n) == pytest.approx((7 / 3, 7 / 3 - half, 7 / 3 + half, 3))
    ref = scipy.stats.ttest_1samp([1.0, 2.0, 4.0], 0).confidence_interval(0.95)
    assert (iv.lo, iv.hi) == pytest.approx((ref.low, ref.high))
    assert t_interval([5.0]).lo is None and t_interval([5.0]).mean == 5.0
    assert t_interval([2.0, 4.0]).lo == pytest.approx(3 - T_975[1] * math.sqrt(2) / math.sqrt(2))


def test_paired_and_welch_differences_by_hand():
    diffs = {(d.metric, d.group["steps"]): d for d in differences(synthetic_points())}
    d = diffs[("ode_mse@ref", 100)]
    # paired by seed: 0.5, 1.0, 1.0 -> mean 5/6, s^2 = (1/9 + 1/36 + 1/36) / 2 = 1/12
    half = T_975[2] * math.sqrt(1 / 12) / math.sqrt(3)
    assert d.interval.kind == "paired" and (d.interval.mean, d.interval.lo, d.interval.hi) == pytest.approx((5 / 6, 5 / 6 - half, 5 / 6 + half))
    ref = scipy.stats.ttest_rel([1.0, 2.0, 4.0], [0.5, 1.0, 3.0]).confidence_interval(0.95)
    assert (d.interval.lo, d.interval.hi) == pytest.approx((ref.low, ref.high))
    assert d.verdict == "direct better"  # CM's ODE error is higher, and the interval excludes 0
    r = diffs[("recall", 100)]  # 0.1, 0.2, 0.2 higher for CM, higher is better
    assert r.interval.excludes_zero() and r.verdict == "cm better"
    # other seeds for Direct CM: Welch's interval, against scipy's
    pts = [p for p in synthetic_points() if p["method"] == "cm"] + [_point("direct", 100, s, **{"ode_mse@ref": v, "recall": 0.5})
                                                                    for s, v in ((7, 0.2), (8, 0.9))]
    w = next(d for d in differences(pts) if d.metric == "ode_mse@ref")
    ref = scipy.stats.ttest_ind([1.0, 2.0, 4.0], [0.2, 0.9], equal_var=False).confidence_interval(0.95)
    assert w.interval.kind == "welch" and (w.interval.lo, w.interval.hi) == pytest.approx((ref.low, ref.high))
    va, vb = np.var([1.0, 2.0, 4.0], ddof=1) / 3, np.var([0.2, 0.9], ddof=1) / 2
    assert w.interval.df == pytest.approx((va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 1))
    assert welch_interval([1.0], [2.0, 3.0]).lo is None


def test_pairs_bootstrap_agreement():
    rng = np.random.default_rng(3)
    ode = rng.uniform(0.1, 1.0, 12)
    # quality strictly better where the ODE error is lower: every resample agrees perfectly
    a = pairs_bootstrap_agreement([str(i) for i in range(12)], ode, -np.log(ode), True, "q", "all runs")
    assert a.spearman == pytest.approx(1.0) and a.spearman_ci == pytest.approx((1.0, 1.0)) and a.verdict == "better"
    w = pairs_bootstrap_agreement([str(i) for i in range(12)], ode, -np.log(ode), False, "q", "all runs")
    assert w.verdict == "worse" and w.kendall == pytest.approx(-1.0)
    # noisy relation: the percentile interval matches scipy's pairs bootstrap (its own resampling and ranks)
    q = -ode + rng.normal(0, 0.25, 12)
    names = [str(i) for i in range(12)]
    ours = pairs_bootstrap_agreement(names, ode, q, True, "q", "all runs", reps=20000, seed=1)
    assert ours.spearman == pytest.approx(scipy.stats.spearmanr(-ode, q).statistic)

    def rho(x, y, axis=-1):
        rx, ry = scipy.stats.rankdata(x, axis=axis), scipy.stats.rankdata(y, axis=axis)
        rx, ry = rx - rx.mean(axis, keepdims=True), ry - ry.mean(axis, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (rx * ry).sum(axis) / np.sqrt((rx * rx).sum(axis) * (ry * ry).sum(axis))

    ref = scipy.stats.bootstrap((-ode, q), rho, paired=True, vectorized=True, n_resamples=20000, method="percentile",
                                random_state=np.random.default_rng(2)).confidence_interval
    assert ours.spearman_ci == pytest.approx((ref.low, ref.high), abs=0.03)
    # scopes: all runs and within each budget
    scopes = {(a.metric, a.scope) for a in run_agreements(synthetic_points())}
    assert scopes == {("recall", "all runs"), ("recall", "steps = 100")}


# ------------------------------------------------------------------------------ CLI and report

def _invoke(args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_study_plan_and_report_formats(uninterrupted, tmp_path):
    root = uninterrupted[0]
    r = _invoke(["study", "--teacher", "gmm", "--steps", "4,8", "--seeds", "2", "--batch-size", "16", "--hidden", "16",
                 "--depth", "1", "--grid", "10", "--checkpoint-every", "2", "--samples", "64", "--curve-points", "2",
                 "--curve-samples", "8", "--floor-samples", "0", "--out", root, "--plan"])
    # the CLI's evaluation default keeps ksteps (1, 2, 4): other keys than the API study, so nothing is done
    assert r.exit_code == 0, r.output
    assert "8 points, 0 done" in r.output
    r = _invoke(["report", "--study", root, "-f", "md", "--out", tmp_path / "s.md"])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "s.md").read_text()
    assert "## CM - Direct CM, per metric and budget" in md and "t-interval" in md and "pairs bootstrap" in md
    for stem in ("metrics_vs_steps", "curves", "ode_vs_quality", "per_sample"):
        assert (tmp_path / "s_files" / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
    r = _invoke(["report", "--study", root, "-f", "json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["schema"] == "odebench.study-report/1" and len(data["points"]) == 8 and len(data["cells"]) == 4
    diff = next(d for d in data["differences"] if d["metric"] == "ode_mse@ref" and d["steps"] == 8)
    vals = {p["name"]: p["metrics"]["ode_mse@ref"]["value"] for p in uninterrupted[1]["points"]}
    d = [vals[f"cm-l2-ddim-full-seed{s}-8steps"] - vals[f"direct-l2-ddim-full-seed{s}-8steps"] for s in (0, 1)]
    half = T_975[1] * np.std(d, ddof=1) / math.sqrt(2)
    assert (diff["mean"], diff["lo"], diff["hi"], diff["kind"]) == pytest.approx((np.mean(d), np.mean(d) - half, np.mean(d) + half, "paired"))
    r = _invoke(["report", "--study", root, "-f", "html", "--out", tmp_path / "s.html"])
    assert r.exit_code == 0 and "data:image/png;base64," in (tmp_path / "s.html").read_text()
    r = _invoke(["report", "--study", root])
    assert r.exit_code == 0 and "CM - Direct CM" in r.output and "verdict:" in r.output
    r = _invoke(["report", "--study", tmp_path / "nothing"])
    assert r.exit_code == 2 and "no study" in r.output
    r = _invoke(["report", "--study", root, "cm"])
    assert r.exit_code == 2 and "drop the run names" in r.output
    r = _invoke(["study", "--teacher", "gmm", "--steps", "4,x", "--out", tmp_path / "y"])
    assert r.exit_code == 2 and "comma list" in r.output


def test_cli_study_runs_and_resumes(tmp_path):
    args = ["study", "--teacher", "gmm", "--methods", "cm", "--steps", "2", "--seeds", "1", "--batch-size", "8",
            "--hidden", "8", "--depth", "1", "--grid", "5", "--checkpoint-every", "1", "--samples", "16",
            "--curve-points", "2", "--curve-samples", "4", "--floor-samples", "0", "--out", tmp_path / "s"]
    r = _invoke(args)
    assert r.exit_code == 0, r.output
    assert "done cm-l2-ddim-full-seed0-2steps" in r.output and "odebench report --study" in r.output
    study = json.loads((tmp_path / "s" / "study.json").read_text())
    assert [p["name"] for p in study["points"]] == ["cm-l2-ddim-full-seed0-2steps"]
    r = _invoke(args + ["--plan"])
    assert r.exit_code == 0 and "1 points, 1 done" in r.output
    r = _invoke(args)  # nothing left to do
    assert r.exit_code == 0 and "done cm" not in r.output
    r = _invoke([a if a != "8" else "9" for a in args])  # another batch size: refused, one line
    assert r.exit_code == 2 and "other settings (batch_size" in r.output
