"""Crash-safe file writes and checksums shared by the cache, checkpoints, results and trainers."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write `data` to a temp file beside `path`, fsync, then rename over it: readers see the old
    file or the new one, never a torn one. The file gets the usual umask-based mode (not mkstemp's 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def nearest_directory(path: Path | str, what: str = "--out", shown: Path | str | None = None) -> Path:
    """The directory `path` is or would be created in (its nearest existing ancestor); one OdebenchError
    line when a file (or a broken link) stands in the way, so it could never become a directory."""
    from odebench.errors import OdebenchError

    path = Path(path)
    shown = path if shown is None else shown
    existing = path
    try:
        while not existing.exists() and existing != existing.parent:
            if existing.is_symlink():  # a dangling link: mkdir would fail on it later
                raise OdebenchError(f"{what} {shown}: {existing} is a broken symbolic link")
            existing = existing.parent
    except OSError as e:  # e.g. a parent we may not search
        raise OdebenchError(f"{what} {shown}: cannot reach {existing} ({e.strerror or e})") from None
    if not existing.is_dir():
        raise OdebenchError(f"{what} {shown}: {existing} is a file, not a directory")
    return existing


def write_probe(directory: Path) -> OSError | None:
    """Why a new file cannot be created in `directory` (None if it can): a real probe file, removed at
    once, because permission bits alone do not tell (root ignores them; a read-only mount refuses even root)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".odebench-write-probe-", dir=directory)
    except OSError as e:
        return e
    os.close(fd)
    os.unlink(probe)
    return None


def check_writable_dir(path: Path | str, what: str = "--out", shown: Path | str | None = None) -> None:
    """Fail now, before any work, if `path` cannot be (or become) a directory this process can write in.
    Nothing is created beyond a probe file, which is removed at once."""
    from odebench.errors import OdebenchError

    shown = Path(path) if shown is None else shown
    existing = nearest_directory(path, what, shown)
    err = write_probe(existing)
    if err is not None:
        raise OdebenchError(f"{what} {shown}: cannot write in {existing} ({err.strerror or err})")


def check_writable_file(path: Path | str, what: str = "--out") -> None:
    """Fail now if `path` cannot be written as a file (it is a directory, or its directory is not writable)."""
    from odebench.errors import OdebenchError

    path = Path(path)
    if path.is_dir():
        raise OdebenchError(f"{what} {path} is a directory; give a file name")
    check_writable_dir(path.parent, what, shown=path)


def load_torch_tensors(path: Path | str, what: str = "weights file"):
    """torch.load(weights_only=True) of `path` with one short OdebenchError line when it fails: a pickle
    that holds more than tensors and plain containers is refused (never retried unsafely, and torch's
    advice to do so is not passed on), a torn or foreign file is called unreadable."""
    import pickle
    import warnings

    import torch

    from odebench.errors import OdebenchError

    try:
        with warnings.catch_warnings():  # torch warns about some pickle protocols; the error below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise OdebenchError(f"refusing to load {path}: a pickle holding objects other than tensors (possibly code); "
                            "odebench reads safetensors or plain tensor state dicts only") from None
    except Exception as e:  # zip/pickle framing errors of a truncated or foreign file
        raise OdebenchError(f"{path}: unreadable {what} ({type(e).__name__}; truncated, or not a torch file)") from None


def read_json_object(path: Path | str, what: str) -> dict:
    """A JSON object from `path`, or one OdebenchError line naming the file and what it should be."""
    import json

    from odebench.errors import OdebenchError

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OdebenchError(f"{path}: unreadable {what} ({e})") from None
    if not isinstance(data, dict):
        raise OdebenchError(f"{path}: a {what} must be a JSON object")
    return data


def file_sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_text_utf8(path: Path) -> str:
    """A text file's contents, or one OdebenchError line when it is not UTF-8."""
    from odebench.errors import OdebenchError

    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise OdebenchError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_records(path: Path) -> list[tuple[dict, str]]:
    """Rows of a .jsonl (one JSON object per line; blank lines skipped) or .csv (header row) file, each
    with "file:line" for error messages; a malformed line is one OdebenchError naming it."""
    import csv
    import json

    from odebench.errors import OdebenchError

    path = Path(path)
    text = read_text_utf8(path)
    if path.suffix.lower() == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise OdebenchError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise OdebenchError(f"{path}:{n}: expected a JSON object per line, got {type(row).__name__}")
            rows.append((row, f"{path}:{n}"))
        return rows
    try:
        return [(row, f"{path}:{n}") for n, row in enumerate(csv.DictReader(text.splitlines()), 2)]  # line 1: header
    except csv.Error as e:
        raise OdebenchError(f"{path}: unreadable CSV ({e})") from None
