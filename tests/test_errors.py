"""Every failure is one clear line and a nonzero exit, found before any work it could have been found
before: malformed sidecars, teacher and result files (the schema checker), unwritable outputs, reference
solver failures, non-finite results, unexpected exceptions (the top-level handler) and pickles."""
from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_cli import (QUICK, TEACHER_JSON, _export_student, assert_nothing_written, assert_one_error_line,  # noqa: E402
                      invoke, odebench_subprocess)

from odebench.errors import OdebenchError  # noqa: E402
from odebench.ode.spec import DEFAULT_METHOD  # noqa: E402
from odebench.schema import Arr, Bool, Int, Num, Obj, OneOf, Opt, Str, validate  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread", "wide_console")
G = ["--teacher", "gmm", *QUICK]


def cache_entries(tmp_path: Path) -> list[Path]:
    """Reference chunks solved so far: none may exist when an input error could have been found first."""
    return list((tmp_path / "cache").glob("trajectories/*/*"))


def assert_error_line(stderr: str, *needles: str) -> str:
    """The error line, after at most one progress-bar frame (errors found while a stage runs)."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2 and lines[-1].startswith("error: "), stderr
    assert all(n in lines[-1] for n in needles), (needles, lines[-1])
    return lines[-1]


def assert_refused_before_work(r, tmp_path: Path, out: Path, *needles: str) -> str:
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr, repr(r.exception))
    line = assert_one_error_line(r.stderr, *needles)
    assert_nothing_written(out)
    assert cache_entries(tmp_path) == []
    return line


# ------------------------------------------------------------------------------------------------
# the schema checker itself
# ------------------------------------------------------------------------------------------------
DOC = Obj({
    "n": Int(ge=1),
    "x": Num(gt=0, le=10),
    "m": Num(abs_le=1e8),
    "s": Str(("a", "b")),
    "flag": Bool(),
    "maybe": Opt(Num(ge=0)),
    "either": OneOf(Num(gt=0), Arr(Num(gt=0), min_len=1)),
    "rows": Arr(Arr(Num(), min_len=1), min_len=1, max_len=3),
    "sub": Obj({"k": Int()}, required=("k",), extra=False),
    "map": Obj(extra=Num()),
}, required=("n",))

SCHEMA_CASES = [
    ({"n": 0}, '"n" must be an integer >= 1, got 0'),
    ({"n": 2.0}, '"n" must be an integer >= 1, got 2.0'),  # JSON integers only
    ({"n": True}, '"n" must be an integer >= 1, got true'),  # a boolean is not a number
    ({"n": "3"}, '"n" must be an integer >= 1, got "3"'),
    ({}, '"n" is missing'),
    ({"n": 1, "x": 0}, '"x" must be a finite number > 0 and <= 10, got 0'),
    ({"n": 1, "x": float("inf")}, '"x" must be a finite number > 0 and <= 10, got Infinity'),
    ({"n": 1, "x": float("nan")}, '"x" must be a finite number > 0 and <= 10, got NaN'),
    ({"n": 1, "m": 1e300}, '"m" must be a finite number with |x| <= 1e+08, got 1e+300'),
    ({"n": 1, "s": "c"}, '"s" must be one of "a", "b", got "c"'),
    ({"n": 1, "flag": "yes"}, '"flag" must be true or false, got "yes"'),
    ({"n": 1, "maybe": -1}, '"maybe" must be a finite number >= 0 or null, got -1'),
    ({"n": 1, "either": [1, -2]}, '"either[1]" must be a finite number > 0, got -2'),  # the deeper error wins
    ({"n": 1, "either": "x"}, '"either" must be a finite number > 0 or a non-empty list, got "x"'),
    ({"n": 1, "rows": []}, '"rows" must be a list of 1 to 3 entries, got a list of 0'),
    ({"n": 1, "rows": [[1], [2, "z"]]}, '"rows[1][1]" must be a finite number, got "z"'),
    ({"n": 1, "sub": {}}, '"sub.k" is missing'),
    ({"n": 1, "sub": {"k": 1, "j": 2}}, 'unknown field "sub.j" (allowed: k)'),
    ({"n": 1, "sub": []}, '"sub" must be an object, got a list of 0'),
    ({"n": 1, "map": {"a": 1, "b": None}}, '"map.b" must be a finite number, got null'),
    ([1, 2], "the file must be an object, got a list of 2"),
]


@pytest.mark.parametrize("doc, message", SCHEMA_CASES, ids=[m for _, m in SCHEMA_CASES])
def test_schema_names_the_offending_key(doc, message):
    with pytest.raises(OdebenchError) as e:
        validate(doc, DOC, "f.json")
    assert str(e.value) == f"f.json: {message}"


def test_schema_accepts_what_fits():
    doc = {"n": 3, "x": 10, "m": -1e8, "s": "b", "flag": False, "maybe": None, "either": [0.5], "rows": [[1.5, 2]],
           "sub": {"k": -4}, "map": {"a": 1e300}, "free": {"anything": [None]}}
    assert validate(doc, DOC, "f.json") is doc


# ------------------------------------------------------------------------------------------------
# student sidecars
# ------------------------------------------------------------------------------------------------
def _sidecar_variant(tmp_path: Path, name: str, mutate) -> Path:
    side_path = _export_student(tmp_path / "ckpt" / "stu")
    side = json.loads(side_path.read_text())
    side["weights"] = str(tmp_path / "ckpt" / "stu.safetensors")
    mutate(side)
    out = tmp_path / f"{name}.json"
    out.write_text(json.dumps(side))  # allow_nan: Python's json writes NaN, and reads it back
    return out


def _set(path: str, value):
    def mutate(side):
        *parents, last = path.split(".")
        d = side
        for p in parents:
            d = d[p]
        d[last] = value
    return mutate


def _drop(path: str):
    def mutate(side):
        *parents, last = path.split(".")
        d = side
        for p in parents:
            d = d[p]
        del d[last]
    return mutate


SIDECAR_CASES = [
    ("teacher-as-string", _set("teacher", "gmm"), ['"teacher" must be an object', '"gmm"']),
    ("steps-zero", _set("sampler.steps", 0), ['"sampler.steps" must be an integer >= 1', "got 0"]),
    ("steps-string", _set("sampler.steps", "two"), ['"sampler.steps"', '"two"']),
    ("steps-float", _set("sampler.steps", 2.5), ['"sampler.steps"', "2.5"]),
    ("guidance-string", _set("guidance", "none"), ['"guidance" must be an object']),
    ("guidance-w-nan", _set("guidance.w", float("nan")), ['"guidance.w"', "NaN"]),
    ("guidance-form", _set("guidance.form", "cfg"), ['"guidance.form"', '"cfg"']),
    ("guidance-w-missing", _drop("guidance.w"), ['"guidance.w" is missing']),
    ("architecture-list", _set("architecture", [1, 2]), ['"architecture" must be an object']),
    ("hidden-negative", _set("architecture.hidden", -4), ['"architecture.hidden" must be an integer >= 1', "-4"]),
    ("emb-dim-odd", _set("architecture.emb_dim", 7), ['"architecture.emb_dim"', "multiple of 2"]),
    ("architecture-extra", _set("architecture.colour", "red"), ['unknown field "architecture.colour"']),
    ("sigma-min-negative", _set("parameterisation.sigma_min", -1), ['"parameterisation.sigma_min"', "-1"]),
    ("sigma-data-missing", _drop("parameterisation.sigma_data"), ['"parameterisation.sigma_data" is missing']),
    ("sigma-max-below-min", _set("sampler.sigma_max", 0.001), ['"sampler.sigma_max" must be above']),
    ("conditional-string", _set("conditional", "yes"), ['"conditional" must be true or false', '"yes"']),
    ("sha-not-hex", _set("weights_sha256", 12), ['"weights_sha256" must be 64 lowercase hex digits']),
    ("weights-empty", _set("weights", ""), ['"weights" must be a non-empty string']),
    ("teacher-spec-number", _set("teacher.spec", 3), ['"teacher.spec"']),
]


@pytest.mark.parametrize("name, mutate, needles", SIDECAR_CASES, ids=[c[0] for c in SIDECAR_CASES])
def test_malformed_sidecar_is_one_line_before_any_work(tmp_path, monkeypatch, name, mutate, needles):
    monkeypatch.chdir(tmp_path)
    side = _sidecar_variant(tmp_path, name, mutate)
    r = invoke(["run", "--student", side.name, *QUICK, "--out", "out"])
    assert_refused_before_work(r, tmp_path, tmp_path / "out", side.name, *needles)


def test_lcm_sidecar_steps_beyond_its_timesteps(tmp_path, monkeypatch):
    """A cross-field rule: the LCM sampler takes T // k steps apart, so k <= T."""
    from importlib import resources

    from odebench.students.checkpoint import read_sidecar

    shipped = Path(str(resources.files("odebench.assets").joinpath("students", "cm.json")))
    side = json.loads(shipped.read_text())
    side["sampler"]["steps"] = side["sampler"]["num_train_timesteps"] + 1
    bad = tmp_path / "cm.json"
    bad.write_text(json.dumps(side))
    with pytest.raises(OdebenchError, match=r'"sampler.steps" must be at most "sampler.num_train_timesteps" \(1000\), got 1001'):
        read_sidecar(bad)
    assert read_sidecar(shipped)["sampler"]["steps"] == 1  # the shipped students fit the schema


