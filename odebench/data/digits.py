"""scikit-learn's handwritten digits (1,797 8x8 images, grey levels 0..16) with a fixed split.

Images are returned as uint8 in 0..255 (level * 255 / 16, rounded) so every consumer sees the
same pixels the metrics see. The split is stratified and seeded: the training split trains the
teacher, the classifier and the students; the held-out split is the "real data" reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SPLIT_SEED = 0
HELD_OUT_FRACTION = 0.25
NUM_CLASSES = 10
LEVELS = 16  # grey levels 0..16 in the source data


@dataclass(frozen=True)
class DigitsSplit:
    train_images: np.ndarray  # (N, 8, 8) uint8 0..255
    train_labels: np.ndarray  # (N,) int64
    test_images: np.ndarray
    test_labels: np.ndarray


def levels_to_uint8(levels: np.ndarray) -> np.ndarray:
    return np.rint(np.asarray(levels, dtype=np.float64) * (255.0 / LEVELS)).astype(np.uint8)


@lru_cache(maxsize=1)
def digits_split() -> DigitsSplit:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = levels_to_uint8(data.images)
    tr_x, te_x, tr_y, te_y = train_test_split(images, data.target.astype(np.int64), test_size=HELD_OUT_FRACTION,
                                              random_state=SPLIT_SEED, stratify=data.target)
    return DigitsSplit(tr_x, tr_y, te_x, te_y)


def to_model_space(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 0..255 (N, 8, 8) -> float32 (N, 1, 8, 8) in [-1, 1], the teacher's data space."""
    return (np.asarray(images_uint8, dtype=np.float32)[:, None] / 127.5 - 1.0).astype(np.float32)
