"""Content-addressed trajectory cache.

An entry's key is the sha256 of the canonical JSON of everything its numbers depend on (teacher
ODE identity, conditions, seed and indices, shape, SolverSpec, format version). Entries are
safetensors files written atomically (temp file + fsync + rename) and carry a checksum of their
tensors; an entry that fails to parse or to verify is deleted and recomputed, never trusted.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from odebench.fileio import atomic_write_bytes

FORMAT_VERSION = 2  # 2: network dtype in teacher identities, lambda-time reference default, memoized solver rows


def canonical_json(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)


def cache_key(payload: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json({"format": FORMAT_VERSION, **payload}).encode()).hexdigest()


def memoized(cache: "TrajectoryCache", payload: dict[str, Any], inputs: dict[str, torch.Tensor],
             compute) -> torch.Tensor:
    """compute() cached under `payload` and the checksum of its input tensors (content-addressed: an
    input that differs in one bit is a new key); the result comes back on the inputs' device."""
    device = next(iter(inputs.values())).device
    key = cache_key({**payload, "inputs": tensors_checksum({k: v for k, v in inputs.items() if v is not None})})
    hit = cache.load(key)
    if hit is not None:
        return hit[0]["out"].to(device)
    out = compute()
    cache.store(key, payload, {"out": out}, {})
    return out


def tensors_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def default_cache_dir() -> Path:
    env = os.environ.get("ODEBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "odebench"


@dataclass
class EntryInfo:
    key: str
    path: Path
    size: int
    mtime: float
    payload: dict[str, Any] | None
    ok: bool
    problem: str = ""


class TrajectoryCache:
    def __init__(self, root: Path | str | None = None, enabled: bool = True) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.enabled = enabled
        self.read_only = False  # set by check_writable: read entries, store none
        self.hits = 0
        self.misses = 0
        self.corrupt = 0

    def check_writable(self) -> str | None:
        """Before any solving: an OdebenchError if the cache root could never be a directory (a file in the
        way); a warning line if it is a directory this process cannot write in, whose entries are then
        read but new ones not stored; None when entries can be stored."""
        from odebench.errors import OdebenchError
        from odebench.fileio import nearest_directory, write_probe

        if not self.enabled:
            return None
        try:
            existing = nearest_directory(self.root, "trajectory cache")
        except OdebenchError as e:  # the run can go on without a cache; say how
            raise OdebenchError(f"{e}; give another --cache-dir (or $ODEBENCH_CACHE), or --no-cache") from None
        err = write_probe(existing)
        if err is None:
            return None
        self.read_only = True
        return (f"warning: trajectory cache {self.root} is read-only ({err.strerror or err} in {existing}): "
                "its entries are read, new ones are not stored")

    @property
    def dir(self) -> Path:
        return self.root / "trajectories"

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.safetensors"

    def _read(self, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Parse and verify one entry; raises ValueError on any problem."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises several types on truncated/garbled files
            raise ValueError(f"unreadable ({type(e).__name__}: {e})") from None
        if meta.get("key") != path.stem:
            raise ValueError("key does not match file name")
        if meta.get("checksum") != tensors_checksum(tensors):
            raise ValueError("checksum mismatch")
        return tensors, meta

    def load(self, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        if not self.enabled:
            return None
        path = self.path(key)
        if not path.exists():
            self.misses += 1
            return None
        try:
            tensors, meta = self._read(path)
        except ValueError:
            self.corrupt += 1
            self.misses += 1
            path.unlink(missing_ok=True)
            return None
        self.hits += 1
        return tensors, json.loads(meta.get("info", "{}"))

    def store(self, key: str, payload: dict[str, Any], tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        if not self.enabled or self.read_only:
            return
        from safetensors.torch import save

        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        meta = {"key": key, "payload": canonical_json(payload), "info": json.dumps(info),
                "checksum": tensors_checksum(tensors), "created": str(time.time())}
        blob = save(tensors, metadata=meta)
        atomic_write_bytes(self.path(key), blob)

    # -- housekeeping ------------------------------------------------------------------------
    def _check_root(self) -> None:
        """A cache root that is a file (or under one) is a mistake to say, not an empty cache."""
        from odebench.errors import OdebenchError
        from odebench.fileio import nearest_directory

        try:
            nearest_directory(self.root, "trajectory cache")
        except OdebenchError as e:
            raise OdebenchError(f"{e}; give another --cache-dir (or $ODEBENCH_CACHE)") from None

    def entries(self, verify: bool = False) -> list[EntryInfo]:
        self._check_root()
        out = []
        if not self.dir.exists():
            return out
        for path in sorted(self.dir.glob("*/*.safetensors")):
            st = path.stat()
            payload, ok, problem = None, True, ""
            try:
                if verify:
                    _, meta = self._read(path)
                else:
                    from safetensors import safe_open

                    with safe_open(str(path), framework="pt") as f:
                        meta = f.metadata() or {}
                payload = json.loads(meta.get("payload", "null"))
            except Exception as e:
                ok, problem = False, str(e)
            out.append(EntryInfo(path.stem, path, st.st_size, st.st_mtime, payload, ok, problem))
        return out

    def clear(self) -> int:
        self._check_root()
        n = 0
        if self.dir.exists():
            for path in self.dir.glob("*/*"):
                path.unlink(missing_ok=True)
                n += path.suffix == ".safetensors"
        return n
