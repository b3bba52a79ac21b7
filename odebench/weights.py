"""Finding pretrained weights on this machine; nothing is ever downloaded.

`resolve_weights` looks, in order, at
  1. an explicit local path (file or folder) given by the caller,
  2. `$ODEBENCH_WEIGHTS/<filename>` (for a hub id `org/name`: the folder `$ODEBENCH_WEIGHTS/<name>`),
  3. the Hugging Face cache, read with `local_files_only` lookups only,
and otherwise raises an OdebenchError whose one line says which file is expected and where to put it.

`weights_tag` names a weights file by its name and a sha256 prefix, for metric identity strings.
"""
from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

from odebench.errors import OdebenchError

WEIGHTS_ENV = "ODEBENCH_WEIGHTS"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # org/name, as on the Hugging Face hub
SHA_PREFIX = 12


_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".pkl", ".npz")


def _looks_like_path(s: str) -> bool:
    return s.startswith(("/", "./", "../", "~")) or s in (".", "..")


def _is_hub_id(s: str) -> bool:
    """org/name, but not dir/file.pt (a relative path to a weights file)."""
    return bool(_HUB_ID.match(s)) and not _looks_like_path(s) and not s.lower().endswith(_WEIGHT_SUFFIXES)


def _hf_cached_file(repo: str, filename: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers/open_clip
        return None
    try:
        hit = try_to_load_from_cache(repo, filename)
    except Exception:  # malformed ids, unreadable cache: treat as absent
        return None
    return Path(hit) if isinstance(hit, str) and Path(hit).is_file() else None


def _hf_cached_snapshot(repo: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover
        return None
    try:
        return Path(snapshot_download(repo, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError and friends: not in the cache
        return None


def resolve_weights(filename_or_id: str | os.PathLike, what: str, env: str = WEIGHTS_ENV, *,
                    hub_repo: str | None = None, flag: str | None = None, describe: str = "weights",
                    source: str | None = None) -> Path:
    """Path of a weights file or folder that is already on this machine.

    filename_or_id: an existing path, relative to the working directory or absolute (returned as
      is); a path-like string that does not exist (an error); a hub id `org/name` (a model folder: `$env/<name>`, then the HF cache snapshot); or a
      bare file name (`$env/<filename>`, then `hub_repo`'s copy in the HF cache when given).
    what: the metric that needs it ("FID"); describe: what the file is ("Inception weights");
      source: where the file comes from, for the message ("clean-fid's"); flag: the CLI option
      that takes a path instead ("--fid-weights").
    """
    s = os.fspath(filename_or_id)
    p = Path(s).expanduser()
    if p.exists():
        return p
    root = os.environ.get(env)
    now = f" (now {root!r})" if root else " (unset)"
    alt = f" or pass {flag} PATH" if flag else ""
    src = f" ({source})" if source else ""
    if _looks_like_path(s) or (os.sep in s and not _is_hub_id(s)):
        raise OdebenchError(f"{what} needs {describe}{src} at '{s}', which does not exist: fix the path, "
                            f"put the file in ${env}{now}{alt}")

    if _is_hub_id(s):
        name = s.split("/", 1)[1]
        if root and (Path(root) / name).is_dir():
            return Path(root) / name
        snap = _hf_cached_snapshot(s)
        if snap is not None and snap.is_dir():
            return snap
        raise OdebenchError(f"{what} needs {describe} '{s}'{src}: put the model folder at ${env}/{name}{now}, "
                            f"have {s} in the Hugging Face cache,{alt or ' or pass a folder path'}; nothing is downloaded")

    if root and (Path(root) / s).is_file():
        return Path(root) / s
    hf = ""
    if hub_repo:
        hit = _hf_cached_file(hub_repo, s)
        if hit is not None:
            return hit
        hf = f", have {hub_repo} in the Hugging Face cache,"
    raise OdebenchError(f"{what} needs {describe} '{s}'{src}: put it in ${env}{now}{hf}{alt}; nothing is downloaded")


@lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    from odebench.fileio import file_sha256 as plain_sha256

    return plain_sha256(path)  # size and mtime only key the memo


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file (memoised per path, size and mtime).

    Files in the Hugging Face cache are symlinks to blobs named by their sha256 (LFS files); that
    name is used instead of rereading gigabytes.
    """
    p = Path(path)
    real = p.resolve()
    if real.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", real.name):
        return real.name
    st = real.stat()
    return _sha256(str(real), st.st_size, st.st_mtime_ns)


def weights_tag(path: str | os.PathLike) -> str:
    """'<file name> sha256:<prefix>' for identity strings."""
    p = Path(path)
    return f"{p.name} sha256:{file_sha256(p)[:SHA_PREFIX]}"