# ------------------------------------------------------------------------------------------------
# teacher files
# ------------------------------------------------------------------------------------------------
TEACHER_CASES = [
    ("mean-overflows", {**TEACHER_JSON, "means": [[1e300, 0], [3, 3]]}, ['"means[0][0]"', "1e+300"]),
    ("std-overflows", {**TEACHER_JSON, "stds": [1e300, 0.2]}, ['"stds[0]"', "1e+300"]),
    ("weights-sum-overflows", {**TEACHER_JSON, "weights": [1e308, 1e308]}, ['"weights[0]"']),
    ("sigma-max-huge", {**TEACHER_JSON, "sigma_max": 1e200}, ['"sigma_max"']),
    ("sigma-min-string", {**TEACHER_JSON, "sigma_min": "small"}, ['"sigma_min"', '"small"']),
    ("name-number", {**TEACHER_JSON, "name": 5}, ['"name" must be a non-empty string']),
    ("conditional-string", {**TEACHER_JSON, "conditional": "no"}, ['"conditional" must be true or false']),
    ("classes-bools", {**TEACHER_JSON, "classes": [True, False]}, ['"classes[0]" must be an integer >= 0', "true"]),
    ("means-ragged", {**TEACHER_JSON, "means": [[0, 0], [3]]}, ["'means'", "equal-length"]),
]


