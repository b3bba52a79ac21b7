"""Run directories: result.json (schema-versioned) and per-sample tensors, written atomically."""
from __future__ import annotations

import json
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

SCHEMA = "odebench.result/1"
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


def build_result(*, name: str, command: list[str], teacher: dict[str, Any], student: dict[str, Any],
                 conditioning: dict[str, Any], samples: int, seeds: dict[str, Any], solver, floor: dict | None,
                 ddim100: dict | None, ref, nfe: dict[str, Any], metrics: dict, curve: dict | None,
                 extras: dict[str, Any], flags: list[str], timings: dict[str, float],
                 distributed: dict[str, Any]) -> dict[str, Any]:
    """One run's result.json (schema SCHEMA): identity of the teacher ODE and the student (its `kind` says
    what it was trained to do), the reference (`solver` a SolverSpec, `ref` a ReferenceSet), NFEs,
    metrics (MetricValue), curves, flags, timings and the environment."""
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
        "reference": {"solver": solver.to_dict(), "description": solver.describe(), "floor": floor, "ddim100": ddim100,
                      "curve_sigmas": ref.curve_sigmas.tolist(), "seconds": ref.seconds},
        "nfe": {**nfe, "reference": ref.nfe_summary()},
        "metrics": {k: v.to_dict() for k, v in metrics.items()},
        "curves": {"ode_mse_vs_sigma": curve} if curve is not None else {},
        "extras": extras,
        "flags": flags,
        "timings": timings,
        "environment": {**environment(), **distributed},
    }


def write_run(out_dir: Path, name: str, result: dict[str, Any], tensors: dict[str, torch.Tensor],
              extra: Callable[[Path], Any] | None = None) -> Path:
    """Write a complete run directory, then swap it into place: no half-written result survives."""
    from safetensors.torch import save_file

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
    path = Path(path)
    if path.is_dir():
        path = path / "result.json"
    data = read_json_object(path, "result")
    if data.get("schema") != SCHEMA:
        raise OdebenchError(f"{path}: unknown result schema {data.get('schema')!r} (expected {SCHEMA})")
    return data
