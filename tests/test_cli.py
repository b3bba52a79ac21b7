"""The `odebench` command line end to end: subprocesses for the full path, CliRunner for the rest."""
from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from odebench.cli import app
from odebench.ode.spec import DEFAULT_METHOD, DEFAULT_RTOL, DEFAULT_TIME
from odebench.results import SCHEMA
from odebench.teachers import load_teacher

TINY = ["--samples", "64", "--curve-points", "3", "--curve-samples", "16", "--floor-samples", "8"]
QUICK = ["--samples", "16", "--curve-points", "0", "--floor-samples", "0"]
METRIC_FIELDS = {"value", "stderr", "higher_is_better", "identity"}
TEACHER_JSON = {"kind": "gmm", "means": [[0, 0], [3, 3]], "stds": [0.5, 0.2], "weights": [0.3, 0.7]}


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    # one intra-op thread: these tensors are tiny, and on a busy 2-core box thread contention costs more than it gives
    env.update(ODEBENCH_CACHE=str(cache), HF_HUB_OFFLINE="1", COLUMNS="250", NO_COLOR="1", TERM="dumb",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def odebench_subprocess(args, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "odebench", *args], cwd=cwd, env=_env(cache),
                          capture_output=True, text=True, timeout=300)


def invoke(args):
    """In-process CLI call; the caller has chdir'ed into its tmp_path."""
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_error_line(stderr: str, *needles: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got:\n{stderr}"
    assert lines[0].startswith("error: "), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def assert_nothing_written(out: Path) -> None:
    """No run directory and no temp leftovers (hidden '.name.tmp-*' dirs) under --out."""
    if out.exists():
        assert sorted(p.name for p in out.iterdir()) == []


pytestmark = pytest.mark.usefixtures("one_torch_thread", "wide_console")


def read(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


# ------------------------------------------------------------------------------------------------
# one full `odebench run` in a real subprocess, shared by several tests
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def main_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("main_run")
    proc = odebench_subprocess(["run", "--teacher", "gmm", "--student", "ddim:1", "--student", "ddim:4",
                                "--student", "heun:8", "--student", "ref", *TINY, "--out", "runs"],
                               cwd=root, cache=root / "cache")
    return proc, root


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.split("│")[1:-1]]


def test_run_exits_zero_and_prints_table(main_run):
    proc, root = main_run
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    out = proc.stdout
    assert "odebench · teacher gmm · 64 samples" in out
    from odebench.table import fmt

    # metrics as rows, students as columns (wide enough here for one table)
    students = ["ddim-1", "ddim-4", "heun-8", "ref"]
    header = next(line for line in out.splitlines() if line.strip("│┃ ").startswith("metric"))
    assert [c.strip() for c in header.split("┃")[1:-1]] == ["metric", *students]
    rows = {_cells(line)[0]: _cells(line)[1:] for line in out.splitlines() if line.startswith("│")}
    for i, name in enumerate(students):
        # each column shows this student's NFE and headline ODE error as stored in result.json
        res = read(root / "runs" / name)
        m = res["metrics"]["ode_mse@ref"]
        assert rows["NFE / sample"][i] == fmt(res["nfe"]["student_per_sample"])
        assert rows["ODE mse ↓"][i] == fmt(m["value"], m["stderr"])
    assert f"reference: {DEFAULT_METHOD} rtol={DEFAULT_RTOL:g}" in out
    assert "results: runs/ddim-1, runs/ddim-4, runs/heun-8, runs/ref" in out
    # a cold cache: the one reference chunk was solved in this run
    assert "(cache 0 hit / 1 miss)" in out


@pytest.mark.parametrize("width", [80, 200])
def test_run_table_is_whole_at_any_width(main_run, width):
    """Eight students at 80 and 200 columns: every number printed whole, no ellipsis, no line too long."""
    import io

    from rich.console import Console

    from odebench.bench import RunOutcome
    from odebench.table import SHORT, fmt, print_run_table

    proc, root = main_run
    outcomes = [RunOutcome(f"{d.name}-{copy}", d, read(d)) for copy in ("a", "b") for d in sorted((root / "runs").iterdir())]
    # a multistep student's per-step metric: its name must not be read as rich markup (it lost its [k=2])
    outcomes[0].result["metrics"]["ode_mse@ref[k=2]"] = {"value": 0.125, "stderr": 0.001}
    buf = io.StringIO()
    print_run_table(Console(file=buf, width=width, color_system=None), outcomes)
    out = buf.getvalue()
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= width
    assert ("(1/" in out) == (width == 80)  # split into several tables only where it does not fit
    for o in outcomes:
        assert o.name in out
        for m in o.result["metrics"].values():
            assert fmt(m["value"], m["stderr"]) in out
        for name in o.result["metrics"]:  # every label whole: ode_mse@ref[k=2] is not read as rich markup
            assert SHORT.get(name, name) in out


def test_run_writes_one_directory_per_student(main_run):
    proc, root = main_run
    assert proc.returncode == 0, proc.stderr
    runs = root / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["ddim-1", "ddim-4", "heun-8", "ref"]  # no '.tmp' leftovers
    for d in runs.iterdir():
        assert sorted(p.name for p in d.iterdir()) == ["per_sample.safetensors", "result.json"]
        t = load_file(str(d / "per_sample.safetensors"))
        assert t["samples"].shape == (64, 2)
        assert t["ode_se"].shape == (64,)
        res = read(d)
        assert res["name"] == d.name
        # the stored per-sample errors are what the headline metric averages
        assert t["ode_se"].double().mean().item() == pytest.approx(res["metrics"]["ode_mse@ref"]["value"], rel=1e-12, abs=0)


def test_result_json_contents(main_run):
    proc, root = main_run
    assert proc.returncode == 0, proc.stderr
    gmm = load_teacher("gmm")
    expected_nfe = {"ddim-1": 1, "ddim-4": 4, "heun-8": 15}
    for name in ("ddim-1", "ddim-4", "heun-8", "ref"):
        res = read(root / "runs" / name)
        assert res["schema"] == SCHEMA == "odebench.result/1"
        assert res["samples"] == 64
        assert res["seeds"]["seed"] == 0
        assert res["teacher"]["teacher"] == "gmm" and res["teacher"]["fingerprint"] == gmm.fingerprint()
        assert res["teacher"]["origin"] == "flag"
        assert res["conditioning"] == {"mode": "unconditional"}
        assert res["command"][:2] == ["odebench", "run"] and "heun:8" in res["command"]
        # metrics: every entry carries value / stderr / direction / identity
        m = res["metrics"]
        # the oracle row has no curve: it would cost a reference solve per noise level
        curve_keys = () if name == "ref" else ("ode_mse@ref_curve_mean",)
        assert ("ode_mse@ref_curve_mean" in m) == bool(curve_keys)
        for key in ("ode_mse@ref", "ode_rmse@ref", "ode_rel@ref", *curve_keys):
            assert METRIC_FIELDS <= set(m[key]), (key, m[key])
            assert m[key]["higher_is_better"] is False
            assert "teacher " + gmm.fingerprint() in m[key]["identity"]
            assert f"{DEFAULT_METHOD} rtol={DEFAULT_RTOL:g}" in m[key]["identity"]
            assert m[key]["n"] == (16 if key.endswith("curve_mean") else 64)
        assert m["ode_rmse@ref"]["value"] == pytest.approx(math.sqrt(m["ode_mse@ref"]["value"]), rel=1e-12)
        if curve_keys:
            assert len(res["curves"]["ode_mse_vs_sigma"]["sigma"]) == 3
        # the reference and its floor
        ref = res["reference"]
        assert ref["solver"] == {"method": DEFAULT_METHOD, "rtol": DEFAULT_RTOL, "atol": DEFAULT_RTOL, "time": DEFAULT_TIME,
                                 "dtype": "float64", "batch": 256, "options": {}}
        floor = ref["floor"]
        assert floor["n"] == 8 and floor["tight_solver"]["rtol"] == pytest.approx(DEFAULT_RTOL / 10)
        assert 0 < floor["ode_mse"] < 1e-6
        # NFE accounting
        nfe = res["nfe"]
        r = nfe["reference"]
        assert r["per_sample"] > 20 and r["accepted_steps"] > 0
        assert r["teacher_evals_this_run"] > 0 and r["cache_misses"] == 1 and r["cache_hits"] == 0
        if name == "ref":
            assert nfe["student_per_sample"] == r["per_sample"]
            assert nfe["student_teacher_passes"] == 0
        else:
            assert nfe["student_per_sample"] == expected_nfe[name]
            assert nfe["student_teacher_passes"] == 64 * expected_nfe[name]
        assert res["timings"]["total_s"] > 0
        assert all(isinstance(v, float) and v >= 0 for v in res["timings"].values())
        env = res["environment"]
        assert env["torch"] == torch.__version__ and env["device"] == "cpu"
        assert {"odebench", "python", "torchdiffeq", "numpy"} <= set(env)


def test_ref_row_is_exact_and_errors_order_by_nfe(main_run):
    proc, root = main_run
    assert proc.returncode == 0, proc.stderr
    mse = {n: read(root / "runs" / n)["metrics"]["ode_mse@ref"]["value"] for n in ("ddim-1", "ddim-4", "heun-8", "ref")}
    assert mse["ref"] == 0.0
    assert read(root / "runs" / "ref")["metrics"]["ode_rel@ref"]["value"] == 0.0
    assert torch.count_nonzero(load_file(str(root / "runs" / "ref" / "per_sample.safetensors"))["ode_se"]) == 0
    assert mse["ddim-1"] > mse["ddim-4"] > mse["heun-8"] > 0
    # ddim-1 jumps straight to the posterior mean at sigma_max: a large, O(1) error on a radius-2 ring
    assert mse["ddim-1"] > 0.5
    # the same noise went into every student: sample 0 of ref equals the reference endpoint, so ddim-1's
    # per-sample error is its distance to ref's sample
    ref_s = load_file(str(root / "runs" / "ref" / "per_sample.safetensors"))["samples"].double()
    d1 = load_file(str(root / "runs" / "ddim-1" / "per_sample.safetensors"))
    se = (d1["samples"].double() - ref_s).pow(2).mean(dim=1)
    assert torch.allclose(se, d1["ode_se"].double(), rtol=1e-5, atol=1e-6)


def test_ls_lists_presets_and_runs(main_run):
    proc, root = main_run
    assert proc.returncode == 0, proc.stderr
    r = invoke(["ls", "--runs-dir", root / "runs"])
    assert r.exit_code == 0, r.output
    assert "gmm64" in r.stdout and "2-D ring of 8 isotropic Gaussians" in r.stdout
    rows = {line.split("│")[1].strip(): line for line in r.stdout.splitlines() if line.count("│") >= 5}
    for name, spec in (("ddim-1", "ddim:1"), ("ddim-4", "ddim:4"), ("heun-8", "heun:8"), ("ref", "ref")):
        assert name in rows, r.stdout
        cells = [c.strip() for c in rows[name].split("│")[1:-1]]
        assert cells[1:4] == ["gmm", spec, "64"]
    assert [c.strip() for c in rows["ref"].split("│")[1:-1]][4] == "0"
    # a directory that is not a run is not listed; an empty runs dir still lists the presets
    r2 = invoke(["ls", "--runs-dir", root / "does-not-exist"])
    assert r2.exit_code == 0 and "gmm64" in r2.stdout and "runs in" not in r2.stdout


# ------------------------------------------------------------------------------------------------
# names, --out and teacher files (in-process)
# ------------------------------------------------------------------------------------------------
def test_name_with_one_student_and_custom_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = invoke(["run", "--student", "ddim:2", "--name", "mine", "--out", "elsewhere", *QUICK])
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == ["mine"]
    assert not (tmp_path / "runs").exists()
    res = read(tmp_path / "elsewhere" / "mine")
    assert res["name"] == "mine" and res["student"]["spec"] == "ddim:2" and res["samples"] == 16


def test_name_with_two_students_is_a_prefix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = invoke(["run", "--student", "ddim:1", "--student", "euler:2", "--name", "exp", *QUICK])
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["exp-ddim-1", "exp-euler-2"]
    assert read(tmp_path / "runs" / "exp-euler-2")["student"]["spec"] == "euler:2"


def test_teacher_json_file_and_sigma_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.json").write_text(json.dumps(TEACHER_JSON))
    r = invoke(["run", "--teacher", "t.json", "--student", "ddim:2", "--student", "ref", *QUICK])
    assert r.exit_code == 0, r.stderr
    res = read(tmp_path / "runs" / "ddim-2")
    t = res["teacher"]
    assert t["sigma_min"] == 0.002 and t["sigma_max"] == 80.0 and t["init_noise_scale"] == 80.0
    assert t["spec"]["sigma_min"] == 0.002 and t["spec"]["sigma_max"] == 80.0
    assert t["spec"]["means"] == [[0.0, 0.0], [3.0, 3.0]] and t["spec"]["stds"] == [[0.5, 0.5], [0.2, 0.2]]
    assert t["spec"]["weights"] == pytest.approx([0.3, 0.7])
    assert t["fingerprint"] == load_teacher(dict(TEACHER_JSON)).fingerprint() != load_teacher("gmm").fingerprint()
    assert t["shape"] == [2] and t["origin"] == "flag"
    assert read(tmp_path / "runs" / "ref")["metrics"]["ode_mse@ref"]["value"] == 0.0
    assert res["metrics"]["ode_mse@ref"]["value"] > 0


# ------------------------------------------------------------------------------------------------
# bad input: one 'error:' line, nonzero exit, nothing written
# ------------------------------------------------------------------------------------------------
BAD_TEACHERS = {
    "invalid.json": '{"kind": "gmm", "means": [[0, 0], [3',
    "stds_len.json": json.dumps({"kind": "gmm", "means": [[0, 0], [3, 3]], "stds": [0.5]}),
    "neg_std.json": json.dumps({"kind": "gmm", "means": [[0, 0], [3, 3]], "stds": [0.5, -0.2]}),
    "unknown_field.json": json.dumps({**TEACHER_JSON, "colour": "blue"}),
    "not_object.json": json.dumps([1, 2, 3]),
}

ERROR_CASES = [
    pytest.param(["--teacher", "missing.json"], ["missing.json", "not found"], id="teacher-json-missing"),
    pytest.param(["--teacher", "invalid.json"], ["invalid.json", "not valid JSON"], id="teacher-json-invalid"),
    pytest.param(["--teacher", "stds_len.json"], ["stds_len.json", "stds"], id="teacher-json-stds-length"),
    pytest.param(["--teacher", "neg_std.json"], ["neg_std.json", "stds"], id="teacher-json-negative-std"),
    pytest.param(["--teacher", "unknown_field.json"], ["unknown_field.json", "colour"], id="teacher-json-unknown-field"),
    pytest.param(["--teacher", "not_object.json"], ["not_object.json"], id="teacher-json-not-object"),
    pytest.param(["--teacher", "gmm3"], ["unknown teacher", "gmm3"], id="teacher-unknown-preset"),
    pytest.param(["--student", "foo:3"], ["unknown student", "foo:3"], id="student-foo:3"),
    pytest.param(["--student", "nonsense"], ["unknown student", "nonsense"], id="student-nonsense"),
    pytest.param(["--student", "ddim:0"], ["ddim:0", "positive integer"], id="student-ddim:0"),
    pytest.param(["--student", "heun:x"], ["heun:x", "positive integer"], id="student-heun:x"),
    pytest.param(["--student", "missing_ckpt.json"], ["missing_ckpt.json", "not found"], id="student-missing-checkpoint"),
    pytest.param(["--solver-option", "bogus=1"], ["bogus", "first_step"], id="solver-option-unknown"),
    pytest.param(["--solver-option", "first_step=abc"], ["first_step", "abc"], id="solver-option-not-a-number"),
    pytest.param(["--solver-option", "first_step"], ["key=value"], id="solver-option-no-equals"),
    pytest.param(["--samples", "-5"], ["--samples", "-5"], id="samples-negative"),
    pytest.param(["--samples", "0"], ["--samples", "positive"], id="samples-zero"),
    pytest.param(["--batch-size", "0"], ["--batch-size"], id="batch-size-zero"),
    pytest.param(["--rtol", "-1"], ["rtol", "-1"], id="rtol-negative"),
    pytest.param(["--method", "rk45"], ["rk45", "dopri5"], id="method-rk45"),
    pytest.param(["--name", "a/b"], ["a/b", "invalid run name"], id="name-with-slash"),
    pytest.param(["--name", ".hidden"], [".hidden", "invalid run name"], id="name-hidden"),
    pytest.param(["--student", "ddim:2", "--student", "ddim:2"], ["ddim-2"], id="duplicate-student"),
    pytest.param(["--uncond", "--conditional"], ["--uncond"], id="uncond-and-conditional"),
    pytest.param(["--guidance", "3", "--uncond"], ["guidance"], id="guidance-needs-conditional"),
    pytest.param(["--teacher", "gmm", "--dtype", "bf16"], ["analytic", "--state-dtype"], id="network-dtype-on-analytic"),
    pytest.param(["--dtype", "int8"], ["int8", "fp32, bf16 or fp16", "--state-dtype"], id="network-dtype-unknown"),
    pytest.param(["--state-dtype", "float16"], ["float16", "--state-dtype"], id="state-dtype-unknown"),
    pytest.param(["--dtype", "float64", "--state-dtype", "float32"], ["--state-dtype only"], id="old-and-new-state-dtype"),
]


def test_old_dtype_spelling_sets_the_state_dtype_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = invoke(["run", *QUICK, "--teacher", "gmm", "--student", "ddim:1", "--dtype", "float32", "--out", tmp_path / "out"])
    assert r.exit_code == 0, (r.stderr, r.exception)
    assert "--dtype float32 is deprecated" in r.stderr and "--state-dtype float32" in r.stderr
    res = json.loads((tmp_path / "out" / "ddim-1" / "result.json").read_text())
    assert res["reference"]["solver"]["dtype"] == "float32" and res["reference"]["network_dtype"] is None


@pytest.mark.parametrize("args, needles", ERROR_CASES)
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, monkeypatch, args, needles):
    monkeypatch.chdir(tmp_path)
    for name, text in BAD_TEACHERS.items():
        (tmp_path / name).write_text(text)
    out = tmp_path / "out"
    r = invoke(["run", *QUICK, *args, "--out", out])  # args last: they override QUICK
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr, r.exception)
    assert r.stdout == ""
    assert_one_error_line(r.stderr, *needles)
    assert_nothing_written(out)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "a").exists()