@pytest.mark.parametrize("name, spec, needles", TEACHER_CASES, ids=[c[0] for c in TEACHER_CASES])
def test_malformed_teacher_file_is_one_line_before_any_work(tmp_path, monkeypatch, name, spec, needles):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.json").write_text(json.dumps(spec))
    r = invoke(["run", "--teacher", "t.json", "--student", "ddim:2", *QUICK, "--out", "out"])
    assert_refused_before_work(r, tmp_path, tmp_path / "out", "t.json", *needles)


def test_teacher_nan_token_and_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nan.json").write_text('{"kind": "gmm", "means": [[NaN, 0], [3, 3]], "stds": [0.5, 0.2]}')
    r = invoke(["run", "--teacher", "nan.json", *QUICK, "--out", "out"])
    assert_refused_before_work(r, tmp_path, tmp_path / "out", '"means[0][0]"', "NaN")
    (tmp_path / "dir.json").mkdir()
    r = invoke(["run", "--teacher", "dir.json", *QUICK, "--out", "out"])
    assert_refused_before_work(r, tmp_path, tmp_path / "out", "dir.json is a directory")


def test_teacher_bounds_keep_valid_teachers_and_their_identity():
    """The bounds only refuse numbers that overflow later; a teacher at them still loads, and the
    presets' fingerprints (which students record) do not move."""
    from odebench.teachers import load_teacher
    from odebench.teachers.gmm import BOUND

    t = load_teacher({**TEACHER_JSON, "means": [[BOUND, -BOUND], [3, 3]], "stds": [BOUND, 1e-12], "sigma_max": BOUND})
    x = torch.zeros(4, 2, dtype=torch.float64)
    assert torch.isfinite(t.denoise(x, torch.full((4,), 80.0, dtype=torch.float64), None)).all()
    assert load_teacher("gmm").fingerprint() == "gmm-0021ece58b346ffc"
    assert load_teacher("gmm64").fingerprint() == "gmm-e78878b0c04b9f05"


# ------------------------------------------------------------------------------------------------
# result files: `report` errors in one line, `ls` lists the run as unreadable
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    import os as _os

    root = tmp_path_factory.mktemp("one_run")
    cwd = Path.cwd()
    _os.chdir(root)
    try:
        r = invoke(["run", *G, "--student", "ddim:2", "--curve-points", "2", "--curve-samples", "4", "--floor-samples", "4", "--out", "runs",
                    "--cache-dir", root / "cache"])
    finally:
        _os.chdir(cwd)
    assert r.exit_code == 0, r.stderr
    return json.loads((root / "runs" / "ddim-2" / "result.json").read_text())


def _result_case(path: str, value):
    def mutate(res):
        *parents, last = path.split(".")
        d = res
        for p in parents:
            d = d[p]
        if value is KeyError:
            del d[last]
        else:
            d[last] = value
    return mutate


RESULT_CASES = [
    ("metrics-list", _result_case("metrics", []), '"metrics" must be an object'),
    ("teacher-string", _result_case("teacher", "gmm"), '"teacher" must be an object'),
    ("samples-zero", _result_case("samples", 0), '"samples" must be an integer >= 1'),
    ("metric-value-string", _result_case("metrics.ode_mse@ref.value", "big"), '"metrics.ode_mse@ref.value"'),
    ("metric-identity-missing", _result_case("metrics.ode_mse@ref.identity", KeyError), '"metrics.ode_mse@ref.identity" is missing'),
    ("seeds-missing", _result_case("seeds", KeyError), '"seeds" is missing'),
    ("flags-string", _result_case("flags", "none"), '"flags" must be a list'),
    ("curve-string", _result_case("curves.ode_mse_vs_sigma.ode_mse", "x"), '"curves.ode_mse_vs_sigma.ode_mse"'),
    ("curve-lengths", _result_case("curves.ode_mse_vs_sigma.ode_mse", [1.0]), "different lengths"),
    ("floor-negative", _result_case("reference.floor.ode_mse", -1.0), '"reference.floor.ode_mse"'),
    ("nfe-string", _result_case("nfe.student_per_sample", "two"), '"nfe.student_per_sample"'),
]


