"""`odebench regress`: recompute a fixed, small, deterministic benchmark and compare every metric with a
committed baseline, within per-metric tolerances that were chosen from measured run-to-run spread."""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from odebench.errors import OdebenchError

SCHEMA = "odebench.baseline/1"
# How tolerances come from the spread measured by `--update` (the same suite recomputed under other
# thread counts and sampling batch sizes with the cache off, which is all that legitimately changes
# float results on one machine): |now - baseline| <= abs_tol + rel_tol * |baseline|, where
SAFETY = 10.0     # abs_tol = SAFETY * measured spread (max - min over the executions) ...
ABS_FLOOR = 1e-10  # ... but never below this (a spread of exactly 0 still allows round-off in the JSON),
REL_TOL = 1e-4     # and rel_tol covers BLAS / CPU-level float differences between machines of one kind.
# Executions `--update` measures the spread over: (torch threads, student sampling batch, use cache).
VARIANTS = ((None, None, True), (1, 61, False), (2, 100, False))

DEFAULT_SUITES: list[dict[str, Any]] = [
    {"name": "gmm", "config": {"teacher": "gmm", "students": ["ddim:2", "ddim:4", "heun:3", "dpm2:3", "ref"],
                               "samples": 512}},
    {"name": "gmm64-cfg", "config": {"teacher": "gmm64", "students": ["ddim:4", "heun:4", "ref"], "samples": 256,
                                     "conditional": True, "guidance": {"w": 2.0, "form": "imagen"}}},
    {"name": "digits", "config": {"teacher": "digits", "students": ["ddim:2", "ddim:4", "cm", "direct", "ref"],
                                  "samples": 128, "curve_samples": 32, "floor_samples": 32}},
]
CONFIG_KEYS = {"teacher", "students", "samples", "seed", "guidance", "conditional", "solver", "batch_size",
               "curve_points", "curve_samples", "floor_samples", "ksteps"}


def run_config(config: dict[str, Any], out: Path, cache_dir: Path | None, use_cache: bool, name: str,
               batch_size: int | None = None):
    """The RunConfig a suite's JSON config describes."""
    from odebench.bench import RunConfig
    from odebench.ode.spec import SolverSpec
    from odebench.teachers.base import Guidance

    unknown = set(config) - CONFIG_KEYS
    if unknown:
        raise OdebenchError(f"baseline suite config has unknown keys: {', '.join(sorted(unknown))}")
    kw: dict[str, Any] = {k: config[k] for k in ("teacher", "samples", "seed", "conditional", "batch_size",
                                                 "curve_points", "curve_samples", "floor_samples") if k in config}
    kw["students"] = tuple(config.get("students", ()))
    if "ksteps" in config:
        kw["ksteps"] = tuple(config["ksteps"])
    if config.get("guidance") is not None:
        kw["guidance"] = Guidance.from_dict(config["guidance"])
    if config.get("solver") is not None:
        kw["solver"] = SolverSpec.from_dict(config["solver"])
    if batch_size is not None:
        kw["batch_size"] = batch_size
    return RunConfig(**kw, out=out, name=name, cache_dir=cache_dir, use_cache=use_cache)


def observed(result: dict[str, Any]) -> dict[str, float]:
    """The numbers a baseline pins for one run: every scalar metric, NFEs and the reference floor."""
    vals = {k: m["value"] for k, m in result["metrics"].items() if m["value"] is not None}
    vals["nfe.student_per_sample"] = result["nfe"]["student_per_sample"]
    vals["nfe.reference_per_sample"] = result["nfe"]["reference"]["per_sample"]
    floor = result["reference"].get("floor")
    if floor:
        vals["reference.floor"] = floor["ode_mse"]
    return {k: float(v) for k, v in vals.items()}


def identity(result: dict[str, Any]) -> dict[str, Any]:
    """What must match before two runs' numbers may be compared at all."""
    return {"teacher_fingerprint": result["teacher"]["fingerprint"], "guidance": result["teacher"]["guidance"],
            "student": result["student"]["spec"], "samples": result["samples"], "seed": result["seeds"]["seed"],
            "solver": result["reference"]["solver"]}


def compute_suite(suite: dict[str, Any], cache_dir: Path | None = None, threads: int | None = None,
                  batch_size: int | None = None, use_cache: bool = True, progress=None) -> dict[str, dict[str, Any]]:
    """Run one suite in a scratch directory; {run name: {"identity", "values"}}."""
    import torch

    from odebench.bench import run

    before = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        with tempfile.TemporaryDirectory(prefix="odebench-regress-") as tmp:
            cfg = run_config(suite["config"], Path(tmp), cache_dir, use_cache, suite["name"], batch_size)
            outcomes = run(cfg, progress=progress, command=["odebench", "regress", "--suite", suite["name"]])
    finally:
        torch.set_num_threads(before)
    return {o.name: {"identity": identity(o.result), "values": observed(o.result)} for o in outcomes}


def read_suite_runs(suite: dict[str, Any], runs_dir: Path) -> dict[str, dict[str, Any]]:
    """A suite's runs read from existing run directories (named as `compute_suite` names them)."""
    from odebench.results import read_result

    out = {}
    for name in suite["runs"]:
        path = Path(runs_dir) / name
        if not (path / "result.json").is_file():
            raise OdebenchError(f"--runs {runs_dir}: no run {name!r} (make it with: odebench run --name {suite['name']} ...)")
        res = read_result(path)
        out[name] = {"identity": identity(res), "values": observed(res)}
    return out