# ------------------------------------------------------------------------------------------------
# student checkpoints
# ------------------------------------------------------------------------------------------------
def _export_student(stem: Path, conditional: bool = False, steps: int = 2) -> Path:
    from odebench.students.consistency import export_mlp_student
    from odebench.students.mlp import MLPConsistency

    teacher = load_teacher("gmm")
    torch.manual_seed(0)
    model = MLPConsistency(dim=2, sigma_data=teacher.sigma_data, sigma_min=teacher.sigma_min, hidden=16, depth=2,
                           emb_dim=8, num_classes=teacher.num_classes)
    return Path(export_mlp_student(stem, model, teacher, conditional=conditional, steps=steps))


@pytest.fixture
def student_ckpt(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    side = _export_student(tmp_path / "ckpt" / "stu")
    assert side == tmp_path / "ckpt" / "stu.json" and (tmp_path / "ckpt" / "stu.safetensors").is_file()
    return side


def test_checkpoint_student_brings_its_teacher(student_ckpt, tmp_path):
    r = invoke(["run", "--student", student_ckpt, *QUICK])
    assert r.exit_code == 0, r.stderr
    res = read(tmp_path / "runs" / "stu")
    gmm = load_teacher("gmm")
    assert res["teacher"]["fingerprint"] == gmm.fingerprint()
    assert res["teacher"]["teacher"] == "gmm"
    assert res["teacher"]["origin"].startswith("student ")
    assert res["student"]["class"] == "ConsistencyStudent" and res["student"]["kind"] == "trajectory" and res["student"]["steps"] == 2
    assert res["student"]["trained_for"]["fingerprint"] == gmm.fingerprint()
    assert res["nfe"]["student_per_sample"] == 2
    assert res["flags"] == [] or not any(f.startswith("teacher-mismatch") for f in res["flags"])
    # variable-step student: the other k of (1, 2, 4) are scored too, and differ from k=2
    m = res["metrics"]
    assert {"ode_mse@ref[k=1]", "ode_mse@ref[k=4]"} <= set(m)
    assert m["ode_mse@ref[k=4]"]["value"] != m["ode_mse@ref"]["value"]
    assert all(math.isfinite(m[k]["value"]) and m[k]["value"] > 0 for k in ("ode_mse@ref", "ode_mse@ref[k=1]", "ode_mse@ref[k=4]"))
    # the weights file or the directory name the same student
    r2 = invoke(["run", "--student", tmp_path / "ckpt" / "stu.safetensors", *QUICK, "--name", "by-weights"])
    assert r2.exit_code == 0, r2.stderr
    assert read(tmp_path / "runs" / "by-weights")["metrics"]["ode_mse@ref"]["value"] == m["ode_mse@ref"]["value"]


def test_checkpoint_teacher_mismatch_is_refused(student_ckpt, tmp_path):
    r = invoke(["run", "--student", student_ckpt, "--teacher", "gmm64", *QUICK])
    assert r.exit_code == 2
    assert_one_error_line(r.stderr, "gmm64", load_teacher("gmm").fingerprint(), "--allow-mismatch")
    assert_nothing_written(tmp_path / "runs")


def test_checkpoint_allow_mismatch_scores_and_flags(student_ckpt, tmp_path):
    (tmp_path / "t.json").write_text(json.dumps(TEACHER_JSON))
    r = invoke(["run", "--student", student_ckpt, "--teacher", "t.json", *QUICK])
    assert r.exit_code == 2
    assert_one_error_line(r.stderr, "--allow-mismatch")
    assert_nothing_written(tmp_path / "runs")
    r = invoke(["run", "--student", student_ckpt, "--teacher", "t.json", "--allow-mismatch", *QUICK])
    assert r.exit_code == 0, r.stderr
    res = read(tmp_path / "runs" / "stu")
    assert res["teacher"]["fingerprint"] == load_teacher(dict(TEACHER_JSON)).fingerprint()
    mism = [f for f in res["flags"] if f.startswith("teacher-mismatch")]
    assert len(mism) == 1 and load_teacher("gmm").fingerprint() in mism[0]
    assert "teacher-mismatch" in r.stdout  # the table's flags column


def test_checkpoint_allow_mismatch_cannot_cross_dimensions(student_ckpt, tmp_path):
    """--allow-mismatch scores another ODE, but a 2-D network cannot take 64-D states: one-line error,
    not a traceback from inside the network (and before any reference work is done)."""
    r = invoke(["run", "--student", student_ckpt, "--teacher", "gmm64", "--allow-mismatch", "--samples", "4",
                "--curve-points", "0", "--floor-samples", "0", "--rtol", "1e-2", "--atol", "1e-2"])
    assert r.exit_code == 2, (r.exit_code, r.stderr, repr(r.exception))
    assert_one_error_line(r.stderr, "stu.json", "(2,)", "(64,)")
    assert_nothing_written(tmp_path / "runs")
    assert list((tmp_path / "cache").glob("trajectories/*/*")) == []


def test_checkpoint_guidance_mismatch_is_refused(student_ckpt, tmp_path):
    r = invoke(["run", "--student", student_ckpt, "--conditional", "--guidance", "3", *QUICK])
    assert r.exit_code == 2
    assert_one_error_line(r.stderr, "guidance", "w=1", "w=3", "--allow-mismatch")
    assert_nothing_written(tmp_path / "runs")
    # the conditioning the student was trained for is also part of the contract
    r = invoke(["run", "--student", student_ckpt, "--conditional", *QUICK])
    assert r.exit_code == 2
    assert_one_error_line(r.stderr, "unconditional", "class-conditional")
    assert_nothing_written(tmp_path / "runs")


def test_checkpoint_with_tampered_weights_is_refused(student_ckpt, tmp_path):
    w = tmp_path / "ckpt" / "stu.safetensors"
    blob = bytearray(w.read_bytes())
    blob[-1] ^= 0x01
    w.write_bytes(bytes(blob))
    r = invoke(["run", "--student", student_ckpt, *QUICK])
    assert r.exit_code == 2
    assert_one_error_line(r.stderr, "checksum")
    assert_nothing_written(tmp_path / "runs")


# ------------------------------------------------------------------------------------------------
# a pickle that would run code must never be unpickled
# ------------------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this calls open(marker, 'w'): creating the marker file proves code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import builtins

        return (builtins.open, (self.marker, "w"))


EVIL_KINDS = ("torch.save", "pickle.dump", "pickle.dump-2")


def _write_evil_student(root: Path, how: str) -> tuple[Path, Path, Path]:
    """A valid sidecar (correct checksum) whose weights file is a code-running pickle."""
    tag = how.replace(".", "-")
    marker = root / f"PWNED-{tag}"
    weights = root / f"evil-{tag}.pt"
    payload = {"net.0.weight": _Payload(str(marker))}
    if how == "torch.save":
        torch.save(payload, weights)
    else:
        with open(weights, "wb") as f:
            pickle.dump(payload, f, protocol=2 if how.endswith("-2") else pickle.DEFAULT_PROTOCOL)
    side = json.loads(_export_student(root / f"base-{tag}").read_text())
    side["weights"] = weights.name
    side["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()  # the checksum passes
    sidecar = root / f"evil-{tag}.json"
    sidecar.write_text(json.dumps(side))
    return sidecar, weights, marker


def _assert_payload_is_live(how: str, weights: Path, marker: Path) -> None:
    """An unrestricted unpickler does run the payload, so the 'marker absent' checks can fail."""
    assert not marker.exists()
    try:
        with open(weights, "rb") as f:
            obj = torch.load(f, weights_only=False) if how == "torch.save" else pickle.load(f)
        obj["net.0.weight"].close()
        assert marker.exists()
    finally:
        marker.unlink(missing_ok=True)


@pytest.mark.parametrize("how", EVIL_KINDS)
def test_code_pickle_is_refused_and_never_runs(tmp_path, monkeypatch, how):
    monkeypatch.chdir(tmp_path)
    sidecar, weights, marker = _write_evil_student(tmp_path, how)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = invoke(["run", "--student", sidecar.name, *QUICK])
        assert r.exit_code == 2, (r.exit_code, r.stderr, repr(r.exception))
        assert_one_error_line(r.stderr, "refusing to load", weights.name)
        assert not marker.exists()
        assert_nothing_written(tmp_path / "runs")
        # also through the weights path itself (the sidecar is found beside it)
        r = invoke(["run", "--student", weights.name, *QUICK])
        assert r.exit_code == 2
        assert_one_error_line(r.stderr, "refusing to load")
        assert not marker.exists()
    _assert_payload_is_live(how, weights, marker)
    # torch's protocol warning for plain pickles would print beside the error line in a real process
    assert not any("pickle" in str(w.message) for w in caught), [str(w.message) for w in caught]


@pytest.fixture(scope="module")
def evil_subprocess(tmp_path_factory):
    root = tmp_path_factory.mktemp("evil_subprocess")
    sidecar, weights, marker = _write_evil_student(root, "pickle.dump")
    proc = odebench_subprocess(["run", "--student", sidecar.name, *QUICK], root, root / "cache")
    return proc, root, marker


def test_code_pickle_refused_in_a_real_process(evil_subprocess):
    """The error contract as a shell sees it: status 2, one 'error:' line, no traceback, nothing ran."""
    proc, root, marker = evil_subprocess
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "refusing to load" in errors[0] and "evil-pickle-dump.pt" in errors[0], proc.stderr
    assert not marker.exists()
    assert_nothing_written(root / "runs")


def test_code_pickle_error_is_the_only_stderr_line_in_a_real_process(evil_subprocess):
    proc, root, marker = evil_subprocess
    assert_one_error_line(proc.stderr, "refusing to load")
