"""Run directories: result.json (schema-versioned) and per-sample tensors, written atomically."""
from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from odebench.errors import OdebenchError
from odebench.fileio import read_json_object
from odebench.schema import AnyValue, Arr, Bool, Int, Num, Obj, Opt, Str, validate

SCHEMA = "odebench.result/1"

# The fields `odebench report`, `ls` and `regress` read, with their types; a number that was not finite
# when the run was written is null (finite_result), so every number here may be null where it can be one.
_N = Opt(Num())
_N0 = Opt(Num(ge=0))
METRIC = Obj({"value": _N, "stderr": _N0, "higher_is_better": Bool(), "identity": Str(), "n": Int(ge=0)},
             required=("value", "stderr", "higher_is_better", "identity"))
RESULT = Obj({
    "schema": Str((SCHEMA,)),
    "name": Str(),
    "command": Arr(Str()),
    "created": Str(),
    "teacher": Obj({"teacher": Str(), "fingerprint": Str(), "guidance": Obj(), "origin": Str()}, required=("teacher", "fingerprint")),
    "student": Obj({"spec": Str(), "name": Str(), "kind": Str()}, required=("spec",)),
    "conditioning": Obj(),
    "samples": Int(ge=1),
    "seeds": Obj({"seed": Int()}, required=("seed",)),
    "reference": Obj({"solver": Obj(), "description": Str(),
                      "floor": Opt(Obj({"ode_mse": _N0, "stderr": _N0, "n": Int(ge=1),
                                        # odebench.ode.floor: its solver and precision parts
                                        "parts": Obj(extra=Obj({"ode_mse": _N0, "stderr": _N0}))},
                                       required=("ode_mse",))),
                      "curve_sigmas": Arr(_N0), "ddim100": Opt(Obj())}, required=("solver",)),
    "nfe": Obj({"student_per_sample": _N0, "reference": Obj({"per_sample": _N0}, required=("per_sample",))},
               required=("student_per_sample", "reference")),
    "metrics": Obj(extra=METRIC),
    "curves": Obj({"ode_mse_vs_sigma": Obj({"sigma": Arr(_N0), "ode_mse": Arr(_N0), "stderr": Arr(_N0), "n": Int(ge=0)},
                                           required=("sigma", "ode_mse"))}),
    "extras": Obj(),
    "flags": Arr(Str()),
    "timings": Obj(extra=_N),
    "environment": Obj(),
}, required=("schema", "teacher", "student", "samples", "seeds", "reference", "nfe", "metrics"), extra=AnyValue())
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


def safe_name(text: str) -> str:
    """A run-directory name derived from a student label."""
    name = re.sub(r"[^A-Za-z0-9._+=-]+", "-", text).strip("-.") or "run"
    return name[:100]


def check_name(name: str) -> str:
    if not NAME_RE.match(name) or len(name) > 100:
        raise OdebenchError(f"invalid run name {name!r}: use letters, digits and . _ + = - (no slashes, not starting with '.')")
    return name


def environment() -> dict[str, Any]:
    import numpy
    import torchdiffeq

    from odebench import __version__

    return {"odebench": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
            "torch": torch.__version__, "torchdiffeq": torchdiffeq.__version__, "numpy": numpy.__version__,
            "device": "cpu", "threads": torch.get_num_threads()}


NON_FINITE_FLAG = "non-finite-values"


def _nulled(obj: Any, key: str, found: list[str]) -> Any:
    """`obj` with every non-finite float replaced by None; the dotted keys of those go to `found`."""
    if isinstance(obj, float) and not math.isfinite(obj):
        found.append(key or "(root)")
        return None
    if isinstance(obj, dict):
        return {k: _nulled(v, f"{key}.{k}" if key else str(k), found) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nulled(v, f"{key}[{i}]", found) for i, v in enumerate(obj)]
    return obj


