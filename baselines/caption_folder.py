"""A local image-caption folder: which images, with which captions (the SDXL trainers' data).

Rules, checked in this order (one-line errors name the file at fault):
  1. `metadata.jsonl` (the Hugging Face imagefolder layout): one JSON object per line with
     `file_name` (a path relative to the folder) and the caption in `text`, `caption` or `prompt`
     (the first present). Only the listed images are used; other files are ignored.
  2. `metadata.csv`: the same, as a CSV with a header row.
  3. Neither: every image directly in the folder (.png, .jpg, .jpeg, .webp; sorted by name) with its
     caption in a text file of the same stem beside it (`0001.png` + `0001.txt`, UTF-8, stripped).
An image without a caption, an empty caption, a listed file that is missing or not an image, a
duplicate listing, an image that does not open, both metadata files, or no images at all is an error.
Captions are never matched by position in a shared list: a missing line would shift every pair.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from odebench.errors import OdebenchError
from odebench.fileio import read_records

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
CAPTION_COLUMNS = ("text", "caption", "prompt")


@dataclass(frozen=True)
class CaptionedImage:
    path: Path
    caption: str
    size: tuple[int, int]  # (height, width) in pixels, read from the header


def _caption(row: dict, where: str) -> str:
    found = [c for c in CAPTION_COLUMNS if c in row]
    if not found:
        raise OdebenchError(f"{where}: no caption (expected one of the keys {', '.join(CAPTION_COLUMNS)}; has {', '.join(map(str, row)) or 'none'})")
    value = row[found[0]]
    if not isinstance(value, str) or not value.strip():
        raise OdebenchError(f"{where}: the caption is empty or not text ({value!r})")
    return value.strip()


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:  # reads the header only
            w, h = im.size
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise OdebenchError(f"{path}: not a readable image ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return h, w


def read_caption_folder(folder: Path | str) -> list[CaptionedImage]:
    """The (image, caption) pairs of `folder` under the rules above, in a fixed order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise OdebenchError(f"--data {folder}: not a directory (expected images with metadata.jsonl or .txt captions)")
    metas = [folder / n for n in ("metadata.jsonl", "metadata.csv") if (folder / n).is_file()]
    if len(metas) > 1:
        raise OdebenchError(f"{folder}: both metadata.jsonl and metadata.csv; keep one")
    pairs: list[tuple[Path, str]] = []
    if metas:
        seen: set[str] = set()
        for row, where in read_records(metas[0]):
            name = row.get("file_name")
            if not isinstance(name, str) or not name.strip():
                raise OdebenchError(f"{where}: no file_name")
            path = (folder / name.strip())
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise OdebenchError(f"{where}: {name} is not an image ({', '.join(IMAGE_SUFFIXES)})")
            if not path.is_file():
                raise OdebenchError(f"{where}: image {name} not found in {folder}")
            if name in seen:
                raise OdebenchError(f"{where}: {name} is listed twice")
            seen.add(name)
            pairs.append((path, _caption(row, where)))
    else:
        for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
            txt = path.with_suffix(".txt")
            if not txt.is_file():
                hint = ("; captions.txt is not read (lines are not paired with images by order)"
                        if (folder / "captions.txt").is_file() else "")
                raise OdebenchError(f"{path}: no caption (expected {txt.name} beside it, or a metadata.jsonl){hint}")
            try:
                caption = txt.read_text(encoding="utf-8").strip()
            except UnicodeDecodeError:
                raise OdebenchError(f"{txt}: not UTF-8 text") from None
            if not caption:
                raise OdebenchError(f"{txt}: the caption is empty")
            pairs.append((path, caption))
    if not pairs:
        raise OdebenchError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) with captions found")
    return [CaptionedImage(p, c, _image_size(p)) for p, c in pairs]


def folder_identity(items: list[CaptionedImage]) -> dict:
    """What a training record keeps of the data: the count and a hash of names, captions and sizes
    (the pixels are not hashed: reading 10k images to start a run is not worth it)."""
    blob = json.dumps([[i.path.name, i.caption, list(i.size)] for i in items], ensure_ascii=False).encode()
    return {"images": len(items), "listing_sha256": hashlib.sha256(blob).hexdigest()[:16]}
