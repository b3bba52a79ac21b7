"""The one feature pipeline: images in, float64 feature vectors out.

Images flow in memory as uint8 RGB arrays of shape (N, H, W, 3) (grey images replicated to three
channels); nothing passes through a lossy file format. Each extractor resizes and normalises as its
backbone expects and names all of that in `identity`.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np


class FeatureExtractor(Protocol):
    name: str  # short name used in metric names, e.g. "digits", "inception", "dinov2"
    identity: str  # backbone, weights file, preprocessing, feature layer

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float64 (N, D)."""


def check_images(images: np.ndarray) -> np.ndarray:
    """Validate the pipeline's image format: uint8, (N, H, W, 3)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {images.dtype} {images.shape}")
    return images


def grey_to_rgb(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) or (N, 1, H, W) grey -> uint8 (N, H, W, 3)."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    return np.repeat(images[..., None], 3, axis=-1)