@pytest.mark.parametrize("name, mutate, needle", RESULT_CASES, ids=[c[0] for c in RESULT_CASES])
def test_malformed_result_json(tmp_path, monkeypatch, one_run, name, mutate, needle):
    monkeypatch.chdir(tmp_path)
    res = json.loads(json.dumps(one_run))
    mutate(res)
    for d, data in (("good", one_run), ("bad", res)):
        (tmp_path / "runs" / d).mkdir(parents=True)
        (tmp_path / "runs" / d / "result.json").write_text(json.dumps(data))
    where = str(Path("runs") / "bad" / "result.json")
    for fmt in ("table", "json"):
        r = invoke(["report", "--runs-dir", "runs", "--format", fmt])
        assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr, repr(r.exception))
        assert_one_error_line(r.stderr, where, needle)
    r = invoke(["ls", "--runs-dir", "runs"])
    assert r.exit_code == 0 and r.stderr == "", (r.stderr, repr(r.exception))
    rows = [line for line in r.stdout.splitlines() if "│ bad " in line]
    assert len(rows) == 1 and needle.split(" ")[0] in rows[0], r.stdout  # listed, with the key that is wrong
    assert any("│ good " in line and "ddim:2" in line for line in r.stdout.splitlines())


# ------------------------------------------------------------------------------------------------
# the output location: checked before any solving
# ------------------------------------------------------------------------------------------------
def test_out_that_is_a_file_or_under_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("keep me")
    for out in ("afile", "afile/sub"):
        r = invoke(["run", *G, "--student", "ddim:1", "--out", out])
        assert r.exit_code == 2, (r.stderr, repr(r.exception))
        assert_one_error_line(r.stderr, f"--out {out}", "afile is a file, not a directory")
        assert cache_entries(tmp_path) == []
    assert (tmp_path / "afile").read_text() == "keep me"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc, a directory nobody can write in")
def test_out_in_a_directory_nobody_can_write(tmp_path, monkeypatch):
    """Meaningful as root too: root ignores permission bits, but not a filesystem that refuses new files."""
    monkeypatch.chdir(tmp_path)
    r = invoke(["run", *G, "--student", "ddim:1", "--out", "/proc/odebench-runs"])
    assert r.exit_code == 2, (r.stderr, repr(r.exception))
    assert_one_error_line(r.stderr, "--out /proc/odebench-runs", "cannot write in /proc")
    assert cache_entries(tmp_path) == []
    r = invoke(["train", "cm", "--steps", "2", "--batch-size", "4", "--out", "/proc/odebench-student"])
    assert r.exit_code == 2
    assert_error_line(r.stderr, "error: --out /proc/odebench-student: cannot write in /proc")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits (the /proc test covers root)")
def test_out_in_a_read_only_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = invoke(["run", *G, "--student", "ddim:1", "--out", "ro/runs"])
        assert r.exit_code == 2
        assert_one_error_line(r.stderr, "--out ro/runs", "cannot write in ro")
        assert cache_entries(tmp_path) == []
    finally:
        ro.chmod(0o755)


def test_cache_dir_that_is_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    r = invoke(["run", *G, "--student", "ddim:1", "--cache-dir", "afile", "--out", "out"])
    assert_refused_before_work(r, tmp_path, tmp_path / "out", "trajectory cache afile", "--no-cache")
    r = invoke(["run", *G, "--student", "ddim:1", "--cache-dir", "afile", "--no-cache", "--out", "out"])
    assert r.exit_code == 0, r.stderr  # --no-cache never touches it


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc, a directory nobody can write in")
def test_read_only_cache_is_read_not_written(tmp_path, monkeypatch):
    """A cache directory this process cannot write in: one warning line, the run goes on (a shared
    read-only cache still serves its entries), nothing is stored."""
    monkeypatch.chdir(tmp_path)
    r = invoke(["run", *G, "--student", "ddim:1", "--cache-dir", "/proc/odebench-cache", "--out", "out"])
    assert r.exit_code == 0, (r.stderr, repr(r.exception))
    warn = [line for line in r.stderr.splitlines() if line.startswith("warning: trajectory cache /proc/odebench-cache")]
    assert len(warn) == 1 and "is read-only" in warn[0] and "new ones are not stored" in warn[0], r.stderr
    assert (tmp_path / "out" / "ddim-1" / "result.json").is_file()


def test_train_out_that_is_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    r = invoke(["train", "cm", "--steps", "2", "--batch-size", "4", "--out", "afile"])
    assert r.exit_code == 2, (r.stderr, repr(r.exception))
    assert_error_line(r.stderr, "error: --out afile: afile is a file, not a directory")


def test_report_out_checked_before_the_analysis(tmp_path, monkeypatch, one_run):
    import odebench.report.model as model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "a").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "result.json").write_text(json.dumps(one_run))
    (tmp_path / "afile").write_text("")
    (tmp_path / "adir").mkdir()

    def no_analysis(*a, **k):
        raise AssertionError("the analysis ran before --out was checked")

    monkeypatch.setattr(model, "build_report", no_analysis)
    for out, needle in (("afile/r.md", "afile is a file, not a directory"), ("adir", "adir is a directory")):
        r = invoke(["report", "--runs-dir", "runs", "--format", "md", "--out", out])
        assert r.exit_code == 2, (r.stderr, repr(r.exception))
        assert_one_error_line(r.stderr, needle)


