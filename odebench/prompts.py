"""Prompt sets for text-conditioned teachers: a text file, a JSONL/CSV column, or the built-in list.

Sample i gets prompt i mod P, like class labels, so a sample's prompt never depends on batching.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from odebench.errors import OdebenchError
from odebench.fileio import read_records, read_text_utf8

# Written here for smoke runs: varied subjects, styles, lengths and scene types.
BUILTIN_PROMPTS = (
    "a red fox curled up asleep in fresh snow, soft morning light",
    "a bowl of steaming ramen with a soft-boiled egg, top-down photo",
    "an astronaut riding a horse across a desert at sunset",
    "a lighthouse on a rocky cliff during a storm, oil painting",
    "a tiny robot watering a potted cactus on a windowsill",
    "a watercolor map of an imaginary island with mountains and rivers",
    "close-up portrait of an old fisherman with a weathered face, black and white",
    "a cozy reading nook with a blanket, books and a cup of tea",
    "a futuristic city skyline at night with neon signs reflected in rain",
    "a hummingbird hovering next to a bright pink flower, macro photograph",
    "an isometric pixel-art cottage with a chimney and a vegetable garden",
    "a vintage bicycle leaning against a yellow wall in a narrow street",
    "a golden retriever puppy running through autumn leaves",
    "a bowl of lemons on a marble table, still life in the style of a Dutch painting",
    "a snow-covered mountain lake reflecting pine trees at dawn",
    "a steampunk airship above the clouds, detailed illustration",
)
DEFAULT_COLUMNS = ("caption", "text", "prompt")


def _column(row: dict, column: str | None, where: str) -> str:
    if column is not None:
        if column not in row:
            raise OdebenchError(f"{where}: no column {column!r} (has {', '.join(map(str, row)) or 'none'})")
        value = row[column]
    else:
        found = [c for c in DEFAULT_COLUMNS if c in row]
        if not found:
            raise OdebenchError(f"{where}: none of the columns {', '.join(DEFAULT_COLUMNS)} found "
                                f"(has {', '.join(map(str, row)) or 'none'}); pass --prompt-column")
        value = row[found[0]]
    if not isinstance(value, str) or not value.strip():
        raise OdebenchError(f"{where}: the prompt is empty or not text ({value!r})")
    return value.strip()


def load_prompts(source: str | Path | None = None, column: str | None = None) -> list[str]:
    """Prompts from a .txt file (one per line; blank lines skipped), a .jsonl or .csv file (one
    column, default the first of caption/text/prompt), or the built-in list (None or "builtin")."""
    if source is None or str(source) == "builtin":
        return list(BUILTIN_PROMPTS)
    path = Path(source)
    if not path.is_file():
        raise OdebenchError(f"prompt file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".csv"):
        prompts = [_column(row, column, where) for row, where in read_records(path)]
    else:
        if column is not None:
            raise OdebenchError(f"{path}: --prompt-column applies to .jsonl/.csv files; a text file has one prompt per line")
        prompts = [line.strip() for line in read_text_utf8(path).splitlines() if line.strip()]
    if not prompts:
        raise OdebenchError(f"{path}: no prompts found")
    return prompts


def prompts_sha256(prompts) -> str:
    """Identity of an ordered prompt list (for results and cache keys)."""
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False).encode()).hexdigest()
