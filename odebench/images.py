"""Images in memory: model space [-1, 1] to uint8 RGB, and PNG sample grids."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def to_uint8_rgb(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 (N, H, W, 3); one channel is replicated (clean rounding, clipped)."""
    u8 = ((x.detach().double().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    if u8.shape[1] == 1:
        u8 = u8.expand(-1, 3, -1, -1)
    return u8.permute(0, 2, 3, 1).contiguous().numpy()


def save_grid(images: np.ndarray, path: Path, nrow: int = 16, scale: int = 4, pad: int = 1) -> Path:
    """A PNG grid of uint8 (N, H, W, 3) images, each upscaled `scale`x by pixel repetition."""
    from PIL import Image

    n, h, w, _ = images.shape
    ncol = min(nrow, n)
    rows = (n + ncol - 1) // ncol
    hs, ws = h * scale, w * scale
    canvas = np.full((rows * (hs + pad) + pad, ncol * (ws + pad) + pad, 3), 255, dtype=np.uint8)
    big = images.repeat(scale, axis=1).repeat(scale, axis=2)
    for i in range(n):
        r, c = divmod(i, ncol)
        canvas[pad + r * (hs + pad): pad + r * (hs + pad) + hs, pad + c * (ws + pad): pad + c * (ws + pad) + ws] = big[i]
    Image.fromarray(canvas).save(path)
    return path
