"""`odebench regress`: recompute a fixed, small, deterministic benchmark and compare every number with a
committed baseline, within tolerances that say what change is *meaningful*.

The tolerance model (written into the baseline file, `tolerance_model`):
- CPU noise is measured, not guessed: `--update` recomputes each suite under VARIANTS, other thread
  counts and sampling batch sizes in this process and, in subprocesses, other instruction sets
  (ATEN_CPU_CAPABILITY switches torch's vectorised kernels, ONEDNN_MAX_CPU_ISA oneDNN's convolutions,
  MKL_ENABLE_INSTRUCTIONS MKL's BLAS). `spread` is max - min over those executions.
- Each number gets a class, and the class a rule:
  statistical  (it has a standard error)  |now - base| <= max(SAFETY x spread, STAT_FRAC x stderr, rel x |base|)
  numeric      (a deterministic function)  |now - base| <= max(SAFETY x spread, rel x |base|)
  exact        (a student's NFE)           equal
  adaptive     (an adaptive solver's NFE)  now/base within a factor max(ADAPTIVE_FACTOR, 1 + SAFETY x spread/|base|)
  chaotic      (the reference floor)       now/base within a factor CHAOTIC_FACTOR
  where rel is REL_FLOOR of the suite's state dtype (float32 pipelines differ between CPUs in the last
  bits of every network pass; float64 analytic ones barely do).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from odebench.errors import OdebenchError

SCHEMA = "odebench.baseline/2"
SAFETY = 10.0  # x the spread measured over the variants: another CPU may deviate more than ours do
STAT_FRAC = 0.1  # a tenth of a standard error is not a meaningful change of a statistical estimate
REL_FLOOR = {"float32": 1e-4, "float64": 1e-9}  # last-bit noise of a pipeline in this state dtype
ABS_FLOOR = 1e-12  # a value of exactly 0 may still round in JSON
ADAPTIVE_FACTOR = 1.1  # one more or fewer rejected step of dopri5 changes the NFE by a few percent
# The floor is a difference of two adaptive solves: their step sequences jump between CPUs, and the
# floor with them (measured 8.3e-7 vs 1.1e-6 between two EPYC machines). A broken solver moves it
# by orders of magnitude; a factor of 4 is a change worth a look.
CHAOTIC_FACTOR = 4.0
CLASSES = ("statistical", "numeric", "exact", "adaptive", "chaotic")


@dataclass(frozen=True)
class Variant:
    """One execution of a suite for `--update`: thread count, sampling batch, cache, CPU environment."""

    name: str
    threads: int | None = None
    batch: int | None = None
    use_cache: bool = False
    env: tuple[tuple[str, str], ...] = ()  # set before torch loads: run in a subprocess

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "threads": self.threads, "batch": self.batch, "cache": self.use_cache,
                "env": dict(self.env)}


VARIANTS = (
    Variant("as-is", use_cache=True),
    Variant("threads=1,batch=61", threads=1, batch=61),
    Variant("threads=2,batch=100", threads=2, batch=100),
    Variant("aten-avx2", env=(("ATEN_CPU_CAPABILITY", "avx2"),)),
    Variant("aten-default", env=(("ATEN_CPU_CAPABILITY", "default"),)),
    Variant("onednn-mkl-avx2", env=(("ONEDNN_MAX_CPU_ISA", "AVX2"), ("MKL_ENABLE_INSTRUCTIONS", "AVX2"))),
    # the oldest instruction sets everywhere at once: the widest deviation this machine can show
    Variant("all-sse4", env=(("ATEN_CPU_CAPABILITY", "default"), ("ONEDNN_MAX_CPU_ISA", "SSE41"),
                             ("MKL_ENABLE_INSTRUCTIONS", "SSE4_2"))),
)

DEFAULT_SUITES: list[dict[str, Any]] = [
    {"name": "gmm", "config": {"teacher": "gmm", "students": ["ddim:2", "ddim:4", "heun:3", "dpm2:3", "ref"],
                               "samples": 512}},
    {"name": "gmm64-cfg", "config": {"teacher": "gmm64", "students": ["ddim:4", "heun:4", "ref"], "samples": 256,
                                     "conditional": True, "guidance": {"w": 2.0, "form": "imagen"}}},
    {"name": "gmm-flow", "config": {"teacher": "gmm-flow", "students": ["flow-euler:4", "flow-heun:3", "ref"],
                                    "samples": 256}},
    {"name": "digits", "config": {"teacher": "digits", "students": ["ddim:2", "ddim:4", "dpmpp2m:4", "cm", "direct", "ref"],
                                  "samples": 128, "curve_samples": 32, "floor_samples": 32}},
]
CONFIG_KEYS = {"teacher", "students", "samples", "seed", "guidance", "conditional", "solver", "batch_size",
               "curve_points", "curve_samples", "floor_samples", "ksteps"}
# how much a run measures: pinned in the baseline when it is recorded, so a later change of a default
# (floor_samples went 24 -> 8) does not silently change what a suite measures
PINNED_KEYS = ("seed", "batch_size", "curve_points", "curve_samples", "floor_samples", "ksteps")


def pinned_config(config: dict[str, Any]) -> dict[str, Any]:
    """A suite config with every PINNED_KEYS entry it leaves out set to today's RunConfig default."""
    from odebench.bench import RunConfig

    defaults = RunConfig()
    out = dict(config)
    for key in PINNED_KEYS:
        if key not in out:
            v = getattr(defaults, key)
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def tolerance_model() -> dict[str, Any]:
    """The rules, as the baseline file states them."""
    return {
        "spread": "max - min over the variants (threads, sampling batch, CPU instruction sets in subprocesses)",
        "statistical": f"|now - base| <= max({SAFETY:g} x spread, {STAT_FRAC:g} x stderr, rel x |base|): numbers with a standard error",
        "numeric": f"|now - base| <= max({SAFETY:g} x spread, rel x |base|): deterministic numbers without a standard error",
        "exact": "now == base: a student's NFE per sample",
        "adaptive": f"max(now/base, base/now) <= max({ADAPTIVE_FACTOR:g}, 1 + {SAFETY:g} x spread/|base|): an adaptive solver's NFE per sample",
        "chaotic": f"max(now/base, base/now) <= {CHAOTIC_FACTOR:g}: the reference floor (a difference of two adaptive solves)",
        "rel": {k: v for k, v in REL_FLOOR.items()},
    }


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