def tolerances(values: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per-metric baseline entries from several executions of one run: the first execution's value,
    the measured spread (max - min) and the tolerances derived from it."""
    out = {}
    for k, v0 in values[0].items():
        vs = [v[k] for v in values if k in v]
        spread = max(vs) - min(vs)
        out[k] = {"value": v0, "spread": spread, "abs_tol": max(SAFETY * spread, ABS_FLOOR), "rel_tol": REL_TOL}
    return out


def build_baseline(suites: list[dict[str, Any]], cache_dir: Path | None = None, progress=None,
                   log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Measure every suite under VARIANTS and write values with spread-derived tolerances."""
    from odebench.results import environment

    built = []
    for suite in suites:
        runs_by_variant = []
        for threads, batch, use_cache in VARIANTS:
            t0 = time.perf_counter()
            runs_by_variant.append(compute_suite(suite, cache_dir, threads, batch, use_cache, progress))
            log(f"suite {suite['name']}: threads={threads or 'default'} batch={batch or 'default'} "
                f"cache={'on' if use_cache else 'off'}: {time.perf_counter() - t0:.1f} s")
        runs = {}
        for name, first in runs_by_variant[0].items():
            for other in runs_by_variant[1:]:
                if other[name]["identity"] != first["identity"]:
                    raise OdebenchError(f"suite {suite['name']}: run {name} changed identity between executions")
            runs[name] = {"identity": first["identity"],
                          "metrics": tolerances([v[name]["values"] for v in runs_by_variant])}
        built.append({"name": suite["name"], "config": suite["config"], "runs": runs})
    return {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "environment": environment(), "variants": [list(v) for v in VARIANTS],
            "tolerance": f"|now - baseline| <= abs_tol + rel_tol*|baseline|; abs_tol = max({SAFETY:g} x spread over "
                         f"the variants, {ABS_FLOOR:g}); rel_tol = {REL_TOL:g}",
            "suites": built}


def write_baseline(path: Path, data: dict[str, Any]) -> None:
    import json

    from odebench.fileio import atomic_write_bytes

    atomic_write_bytes(Path(path), (json.dumps(data, indent=1, allow_nan=False) + "\n").encode())


def read_baseline(path: Path) -> dict[str, Any]:
    from odebench.fileio import read_json_object

    data = read_json_object(Path(path), "baseline")
    if data.get("schema") != SCHEMA:
        raise OdebenchError(f"{path}: not an odebench baseline (schema {data.get('schema')!r}, expected {SCHEMA})")
    suites = data.get("suites")
    if not isinstance(suites, list) or not all(isinstance(s, dict) and {"name", "config", "runs"} <= set(s) for s in suites):
        raise OdebenchError(f"{path}: malformed baseline (each suite needs name, config and runs)")
    for s in suites:
        for run, entry in s["runs"].items():
            for k, m in entry.get("metrics", {}).items():
                if not all(isinstance(m.get(f), (int, float)) for f in ("value", "abs_tol", "rel_tol")):
                    raise OdebenchError(f"{path}: {s['name']}/{run}/{k} needs numeric value, abs_tol and rel_tol")
    return data


@dataclass
class Check:
    suite: str
    run: str
    metric: str
    baseline: float | None
    now: float | None
    allowed: float | None
    status: str  # ok | moved | REGRESSED | missing | new

    @property
    def failed(self) -> bool:
        return self.status in ("REGRESSED", "missing")


def compare(baseline_suite: dict[str, Any], now: dict[str, dict[str, Any]]) -> list[Check]:
    """Every baseline number against the recomputed one; a run whose identity changed is an error."""
    checks = []
    name = baseline_suite["name"]
    for run, entry in baseline_suite["runs"].items():
        if run not in now:
            checks.append(Check(name, run, "(run)", None, None, None, "missing"))
            continue
        if entry.get("identity") is not None and now[run]["identity"] != entry["identity"]:
            diff = sorted(k for k in entry["identity"] if entry["identity"].get(k) != now[run]["identity"].get(k))
            raise OdebenchError(f"{name}/{run}: not the baseline's configuration (differs in {', '.join(diff)}); "
                                "rerun with --update if the change is deliberate")
        vals = now[run]["values"]
        for k, m in entry["metrics"].items():
            base, tol = m["value"], m["abs_tol"] + m["rel_tol"] * abs(m["value"])
            if k not in vals:
                checks.append(Check(name, run, k, base, None, tol, "missing"))
                continue
            v = vals[k]
            d = abs(v - base)
            status = "ok" if d == 0 else ("moved" if d <= tol else "REGRESSED")
            if not math.isfinite(v):
                status = "REGRESSED"
            checks.append(Check(name, run, k, base, v, tol, status))
        checks += [Check(name, run, k, None, vals[k], None, "new") for k in vals if k not in entry["metrics"]]
    return checks


def select_suites(baseline: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
    suites = baseline["suites"]
    if not names:
        return suites
    have = {s["name"]: s for s in suites}
    missing = [n for n in names if n not in have]
    if missing:
        raise OdebenchError(f"no suite {missing[0]!r} in the baseline (suites: {', '.join(have)})")
    return [have[n] for n in names]
