"""The trajectory cache: warm reruns, corruption, key sensitivity, interrupted solves, CLI housekeeping."""
from __future__ import annotations

import json
import struct
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import odebench.ode.trajectories as trajectories
from odebench.bench import RunConfig, run
from odebench.cli import app
from odebench.ode.cache import TrajectoryCache
from odebench.ode.spec import DEFAULT_METHOD, DEFAULT_RTOL, SolverSpec
from odebench.teachers.base import Guidance

SAMPLES, CHUNK = 64, 32  # two reference chunks
REAL_SOLVE = trajectories.solve_reference


pytestmark = pytest.mark.usefixtures("one_torch_thread", "wide_console")


def config(tmp_path: Path, cache: Path, **kw) -> RunConfig:
    base = dict(teacher="gmm", students=("ddim:2",), samples=SAMPLES, seed=0, curve_points=2, curve_samples=8,
                floor_samples=0, out=tmp_path / "runs", cache_dir=cache, solver=SolverSpec(batch=CHUNK))
    base.update(kw)
    return RunConfig(**base)


def ref_nfe(outcome) -> dict:
    return outcome.result["nfe"]["reference"]


def numbers(outcomes) -> dict:
    """Everything a run measured: metric values/stderrs, the curve, the floor, per-sample tensors."""
    out = {}
    for o in outcomes:
        r = o.result
        out[o.name] = {
            "metrics": {k: (v["value"], v["stderr"]) for k, v in r["metrics"].items()},
            "curves": r["curves"],
            "floor": r["reference"]["floor"],
            "ref_nfe_per_sample": r["nfe"]["reference"]["per_sample"],
            "tensors": {k: v.numpy().tobytes() for k, v in load_file(str(o.path / "per_sample.safetensors")).items()},
        }
    return out


def entries(cache: Path) -> list[Path]:
    return sorted((cache / "trajectories").glob("*/*.safetensors"))


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


# ------------------------------------------------------------------------------------------------
def test_warm_rerun_costs_zero_teacher_evaluations(tmp_path, private_cache):
    cfg = config(tmp_path, private_cache, students=("ddim:2", "ref"), floor_samples=8)
    cold = run(cfg)
    c = ref_nfe(cold[0])
    assert c["teacher_evals_this_run"] > 0 and c["teacher_passes_this_run"] >= c["teacher_evals_this_run"]
    assert (c["cache_hits"], c["cache_misses"], c["cache_corrupt"]) == (0, 2, 0)
    # two chunk entries for the reference, one for the 8-sample floor solve (float64 analytic: no
    # precision part), one for ddim:2's samples (one batch) and two for its curve (two sigmas)
    assert len(entries(private_cache)) == 6
    assert cold[0].result["nfe"]["student_teacher_passes"] > 0

    warm = run(cfg)
    w = ref_nfe(warm[0])
    assert w["teacher_evals_this_run"] == 0 and w["teacher_passes_this_run"] == 0
    assert (w["cache_hits"], w["cache_misses"], w["cache_corrupt"]) == (2, 0, 0)
    # the cached step statistics are reported, not zeros
    assert w["per_sample"] == c["per_sample"] > 0 and w["accepted_steps"] == c["accepted_steps"] > 0
    assert len(entries(private_cache)) == 6
    assert warm[0].result["nfe"]["student_teacher_passes"] == 0  # the solver row is memoized too
    # bitwise the same numbers: metrics, curves, floor and the stored samples
    assert numbers(warm) == numbers(cold)
    ref_samples = load_file(str(warm[1].path / "per_sample.safetensors"))["samples"]
    assert ref_samples.shape == (SAMPLES, 2) and torch.isfinite(ref_samples).all()


def test_reference_set_is_bitwise_identical_from_cache(private_cache):
    from odebench.conditions import Conditions
    from odebench.ode.noise import NoiseBank
    from odebench.teachers import load_teacher

    teacher = load_teacher("gmm")
    spec = SolverSpec(batch=CHUNK)
    sig = torch.tensor([5.0, 0.5], dtype=torch.float64)

    def solve(cache):
        return trajectories.reference_set(teacher, spec, NoiseBank(3, teacher.shape), Conditions(None), 40, cache, sig)

    a = solve(TrajectoryCache(private_cache))
    b = solve(TrajectoryCache(private_cache))
    fresh = solve(TrajectoryCache(private_cache, enabled=False))
    assert a.teacher_nfe > 0 and b.teacher_nfe == 0 and b.cache_hits == 2 and fresh.teacher_nfe == a.teacher_nfe
    assert a.chunks == b.chunks == [(0, 32), (32, 40)]
    for other in (b, fresh):
        assert other.x0.dtype == torch.float64 and other.x0.shape == (40, 2)
        assert other.traj.shape[0] == 2 and other.traj.shape[2:] == (2,) and other.traj.shape[1] >= 8
        assert torch.equal(a.x0, other.x0) and torch.equal(a.traj, other.traj)
        assert other.nfe_per_sample == a.nfe_per_sample