def observed(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The numbers a baseline pins for one run, each {"value", "stderr"}: every scalar metric, NFEs and
    the reference floor."""
    vals = {k: {"value": m["value"], "stderr": m.get("stderr")} for k, m in result["metrics"].items()
            if m["value"] is not None}
    vals["nfe.student_per_sample"] = {"value": result["nfe"]["student_per_sample"], "stderr": None}
    vals["nfe.reference_per_sample"] = {"value": result["nfe"]["reference"]["per_sample"], "stderr": None}
    floor = result["reference"].get("floor")
    if floor:
        vals["reference.floor"] = {"value": floor["ode_mse"], "stderr": floor.get("stderr")}
    # a non-finite number is written as null: left out here, so the baseline reports it as missing
    return {k: {"value": float(v["value"]), "stderr": None if v["stderr"] is None else float(v["stderr"])}
            for k, v in vals.items() if v["value"] is not None}


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


def compute_variant(suite: dict[str, Any], variant: Variant, cache_dir: Path | None = None,
                    progress=None) -> dict[str, dict[str, Any]]:
    """`compute_suite` under one variant; variants with a CPU environment run in a fresh interpreter,
    because torch, oneDNN and MKL read those variables once, when they load."""
    if not variant.env:
        return compute_suite(suite, cache_dir, variant.threads, variant.batch, variant.use_cache, progress)
    with tempfile.TemporaryDirectory(prefix="odebench-regress-variant-") as tmp:
        out = Path(tmp) / "out.json"
        job = {"suite": suite, "threads": variant.threads, "batch": variant.batch, "use_cache": variant.use_cache,
               "cache_dir": None if cache_dir is None else str(cache_dir), "out": str(out)}
        env = {**os.environ, **dict(variant.env)}
        proc = subprocess.run([sys.executable, "-m", "odebench.regress"], input=json.dumps(job), text=True,
                              capture_output=True, env=env)
        if proc.returncode != 0 or not out.is_file():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise OdebenchError(f"suite {suite['name']}, variant {variant.name}: the subprocess failed ({last})")
        return json.loads(out.read_text())


def classify(key: str, stderr: float | None) -> str:
    """The tolerance class of one pinned number (module docstring)."""
    if key == "nfe.student_per_sample":
        return "exact"
    if key == "nfe.reference_per_sample":
        return "adaptive"
    if key.startswith("reference.floor"):
        return "chaotic"
    if stderr is not None and math.isfinite(stderr):
        return "statistical"
    return "numeric"


def tolerance(key: str, executions: list[dict[str, Any]], dtype: str) -> dict[str, Any]:
    """A baseline entry for one number from its value under each variant (the first is the pinned one):
    value, stderr, measured spread, class and the resulting allowance (`allowed` or `factor`)."""
    first = executions[0]
    v, err = first["value"], first["stderr"]
    vs = [e["value"] for e in executions]
    spread = max(vs) - min(vs)
    cls = classify(key, err)
    entry: dict[str, Any] = {"value": v, "stderr": err, "spread": spread, "class": cls}
    rel = REL_FLOOR.get(dtype, REL_FLOOR["float32"]) * abs(v)
    if cls == "exact":
        entry["allowed"] = 0.0
    elif cls == "adaptive":
        entry["factor"] = max(ADAPTIVE_FACTOR, 1 + SAFETY * spread / abs(v)) if v else ADAPTIVE_FACTOR
    elif cls == "chaotic":
        entry["factor"] = CHAOTIC_FACTOR
    elif cls == "statistical":
        entry["allowed"] = max(SAFETY * spread, STAT_FRAC * err, rel, ABS_FLOOR)
    else:
        entry["allowed"] = max(SAFETY * spread, rel, ABS_FLOOR)
    return entry


def suite_dtype(result_identity: dict[str, Any]) -> str:
    return (result_identity.get("solver") or {}).get("dtype") or "float32"


def build_baseline(suites: list[dict[str, Any]], cache_dir: Path | None = None, progress=None,
                   log: Callable[[str], None] = lambda s: None,
                   variants: tuple[Variant, ...] = VARIANTS) -> dict[str, Any]:
    """Measure every suite under `variants` and write values with their tolerances."""
    from odebench.results import environment

    built = []
    for suite in suites:
        by_variant = []
        for variant in variants:
            t0 = time.perf_counter()
            by_variant.append(compute_variant(suite, variant, cache_dir, progress))
            log(f"suite {suite['name']}, variant {variant.name}: {time.perf_counter() - t0:.1f} s")
        runs = {}
        for name, first in by_variant[0].items():
            for variant, other in zip(variants[1:], by_variant[1:]):
                if name not in other or other[name]["identity"] != first["identity"]:
                    raise OdebenchError(f"suite {suite['name']}: run {name} changed identity under variant {variant.name}")
            metrics = {}
            for key in first["values"]:
                executions = [o[name]["values"][key] for o in by_variant if key in o[name]["values"]]
                if len(executions) != len(by_variant):
                    raise OdebenchError(f"suite {suite['name']}: {name}/{key} is missing under some variants")
                metrics[key] = tolerance(key, executions, suite_dtype(first["identity"]))
            runs[name] = {"identity": first["identity"], "metrics": metrics}
        built.append({"name": suite["name"], "config": pinned_config(suite["config"]), "runs": runs})
    return {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "environment": environment(), "variants": [v.to_dict() for v in variants],
            "tolerance_model": tolerance_model(), "suites": built}


def write_baseline(path: Path, data: dict[str, Any]) -> None:
    from odebench.fileio import atomic_write_bytes

    atomic_write_bytes(Path(path), (json.dumps(data, indent=1, allow_nan=False) + "\n").encode())


def suites_to_update(path: Path, partial: bool = False) -> dict[str, Any]:
    """The suites `--update` re-measures: those of the file at `path` (any schema version; only names and
    configs are taken), or the default suites when there is no file yet. Updating only some suites
    keeps the others' entries, which must then already follow this tolerance model."""
    from odebench.fileio import read_json_object

    if not Path(path).exists():
        return {"suites": DEFAULT_SUITES}
    if partial:
        return read_baseline(path)
    data = read_json_object(Path(path), "baseline")
    suites = data.get("suites")
    if not isinstance(suites, list) or not all(isinstance(s, dict) and {"name", "config"} <= set(s) for s in suites):
        raise OdebenchError(f"{path}: malformed baseline (each suite needs name and config)")
    return {"suites": [{"name": s["name"], "config": s["config"]} for s in suites]}


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def read_baseline(path: Path) -> dict[str, Any]:
    from odebench.fileio import read_json_object

    data = read_json_object(Path(path), "baseline")
    if data.get("schema") == "odebench.baseline/1":
        raise OdebenchError(f"{path}: a baseline of the old tolerance model (odebench.baseline/1); "
                            f"re-record it with: odebench regress --baseline {path} --update")
    if data.get("schema") != SCHEMA:
        raise OdebenchError(f"{path}: not an odebench baseline (schema {data.get('schema')!r}, expected {SCHEMA})")
    suites = data.get("suites")
    if not isinstance(suites, list) or not all(isinstance(s, dict) and {"name", "config", "runs"} <= set(s) for s in suites):
        raise OdebenchError(f"{path}: malformed baseline (each suite needs name, config and runs)")
    for s in suites:
        if not isinstance(s["runs"], dict):
            raise OdebenchError(f"{path}: suite {s['name']}: runs must be an object")
        for run, entry in s["runs"].items():
            metrics = entry.get("metrics") if isinstance(entry, dict) else None
            if not isinstance(metrics, dict):
                raise OdebenchError(f"{path}: {s['name']}/{run} needs a metrics object")
            for k, m in metrics.items():
                where = f"{path}: {s['name']}/{run}/{k}"
                if not isinstance(m, dict) or m.get("class") not in CLASSES or not _number(m.get("value")):
                    raise OdebenchError(f"{where} needs a numeric value and a class ({', '.join(CLASSES)})")
                bound = "factor" if m["class"] in ("adaptive", "chaotic") else "allowed"
                if not _number(m.get(bound)) or m[bound] < (1 if bound == "factor" else 0):
                    raise OdebenchError(f"{where}: class {m['class']} needs {bound!r} "
                                        f"({'a number >= 1' if bound == 'factor' else 'a number >= 0'})")
    return data


@dataclass
class Check:
    suite: str
    run: str
    metric: str
    baseline: float | None
    now: float | None
    allowed: str | None  # the allowance as printed: "± 1.2e-05" or "x 4"
    status: str  # ok | moved | REGRESSED | missing | new

    @property
    def failed(self) -> bool:
        return self.status in ("REGRESSED", "missing")


def within(entry: dict[str, Any], now: float) -> bool:
    """Whether `now` is within the baseline entry's tolerance (its class's rule)."""
    base = entry["value"]
    if not math.isfinite(now):
        return False
    if "factor" in entry:
        if base == now:
            return True
        if base <= 0 or now <= 0:  # a ratio needs two positive numbers; anything else moved too far
            return False
        return max(now / base, base / now) <= entry["factor"]
    return abs(now - base) <= entry["allowed"]


def allowance(entry: dict[str, Any]) -> str:
    from odebench.table import fmt

    return f"x {entry['factor']:.3g}" if "factor" in entry else f"± {fmt(entry['allowed'])}"


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
            if k not in vals:
                checks.append(Check(name, run, k, m["value"], None, allowance(m), "missing"))
                continue
            v = vals[k]["value"]
            status = "ok" if v == m["value"] else ("moved" if within(m, v) else "REGRESSED")
            checks.append(Check(name, run, k, m["value"], v, allowance(m), status))
        checks += [Check(name, run, k, None, vals[k]["value"], None, "new") for k in vals if k not in entry["metrics"]]
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


def _worker() -> None:
    """`python -m odebench.regress`: one variant's suite (a JSON job on stdin) into a JSON file."""
    job = json.loads(sys.stdin.read())
    cache = None if job["cache_dir"] is None else Path(job["cache_dir"])
    res = compute_suite(job["suite"], cache, job["threads"], job["batch"], job["use_cache"])
    Path(job["out"]).write_text(json.dumps(res))


if __name__ == "__main__":
    try:
        _worker()
    except OdebenchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
