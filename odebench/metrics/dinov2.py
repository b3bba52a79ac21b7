"""DINOv2 ViT-L/14 features and FD-DINOv2 (Stein et al. 2023, as used by EDM2).

Pipeline per batch: uint8 RGB -> float32 0..255 -> bicubic squash to 224x224 with
torch.nn.functional.interpolate(mode="bicubic", antialias=True, align_corners=False) -- the EDM2
"torch" resize mode, which follows PIL's antialiased bicubic (a = -0.5) that dgm-eval uses, without
PIL's uint8 quantisation; no clamp -- then /255, ImageNet mean/std normalisation, and the
transformers `Dinov2Model`'s `pooler_output` (the CLS token after the final layer norm, the same
vector as the torch-hub model's output). The model comes from a local folder or the Hugging Face
cache (default `facebook/dinov2-large`), always with local_files_only=True.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from odebench.errors import OdebenchError
from odebench.metrics.features import check_images
from odebench.metrics.inception import fd_value
from odebench.metrics.registry import MetricValue, register
from odebench.weights import resolve_weights, weights_tag

DEFAULT_DINOV2 = "facebook/dinov2-large"
RESOLUTION = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPROCESS_IDENTITY = (f"bicubic squash to {RESOLUTION}x{RESOLUTION} (torch interpolate, antialias=True, "
                       "float 0..255, no clamp); /255; ImageNet mean/std")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

register("fd_dinov2", False, "Frechet distance in DINOv2 ViT-L/14 CLS-feature space to a reference set")


def preprocess(images: np.ndarray, device=None):
    """uint8 (N, H, W, 3) -> float32 (N, 3, 224, 224), normalised as DINOv2 expects."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(check_images(images)))
    if device is not None:
        x = x.to(device)
    x = x.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(RESOLUTION, RESOLUTION), mode="bicubic", antialias=True, align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x / 255 - mean) / std


def _load_dinov2(folder: Path):
    from transformers import Dinov2Model

    try:
        import torch

        return Dinov2Model.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    except Exception as e:  # missing config/weights in a partial folder, wrong architecture, ...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise OdebenchError(f"cannot load DINOv2 from '{folder}': {msg}") from None


class DinoV2Features:
    """FeatureExtractor: uint8 (N, H, W, 3) -> float64 (N, hidden) DINOv2 CLS features."""

    name = "dinov2"

    def __init__(self, weights: str | os.PathLike | None = None, *, model=None, model_name: str | None = None,
                 device=None, batch_size: int = 32, flag: str = "--dinov2-weights"):
        import torch

        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = int(batch_size)
        if model is not None:
            backbone = f"injected Dinov2Model {model_name or type(model).__name__}"
        else:
            source = os.fspath(weights) if weights is not None else DEFAULT_DINOV2
            folder = resolve_weights(source, "FD-DINOv2", flag=flag,
                                     describe="DINOv2 weights",
                                     source="transformers folder: config.json + model.safetensors")
            if not folder.is_dir():
                raise OdebenchError(f"FD-DINOv2 needs a transformers model folder (config.json + model.safetensors), "
                                    f"got the file '{folder}'")
            model = _load_dinov2(folder)
            files = [folder / f for f in _WEIGHT_FILES if (folder / f).is_file()]
            tag = weights_tag(files[0]) if files else "weights file unknown"
            label = folder.name if Path(source).expanduser().exists() else source
            backbone = f"DINOv2 Dinov2Model {label} ({tag})"
        self.model = model.eval().to(self.device)
        hidden = getattr(getattr(model, "config", None), "hidden_size", "?")
        self.identity = f"{backbone}; {PREPROCESS_IDENTITY}; pooler_output (CLS after final layernorm) {hidden}"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch

        images = check_images(images)
        feats = []
        for start in range(0, len(images), self.batch_size):
            x = preprocess(images[start:start + self.batch_size], self.device)
            with torch.no_grad():
                f = self.model(pixel_values=x).pooler_output
            feats.append(f.to("cpu", torch.float64).numpy())
        return np.concatenate(feats) if feats else np.zeros((0, 0))


def fd_dinov2(features: np.ndarray, ref_features: np.ndarray, ref_set: str, extractor_identity: str,
              stderr_reps: int = 10) -> MetricValue:
    """FD-DINOv2 from DINOv2 features of the samples and of the reference set (`ref_set` names it)."""
    return fd_value("fd_dinov2", features, ref_features, extractor_identity, ref_set, stderr_reps)