def finite_result(result: dict[str, Any]) -> dict[str, Any]:
    """The result with every inf/nan number (metrics, curves, extras, floor, ...) as JSON null, and a
    `non-finite-values` flag naming where they were; JSON has no inf/nan and a null is honest about it."""
    found: list[str] = []
    clean = _nulled(result, "", found)
    if found:
        shown = ", ".join(found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
        clean["flags"] = [*clean.get("flags", []), f"{NON_FINITE_FLAG}: {len(found)} number(s) were inf/nan and are null ({shown})"]
    return clean


def build_result(*, name: str, command: list[str], teacher: dict[str, Any], student: dict[str, Any],
                 conditioning: dict[str, Any], samples: int, seeds: dict[str, Any], solver, floor: dict | None,
                 ddim100: dict | None, ref, nfe: dict[str, Any], metrics: dict, curve: dict | None,
                 spectrum: dict | None, extras: dict[str, Any], flags: list[str], timings: dict[str, float],
                 distributed: dict[str, Any], requested_solver=None, drift_precision: float | None = None,
                 network_dtype: str | None = None) -> dict[str, Any]:
    """One run's result.json (schema SCHEMA): identity of the teacher ODE and the student (its `kind` says
    what it was trained to do), the reference (`solver` a SolverSpec as solved, `requested_solver` the one
    asked for before odebench.ode.precision raised its tolerances, `drift_precision` the drift's measured
    rounding noise, `network_dtype` the teacher network's precision or None for analytic teachers; `floor`
    with its solver and precision parts, odebench.ode.floor; `ref` a ReferenceSet), NFEs, metrics
    (MetricValue), curves, flags, timings and the environment."""
    return {
        "schema": SCHEMA,
        "name": name,
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "teacher": teacher,
        "student": student,
        "conditioning": conditioning,
        "samples": samples,
        "seeds": {**seeds, "exact_samples": "stream_seed(seed, -1, 0)"},
        "reference": {"solver": solver.to_dict(), "description": solver.describe(), "floor": floor,
                      "requested_solver": (requested_solver or solver).to_dict(), "drift_precision": drift_precision,
                      "network_dtype": network_dtype, "ddim100": ddim100,
                      "curve_sigmas": ref.curve_sigmas.tolist(), "seconds": ref.seconds},
        "nfe": {**nfe, "reference": ref.nfe_summary()},
        "metrics": {k: v.to_dict() for k, v in metrics.items()},
        "curves": {**({"ode_mse_vs_sigma": curve} if curve is not None else {}),
                   **({"spectrum": spectrum} if spectrum is not None else {})},
        "extras": extras,
        "flags": flags,
        "timings": timings,
        "environment": {**environment(), **distributed},
    }


def write_run(out_dir: Path, name: str, result: dict[str, Any], tensors: dict[str, torch.Tensor],
              extra: Callable[[Path], Any] | None = None) -> Path:
    """Write a complete run directory, then swap it into place: no half-written result survives.
    Non-finite numbers in `result` are written as null (finite_result), never a crash."""
    from safetensors.torch import save_file

    result = finite_result(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out_dir))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "per_sample.safetensors"))
        if extra is not None:
            extra(tmp)
        with open(tmp / "result.json", "w") as f:
            json.dump(result, f, indent=1, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=out_dir))
            os.replace(final, old / name)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_result(path: Path) -> dict[str, Any]:
    """A run's result.json, checked against RESULT: a malformed file is one error line naming the key."""
    path = Path(path)
    if path.is_dir():
        path = path / "result.json"
    data = read_json_object(path, "result")
    if data.get("schema") != SCHEMA:
        raise OdebenchError(f"{path}: unknown result schema {data.get('schema')!r} (expected {SCHEMA})")
    validate(data, RESULT, str(path))
    curve = data.get("curves", {}).get("ode_mse_vs_sigma")
    if curve is not None and any(len(curve.get(k, curve["sigma"])) != len(curve["sigma"]) for k in ("ode_mse", "stderr")):
        raise OdebenchError(f"{path}: \"curves.ode_mse_vs_sigma\" lists sigma, ode_mse and stderr of different lengths")
    return data