# ------------------------------------------------------------------------------------------------
# the reference solver: options range-checked at parse time, give-ups in one line that says what to change
# ------------------------------------------------------------------------------------------------
OPTION_CASES = [
    ("max_num_steps=0", "max_num_steps must be an integer >= 1, got 0"),
    ("max_num_steps=2.5", "max_num_steps must be an integer >= 1, got 2.5"),  # torchdiffeq would use 2
    ("first_step=-1", "first_step must be a number > 0, got -1"),
    ("first_step=nan", "first_step must be a number > 0, got nan"),
    ("safety=2", "safety must be a number in (0, 1], got 2"),  # torchdiffeq loops forever
    ("safety=0", "safety must be a number in (0, 1], got 0"),
    ("ifactor=0.5", "ifactor must be a number >= 1, got 0.5"),
    ("dfactor=0", "dfactor must be a number in (0, 1], got 0"),
    ("dfactor=1.5", "dfactor must be a number in (0, 1], got 1.5"),
    ("min_step=-1", "min_step must be a number >= 0, got -1"),
    ("max_step=0", "max_step must be a number > 0, got 0"),
    ("max_step=inf", "max_step must be a number > 0, got inf"),
]


@pytest.mark.parametrize("option, message", OPTION_CASES, ids=[c[0] for c in OPTION_CASES])
def test_solver_option_ranges(tmp_path, monkeypatch, option, message):
    from odebench.ode.spec import SolverSpec, parse_solver_options

    k, v = option.split("=")
    with pytest.raises(OdebenchError, match=re_escape(f"solver option {message}")):
        parse_solver_options([option])
    with pytest.raises(OdebenchError, match=re_escape(f"solver option {message}")):  # also a spec built in code
        SolverSpec(options=((k, float(v)),))
    monkeypatch.chdir(tmp_path)
    r = invoke(["run", *G, "--student", "ddim:1", "--solver-option", option, "--out", "out"])
    assert_refused_before_work(r, tmp_path, tmp_path / "out", message)


def re_escape(s: str) -> str:
    import re

    return re.escape(s)


def test_solver_options_in_range_pass_through():
    from odebench.ode.spec import SolverSpec

    spec = SolverSpec(options=(("max_num_steps", 50.0), ("safety", 1.0), ("dfactor", 1.0), ("ifactor", 1.0),
                               ("min_step", 0.0), ("max_step", 0.5), ("first_step", 1e-3)))
    assert spec.torchdiffeq_options()["max_num_steps"] == 50 and isinstance(spec.torchdiffeq_options()["max_num_steps"], int)
    with pytest.raises(OdebenchError, match="min_step .* exceeds max_step"):
        SolverSpec(options=(("min_step", 1.0), ("max_step", 0.5)))


