"""study.json: the study's settings and, for every finished point, its identity, where its student and
run live, and its metrics. Written atomically after each point, so an interrupted study loses at most
the point in progress (whose training checkpoint survives)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from odebench.errors import OdebenchError
from odebench.fileio import atomic_write_bytes, read_json_object

SCHEMA = "odebench.study/1"
FILE = "study.json"


def new_study(config: dict[str, Any], teacher: dict[str, Any]) -> dict[str, Any]:
    return {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "config": config,
            "teacher": teacher, "points": [], "compute": {"train_s": 0.0, "eval_s": 0.0, "train_steps": 0}}


def read_study(path: Path) -> dict[str, Any]:
    """study.json from a study directory (or the file itself)."""
    path = Path(path)
    if path.is_dir() or not path.name.endswith(".json"):
        path = path / FILE
    if not path.is_file():
        raise OdebenchError(f"no study at {path.parent} (no {FILE}; make one with `odebench study`)")
    data = read_json_object(path, "study")
    if data.get("schema") != SCHEMA:
        raise OdebenchError(f"{path}: unknown study schema {data.get('schema')!r} (expected {SCHEMA})")
    if not isinstance(data.get("points"), list):
        raise OdebenchError(f"{path}: no points list")
    return data


def write_study(root: Path, study: dict[str, Any]) -> Path:
    return atomic_write_bytes(Path(root) / FILE, (json.dumps(study, indent=1, allow_nan=False) + "\n").encode())


def upsert_point(study: dict[str, Any], entry: dict[str, Any]) -> None:
    """Add (or replace, by key) a finished point's entry."""
    study["points"] = [p for p in study["points"] if p["key"] != entry["key"]] + [entry]