# ------------------------------------------------------------------------------------------------
def _data_region(path: Path) -> tuple[int, int]:
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    return 8 + header_len, len(raw)


def corrupt(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    lo, hi = _data_region(path)
    if how == "flip-data":  # tensor bytes: only the checksum can notice
        mid = (lo + hi) // 2
        for i in range(mid, mid + 8):
            raw[i] ^= 0xFF
    elif how == "flip-header":
        mid = lo // 2
        for i in range(mid, mid + 8):
            raw[i] ^= 0xFF
    elif how == "truncate":
        raw = raw[: (lo + hi) // 2]
    else:
        raise ValueError(how)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("how", ["flip-data", "flip-header", "truncate"])
def test_corrupt_entry_is_detected_and_recomputed(tmp_path, private_cache, how):
    cfg = config(tmp_path, private_cache, students=("ref",))  # the reference's two chunks, no solver-row entries
    first = run(cfg)
    cold_evals = ref_nfe(first[0])["teacher_evals_this_run"]
    expected = numbers(first)
    files = entries(private_cache)
    assert len(files) == 2
    victim = files[1]
    before = victim.read_bytes()
    corrupt(victim, how)
    assert victim.read_bytes() != before

    again = run(cfg)
    r = ref_nfe(again[0])
    assert r["cache_corrupt"] == 1 and r["cache_hits"] == 1 and r["cache_misses"] == 1
    # exactly one chunk was re-solved: more than zero, less than the cold run's two chunks
    assert 0 < r["teacher_evals_this_run"] < cold_evals
    assert numbers(again) == expected
    # the entry was replaced by a good one; a third run is fully warm
    assert all(e.ok for e in TrajectoryCache(private_cache).entries(verify=True))
    assert ref_nfe(run(cfg)[0])["teacher_evals_this_run"] == 0


def test_cache_verify_cli(tmp_path, private_cache):
    run(config(tmp_path, private_cache, students=("ref",)))  # the reference's two chunks, no solver-row entries
    files = entries(private_cache)
    assert len(files) == 2
    r = cli("cache", "verify", "--cache-dir", private_cache)
    assert r.exit_code == 0, r.output
    assert "2 ok, 0 corrupt" in r.stdout and "corrupt:" not in r.stdout

    corrupt(files[0], "flip-data")
    r = cli("cache", "verify", "--cache-dir", private_cache)
    assert r.exit_code == 1, r.output
    assert f"corrupt: {files[0]} (checksum mismatch)" in r.stdout
    assert str(files[1]) not in r.stdout
    assert "1 ok, 1 corrupt" in r.stdout
    assert files[0].exists()  # verify alone deletes nothing

    corrupt(files[1], "truncate")
    r = cli("cache", "verify", "--cache-dir", private_cache, "--fix")
    assert r.exit_code == 0, r.output
    assert str(files[0]) in r.stdout and str(files[1]) in r.stdout and "0 ok, 2 corrupt (deleted)" in r.stdout
    assert not files[0].exists() and not files[1].exists()
    r = cli("cache", "verify", "--cache-dir", private_cache)
    assert r.exit_code == 0 and "0 ok, 0 corrupt" in r.stdout


# ------------------------------------------------------------------------------------------------
def _teacher_variant() -> dict:
    from odebench.teachers.gmm import preset_spec

    spec = preset_spec("gmm")
    spec["stds"] = [0.25] * len(spec["stds"])
    return spec


KEY_CHANGES = [
    pytest.param(dict(seed=1), True, id="seed"),
    pytest.param(dict(solver=SolverSpec(batch=CHUNK, rtol=DEFAULT_RTOL / 3)), True, id="rtol"),
    pytest.param(dict(solver=SolverSpec(batch=CHUNK, atol=DEFAULT_RTOL / 3)), True, id="atol"),
    pytest.param(dict(solver=SolverSpec(batch=CHUNK, method="dopri5")), True, id="method"),
    pytest.param(dict(solver=SolverSpec(batch=CHUNK, time="sigma")), True, id="time-variable"),
    pytest.param(dict(solver=SolverSpec(batch=CHUNK, dtype="float32")), True, id="dtype"),
    pytest.param(dict(solver=SolverSpec(batch=CHUNK, options=(("safety", 0.8),))), True, id="solver-option"),
    pytest.param(dict(solver=SolverSpec(batch=16)), True, id="reference-batch"),
    pytest.param(dict(guidance=Guidance(3.0)), True, id="guidance"),
    # the same ODE named in the other form shares the entries: imagen w=1 is lcm w=0
    pytest.param(dict(guidance=Guidance(0.0, "lcm")), False, id="guidance-same-ode-other-form"),
    pytest.param(dict(conditional=False), True, id="conditioning"),
    pytest.param(dict(teacher=_teacher_variant()), True, id="teacher"),
    # curve states are stored with (at least) the first chunk, so that chunk must miss
    pytest.param(dict(curve_points=3), "some", id="curve-sigmas"),
    pytest.param(dict(batch_size=7), False, id="student-batch-size"),
    pytest.param(dict(students=("euler:3", "heun:2")), False, id="students"),
    pytest.param(dict(curve_samples=4, floor_samples=2), False, id="curve-and-floor-samples"),
]


@pytest.mark.parametrize("change, misses", KEY_CHANGES)
def test_cache_key_covers_what_the_numbers_depend_on(tmp_path, private_cache, change, misses):
    # class-conditional base (w=1), so that guidance can change without changing the conditioning
    base = config(tmp_path, private_cache, conditional=True, guidance=Guidance(1.0))
    first = ref_nfe(run(base)[0])
    assert first["teacher_evals_this_run"] > 0 and first["cache_misses"] == 2
    r = ref_nfe(run(replace(base, **change))[0])
    if misses == "some":
        assert r["cache_hits"] < 2 and r["cache_misses"] >= 1 and r["teacher_evals_this_run"] > 0
    elif misses:
        assert r["cache_hits"] == 0 and r["cache_misses"] >= 2 and r["teacher_evals_this_run"] > 0
    else:
        assert r["cache_hits"] == 2 and r["cache_misses"] == 0 and r["teacher_evals_this_run"] == 0


SOLVER_KEY_CHANGES = [
    pytest.param(dict(seed=1), id="seed"),
    pytest.param(dict(guidance=Guidance(3.0)), id="guidance"),
    pytest.param(dict(conditional=False), id="conditioning"),
    pytest.param(dict(teacher=_teacher_variant()), id="teacher"),
    pytest.param(dict(students=("ddim:3",)), id="steps"),
    pytest.param(dict(students=("euler:2",)), id="same-scheme-other-name"),
    pytest.param(dict(students=("heun:2",)), id="method"),
]


@pytest.mark.parametrize("change", SOLVER_KEY_CHANGES)
def test_solver_row_memo_key_covers_what_its_samples_depend_on(tmp_path, private_cache, change):
    """A solver row's samples and curve are cached only under everything they depend on: the teacher's
    ODE identity, the scheme and steps, the input states (noise, seed) and the conditions."""
    base = config(tmp_path, private_cache, conditional=True, guidance=Guidance(1.0), students=("ddim:2",))
    run(base)
    again = run(replace(base, **change))[0].result["nfe"]["student_teacher_passes"]
    # euler:K is ddim:K's scheme: the same numbers, rightly shared
    assert (again == 0) == (change.get("students") == ("euler:2",))


def test_solver_row_memo_is_bitwise_the_fresh_computation(tmp_path, private_cache, monkeypatch):
    from odebench.students import solvers

    cfg = config(tmp_path, private_cache, students=("heun:2",))
    cold, warm = numbers(run(cfg)), numbers(run(cfg))
    fresh = numbers(run(replace(cfg, use_cache=False)))
    assert cold == warm == fresh
    # a change to the solvers' numerics (SOLVER_NUMERICS bumped) is a new key, never a stale hit
    monkeypatch.setattr(solvers, "SOLVER_NUMERICS", solvers.SOLVER_NUMERICS + 1)
    assert run(cfg)[0].result["nfe"]["student_teacher_passes"] > 0


def test_student_batch_size_does_not_change_numbers(tmp_path, private_cache):
    a = run(config(tmp_path, private_cache, out=tmp_path / "a", students=("ddim:2", "heun:3"), batch_size=256))
    b = run(config(tmp_path, private_cache, out=tmp_path / "b", students=("ddim:2", "heun:3"), batch_size=5))
    assert ref_nfe(b[0])["teacher_evals_this_run"] == 0
    assert numbers(a) == numbers(b)


def test_more_samples_reuse_the_finished_chunks(tmp_path, private_cache):
    run(config(tmp_path, private_cache))
    r = ref_nfe(run(config(tmp_path, private_cache, samples=SAMPLES + 10))[0])
    assert (r["cache_hits"], r["cache_misses"]) == (2, 1)
    assert r["teacher_evals_this_run"] > 0
    r = ref_nfe(run(config(tmp_path, private_cache, samples=CHUNK))[0])
    assert (r["cache_hits"], r["cache_misses"], r["teacher_evals_this_run"]) == (1, 0, 0)


# ------------------------------------------------------------------------------------------------
class InterruptOnCall:
    """Wraps solve_reference; raises KeyboardInterrupt on call number `on` (1-based)."""

    def __init__(self, on: int | None) -> None:
        self.on, self.calls = on, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.on:
            raise KeyboardInterrupt
        return REAL_SOLVE(*args, **kwargs)


def test_interrupted_reference_resumes_from_finished_chunks(tmp_path, private_cache, monkeypatch):
    cold_cache = tmp_path / "cold-cache"
    cold = run(config(tmp_path, cold_cache, out=tmp_path / "cold-runs"))
    cold_evals = ref_nfe(cold[0])["teacher_evals_this_run"]
    assert ref_nfe(cold[0])["cache_misses"] == 2

    interrupt = InterruptOnCall(2)
    monkeypatch.setattr(trajectories, "solve_reference", interrupt)
    cfg = config(tmp_path, private_cache)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    assert interrupt.calls == 2
    out = tmp_path / "runs"
    assert not out.exists() or list(out.iterdir()) == []  # no result directory, no temp leftovers
    # the first chunk was stored, intact; no temp file was left in the cache
    cached = TrajectoryCache(private_cache).entries(verify=True)
    assert len(cached) == 1 and cached[0].ok
    assert (cached[0].payload["start"], cached[0].payload["stop"]) == (0, CHUNK)
    assert [p.name for p in (private_cache / "trajectories").rglob(".*")] == []

    counting = InterruptOnCall(None)
    monkeypatch.setattr(trajectories, "solve_reference", counting)
    resumed = run(cfg)
    r = ref_nfe(resumed[0])
    assert counting.calls == 1  # only the missing chunk was solved
    assert (r["cache_hits"], r["cache_misses"]) == (1, 1)
    assert 0 < r["teacher_evals_this_run"] < cold_evals
    assert numbers(resumed) == numbers(cold)


def test_interrupted_cli_run_exits_130_and_resumes(tmp_path, private_cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["run", "--student", "ddim:2", "--samples", "64", "--ref-batch", "32", "--curve-points", "0",
            "--floor-samples", "0", "--cache-dir", private_cache]
    monkeypatch.setattr(trajectories, "solve_reference", InterruptOnCall(2))
    r = cli(*args)
    assert r.exit_code == 130
    assert r.stderr.strip().splitlines()[-1].startswith("interrupted:") and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []
    # the first reference chunk (beside it: the drift-precision probe of the float32 digits network)
    kinds = [e.payload["kind"] for e in TrajectoryCache(private_cache).entries()]
    assert sorted(kinds) == ["drift-precision", "reference"]

    counting = InterruptOnCall(None)
    monkeypatch.setattr(trajectories, "solve_reference", counting)
    r = cli(*args)
    assert r.exit_code == 0, r.stderr
    assert counting.calls == 1
    res = json.loads((tmp_path / "runs" / "ddim-2" / "result.json").read_text())
    assert res["nfe"]["reference"]["cache_hits"] == 1 and res["nfe"]["reference"]["cache_misses"] == 1
    assert "(cache 1 hit / 1 miss)" in r.stdout


# ------------------------------------------------------------------------------------------------
def test_cache_ls_and_clear_cli(tmp_path, private_cache):
    other = tmp_path / "unrelated-cache"  # --cache-dir wins over $ODEBENCH_CACHE
    run(config(tmp_path, other, students=("ref",)))  # the reference's two chunks, no solver-row entries
    assert len(entries(other)) == 2 and entries(private_cache) == []

    r = cli("cache", "ls", "--cache-dir", other)
    assert r.exit_code == 0, r.output
    assert "2 entries" in r.stdout
    keys = [p.stem[:12] for p in entries(other)]
    for k in keys:
        assert k in r.stdout
    assert "0..32" in r.stdout and "32..64" in r.stdout and f"{DEFAULT_METHOD} rtol={DEFAULT_RTOL:g}" in r.stdout
    assert sum(" gmm " in line for line in r.stdout.splitlines()) == 2

    r = cli("cache", "ls")  # the default: $ODEBENCH_CACHE, the empty private cache
    assert r.exit_code == 0 and "0 entries" in r.stdout

    r = CliRunner().invoke(app, ["cache", "clear", "--cache-dir", str(other)], input="n\n")
    assert r.exit_code == 1 and len(entries(other)) == 2  # declined: nothing removed

    r = cli("cache", "clear", "--cache-dir", other, "--yes")
    assert r.exit_code == 0, r.output
    assert "removed 2 entries" in r.stdout
    assert entries(other) == []
    r = cli("cache", "ls", "--cache-dir", other)
    assert r.exit_code == 0 and "0 entries" in r.stdout
    # and the next run is cold again
    assert ref_nfe(run(config(tmp_path, other))[0])["cache_misses"] == 2
    # a solver row's memoized samples and curve points are listed by what they are
    r = cli("cache", "ls", "--cache-dir", other)
    assert sum("solver-student euler:2" in line for line in r.stdout.splitlines()) == 3