def test_max_num_steps_exceeded_is_one_line_that_says_what_to_change(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = invoke(["run", *G, "--student", "ddim:1", "--solver-option", "max_num_steps=3", "--out", "out"])
    assert r.exit_code == 2, (r.stderr, repr(r.exception))
    line = assert_error_line(r.stderr, f"reference solver ({DEFAULT_METHOD}", "gave up after max_num_steps=3 steps at sigma=",
                                 "raise --solver-option max_num_steps or loosen --rtol/--atol")
    sigma = float(line.split("at sigma=")[1].split(";")[0])
    assert 0.002 < sigma < 80.0  # somewhere on the way down from sigma_max
    assert_nothing_written(tmp_path / "out")


def test_step_size_underflow_is_one_line(tmp_path, monkeypatch):
    """first_step=1e-300 is a valid positive number, but log(80) + 1e-300 == log(80): torchdiffeq's
    'underflow in dt' at the very first step."""
    monkeypatch.chdir(tmp_path)
    r = invoke(["run", *G, "--student", "ddim:1", "--solver-option", "first_step=1e-300", "--out", "out"])
    assert r.exit_code == 2, (r.stderr, repr(r.exception))
    assert_error_line(r.stderr, "step size underflowed to zero at sigma=80", "first_step", "loosen --rtol/--atol")
    assert_nothing_written(tmp_path / "out")


def test_non_finite_teacher_state_is_one_line(monkeypatch):
    """A teacher whose denoiser returns nan below some sigma: torchdiffeq rejects every step (nan error
    estimate) until 'underflow in dt'; the line says the teacher is at fault, and where."""
    from odebench.ode.reference import solve_reference
    from odebench.ode.spec import SolverSpec
    from odebench.teachers import load_teacher

    teacher = load_teacher("gmm")
    real = teacher._denoise

    def broken(x, sigma, cond):  # fine above sigma = 1, nan below
        out = real(x, sigma, cond)
        return torch.where(sigma.reshape(-1, 1) < 1.0, torch.full_like(out, float("nan")), out)

    monkeypatch.setattr(teacher, "_denoise", broken)
    x = torch.randn(4, 2, dtype=torch.float64) * 80
    with pytest.raises(OdebenchError) as e:
        solve_reference(teacher, x, None, SolverSpec(dtype="float64"))
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 300 and "the teacher's denoiser returned inf/nan at sigma=" in msg, msg
    assert float(msg.split("at sigma=")[1].split(";")[0]) < 1.0


# ------------------------------------------------------------------------------------------------
# non-finite values: null plus a flag, never a crash, never silently averaged
# ------------------------------------------------------------------------------------------------
def test_finite_result_nulls_every_non_finite_number():
    from odebench.results import finite_result

    res = {"metrics": {"m": {"value": float("nan"), "stderr": float("inf")}}, "curves": {"c": {"ode_mse": [1.0, float("-inf")]}},
           "extras": {"e": {"value": float("nan"), "n": 3}}, "reference": {"floor": {"ode_mse": float("inf")}},
           "flags": ["at-reference-floor: x"], "ok": 1.5}
    clean = finite_result(res)
    assert clean["metrics"]["m"] == {"value": None, "stderr": None}
    assert clean["curves"]["c"]["ode_mse"] == [1.0, None]
    assert clean["extras"]["e"] == {"value": None, "n": 3} and clean["reference"]["floor"]["ode_mse"] is None
    assert clean["ok"] == 1.5 and clean["flags"][0] == "at-reference-floor: x"
    flag = clean["flags"][1]
    assert flag.startswith("non-finite-values: 5 number(s) were inf/nan and are null (")
    for key in ("metrics.m.value", "metrics.m.stderr", "curves.c.ode_mse[1]", "extras.e.value", "reference.floor.ode_mse"):
        assert key in flag
    assert finite_result(clean) == clean  # idempotent: no second flag
    json.dumps(clean, allow_nan=False)


def test_write_run_never_crashes_on_inf(tmp_path):
    from odebench.results import write_run

    res = {"schema": "x", "metrics": {}, "curves": {"ode_mse_vs_sigma": {"ode_mse": [float("inf")]}}, "flags": []}
    path = write_run(tmp_path / "runs", "r", res, {"t": torch.zeros(2)})
    data = json.loads((path / "result.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert data["curves"]["ode_mse_vs_sigma"]["ode_mse"] == [None]
    assert data["flags"][0].startswith("non-finite-values: 1 number(s)")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["r"]  # no temp leftovers


def test_non_finite_count():
    from odebench.bench import _non_finite

    x = torch.zeros(8, 3)
    x[1, 2] = float("nan")
    x[5, 0] = float("inf")
    x[6] = float("-inf")
    assert _non_finite(x) == 3 and _non_finite(torch.zeros(4, 1, 2, 2)) == 0


def _nan_student(stem: Path) -> Path:
    """A diverged training run: a real exported student whose weights are all nan."""
    from odebench.students.consistency import export_mlp_student
    from odebench.students.mlp import MLPConsistency
    from odebench.teachers import load_teacher

    teacher = load_teacher("gmm")
    model = MLPConsistency(dim=2, sigma_data=teacher.sigma_data, sigma_min=teacher.sigma_min, hidden=16, depth=2,
                           emb_dim=8, num_classes=teacher.num_classes)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    return Path(export_mlp_student(stem, model, teacher, conditional=False, steps=2))


def test_nan_student_is_reported_null_and_flagged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    side = _nan_student(tmp_path / "ckpt" / "diverged")
    r = invoke(["run", "--student", side, "--student", "ddim:2", "--samples", "16", "--curve-points", "3",
                "--curve-samples", "8", "--floor-samples", "4", "--out", "runs"])
    assert r.exit_code == 0, (r.stderr, repr(r.exception))
    res = json.loads((tmp_path / "runs" / "diverged" / "result.json").read_text())  # strict JSON: no NaN tokens
    flags = res["flags"]
    assert flags[0] == ("non-finite-student-output: 16/16 samples are inf/nan; their ODE-error metrics are null "
                        "and quality metrics were not computed")
    assert "non-finite-student-output[k=1]: 16/16 samples" in flags[1] and "[k=4]: 16/16" in flags[2]
    m = res["metrics"]
    assert set(m) == {"ode_mse@ref", "ode_rmse@ref", "ode_rel@ref", "ode_mse@ref[k=1]", "ode_mse@ref[k=4]", "ode_mse@ref_curve_mean"}
    assert all(v["value"] is None and v["stderr"] is None for v in m.values()), m  # null, not averaged
    assert res["extras"] == {"quality_skipped": "the student's samples are not all finite"}
    curve = res["curves"]["ode_mse_vs_sigma"]
    assert curve["ode_mse"] == [None] * 3 and len(curve["sigma"]) == 3 and all(math.isfinite(s) for s in curve["sigma"])
    assert flags[-1].startswith("non-finite-values: 6 number(s)") and "curves.ode_mse_vs_sigma.ode_mse[0]" in flags[-1]
    # the other student of the same run is untouched, with its quality metrics
    ok = json.loads((tmp_path / "runs" / "ddim-2" / "result.json").read_text())
    assert ok["flags"] == [] and ok["metrics"]["ode_mse@ref"]["value"] > 0 and "loglik" in ok["metrics"]
    # the report and ls read it back: a null row, not a crash, and not part of the agreement analysis
    r = invoke(["report", "--runs-dir", "runs", "--format", "json"])
    assert r.exit_code == 0, (r.stderr, repr(r.exception))
    rep = json.loads(r.stdout)
    row = next(x for x in rep["rows"] if x["metric"] == "ode_mse@ref")
    assert row["values"][[x["name"] for x in rep["runs"]].index("diverged")]["value"] is None
    assert all("diverged" not in a["runs"] for a in rep["agreement"])
    r = invoke(["report", "--runs-dir", "runs", "--format", "md", "--out", "rep.md"])
    assert r.exit_code == 0, (r.stderr, repr(r.exception))
    r = invoke(["ls", "--runs-dir", "runs"])
    assert r.exit_code == 0 and "diverged" in r.stdout


# ------------------------------------------------------------------------------------------------
# the top-level handler
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def broken_run(monkeypatch):
    import odebench.bench as bench

    def boom(*a, **k):
        raise ValueError("boom\nsecond line")

    monkeypatch.setattr(bench, "run", boom)
    monkeypatch.delenv("ODEBENCH_DEBUG", raising=False)


def test_unexpected_exception_is_one_internal_error_line(broken_run):
    r = invoke(["run", *G])
    assert r.exit_code == 3, (r.exit_code, r.stderr, repr(r.exception))
    assert r.stderr == "internal error: ValueError: boom second line; rerun with --debug for the traceback\n"
    assert r.stdout == ""


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_reraises(broken_run, monkeypatch, how):
    if how == "env":
        monkeypatch.setenv("ODEBENCH_DEBUG", "1")
    r = invoke((["--debug"] if how == "flag" else []) + ["run", *G])
    assert isinstance(r.exception, ValueError) and str(r.exception) == "boom\nsecond line"
    assert "internal error" not in r.stderr


def test_debug_flag_does_not_stick(broken_run):
    invoke(["--debug", "run", *G])
    r = invoke(["run", *G])
    assert r.exit_code == 3 and r.stderr.startswith("internal error: ValueError")


def test_internal_error_printed_by_rank_0_only(broken_run, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    r = invoke(["run", *G])
    assert r.exit_code == 3 and r.stderr == ""
    monkeypatch.setenv("RANK", "0")
    r = invoke(["run", *G])
    assert r.exit_code == 3 and r.stderr.startswith("internal error: ValueError")


def test_keyboard_interrupt_and_input_errors_keep_their_codes(monkeypatch):
    import odebench.bench as bench

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run", interrupted)
    r = invoke(["run", *G])
    assert r.exit_code == 130 and r.stderr.startswith("interrupted:")

    def bad(*a, **k):
        raise OdebenchError("bad input")

    monkeypatch.setattr(bench, "run", bad)
    r = invoke(["run", *G])
    assert r.exit_code == 2 and r.stderr == "error: bad input\n"


# ------------------------------------------------------------------------------------------------
# pickles: one short line, never the advice to unpickle anyway
# ------------------------------------------------------------------------------------------------
class _Code:
    def __reduce__(self):
        return (print, ("unpickled",))


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_pickle_refusal_is_short_and_never_suggests_the_unsafe_option(tmp_path, how):
    from baselines.distill import _load_checkpoint
    from odebench.metrics.aesthetic import load_aesthetic_mlp
    from odebench.students.checkpoint import load_weights

    f = tmp_path / "w.pt"
    if how == "torch.save":
        torch.save({"w": _Code()}, f)
    else:
        f.write_bytes(pickle.dumps({"w": _Code()}))
    for load in (load_weights, load_aesthetic_mlp, _load_checkpoint):
        with pytest.raises(OdebenchError) as e:
            load(f)
        msg = str(e.value)
        assert "refusing to load" in msg and str(f) in msg, msg
        assert "weights_only" not in msg and "\n" not in msg and len(msg) < 200 + len(str(f)), msg


def test_truncated_torch_file_is_unreadable_not_refused(tmp_path):
    from odebench.students.checkpoint import load_weights

    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(3)}, good)
    torn = tmp_path / "torn.pt"
    torn.write_bytes(good.read_bytes()[:40])
    with pytest.raises(OdebenchError, match=r"torn.pt: unreadable student weights file \(.*truncated, or not a torch file\)"):
        load_weights(torn)
    assert load_weights(good)["w"].shape == (3,)


# ------------------------------------------------------------------------------------------------
# the probes that found bugs, as a new user would type them
# ------------------------------------------------------------------------------------------------
def _probe_files(root: Path) -> None:
    side = _export_student(root / "good" / "stu")
    base = json.loads(side.read_text())

    def variant(name, **patch):
        (root / "bad").mkdir(exist_ok=True)
        (root / "bad" / f"{name}.json").write_text(json.dumps({**base, **patch, "weights": "../good/stu.safetensors"}))

    variant("teacher_str", teacher="gmm")
    variant("steps0", sampler={**base["sampler"], "steps": 0})
    variant("guidance_str", guidance="none")
    (root / "t_big.json").write_text(json.dumps({**TEACHER_JSON, "means": [[1e300, 0], [3, 3]]}))
    (root / "afile").write_text("x")
    (root / "tdir.json").mkdir()
    blob = (root / "good" / "stu.safetensors").read_bytes()[:100]
    (root / "trunc").mkdir()
    (root / "trunc" / "stu.safetensors").write_bytes(blob)
    (root / "trunc" / "stu.json").write_text(json.dumps({**base, "weights_sha256": hashlib.sha256(blob).hexdigest()}))
    (root / "runs_bad" / "r1").mkdir(parents=True)
    (root / "runs_bad" / "r1" / "result.json").write_text(json.dumps({"schema": "odebench.result/1", "metrics": []}))


# (id, argv, needles); before this change each ended in a traceback, a hang, a silent success (a run or a
# trained student made of inf/nan), a multi-line usage panel, or a line that did not name the file or key
PROBES = [
    ("solver-max-num-steps-3", ["run", *G, "--solver-option", "max_num_steps=3"], ["gave up after max_num_steps=3"]),
    ("solver-max-num-steps-2.5", ["run", *G, "--solver-option", "max_num_steps=2.5"], ["integer >= 1"]),
    ("solver-first-step-negative", ["run", *G, "--solver-option", "first_step=-1"], ["first_step must be a number > 0"]),
    ("solver-safety-2-hung", ["run", *G, "--solver-option", "safety=2"], ["safety must be a number in (0, 1]"]),
    ("solver-ifactor-half", ["run", *G, "--solver-option", "ifactor=0.5"], ["ifactor"]),
    ("solver-min-step-negative", ["run", *G, "--solver-option", "min_step=-1"], ["min_step"]),
    ("solver-max-step-zero", ["run", *G, "--solver-option", "max_step=0"], ["max_step"]),
    ("out-is-a-file", ["run", *G, "--out", "afile"], ["--out afile: afile is a file"]),
    ("out-under-a-file", ["run", *G, "--out", "afile/sub"], ["--out afile/sub: afile is a file"]),
    ("cache-dir-is-a-file", ["run", *G, "--cache-dir", "afile"], ["trajectory cache afile"]),
    ("teacher-mean-1e300", ["run", *QUICK, "--teacher", "t_big.json"], ['"means[0][0]"']),
    ("teacher-is-a-directory", ["run", *QUICK, "--teacher", "tdir.json"], ["tdir.json is a directory"]),
    ("sidecar-teacher-string", ["run", *QUICK, "--student", "bad/teacher_str.json"], ['"teacher" must be an object']),
    ("sidecar-steps-0", ["run", *QUICK, "--student", "bad/steps0.json"], ['"sampler.steps"']),
    ("sidecar-guidance-string", ["run", *QUICK, "--student", "bad/guidance_str.json"], ['"guidance" must be an object']),
    ("fd-bootstrap-negative", ["run", *G, "--fd-bootstrap", "-1"], ["--fd-bootstrap must be a non-negative integer"]),
    ("samples-not-a-number", ["run", *G, "--samples", "many"], ["'--samples'", "valid integer"]),
    ("unknown-option", ["run", *G, "--bogus"], ["No such option: --bogus"]),
    ("train-out-is-a-file", ["train", "cm", "--steps", "2", "--batch-size", "4", "--out", "afile"], ["--out afile: afile is a file"]),
    ("train-teacher-mean-1e300", ["train", "cm", "--steps", "2", "--teacher", "t_big.json", "--out", "tr"], ['"means[0][0]"']),
    ("report-malformed-result", ["report", "--runs-dir", "runs_bad"], ['result.json: "teacher" is missing']),
    ("report-out-under-a-file", ["report", "--runs-dir", "runs_bad", "-f", "md", "--out", "afile/r.md"], ["afile is a file"]),
    ("cache-ls-on-a-file", ["cache", "ls", "--cache-dir", "afile"], ["trajectory cache afile: afile is a file"]),
    ("cache-clear-on-a-file", ["cache", "clear", "--yes", "--cache-dir", "afile"], ["trajectory cache afile: afile is a file"]),
]
SUBPROCESS = {"solver-max-num-steps-3", "sidecar-teacher-string", "samples-not-a-number", "out-is-a-file"}


def _main_exit(args) -> tuple[int, str]:
    """`odebench.cli.main` in-process (it, not the typer app, turns click usage errors into one line)."""
    import contextlib
    import io

    from odebench.cli import main

    err = io.StringIO()
    old = sys.argv
    sys.argv = ["odebench", *map(str, args)]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                main()
                code = 0
            except SystemExit as e:
                code = e.code
    finally:
        sys.argv = old
    return code, err.getvalue()


@pytest.mark.parametrize("pid, args, needles", PROBES, ids=[p[0] for p in PROBES])
def test_probe(tmp_path, monkeypatch, pid, args, needles):
    monkeypatch.chdir(tmp_path)
    _probe_files(tmp_path)
    if pid in SUBPROCESS:
        proc = odebench_subprocess(args, tmp_path, tmp_path / "cache")
        code, stderr = proc.returncode, proc.stderr
    else:
        code, stderr = _main_exit(args)
    assert code == 2, (code, stderr)
    assert_error_line(stderr, *needles)
    assert cache_entries(tmp_path) == [] or pid == "solver-max-num-steps-3"  # input errors: nothing solved
    assert not (tmp_path / "runs").exists() and not (tmp_path / "tr" / "student.json").exists()
