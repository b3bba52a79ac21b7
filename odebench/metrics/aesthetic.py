"""LAION "improved aesthetic predictor" score (christophschuhmann/improved-aesthetic-predictor).

The predictor is an MLP without activations on the L2-normalised OpenAI CLIP ViT-L/14 image
embedding (768-d): Linear(768,1024), Dropout(0.2), Linear(1024,128), Dropout(0.2), Linear(128,64),
Dropout(0.1), Linear(64,16), Linear(16,1); state-dict keys layers.0/2/4/6/7. Weights file:
`sac+logos+ava1-l14-linearMSE.pth`, loaded with torch.load(weights_only=True) so a file carrying
pickled code is refused. The MLP is evaluated in float64 (eval mode: dropout off).
"""
from __future__ import annotations

import os

import numpy as np

from odebench.errors import OdebenchError
from odebench.metrics.registry import MetricValue, register, value
from odebench.metrics.stats import mean_stderr
from odebench.weights import resolve_weights, weights_tag

AESTHETIC_FILE = "sac+logos+ava1-l14-linearMSE.pth"
LINEAR_SHAPES = {0: (1024, 768), 2: (128, 1024), 4: (64, 128), 6: (16, 64), 7: (1, 16)}
_DROPOUT = {1: 0.2, 3: 0.2, 5: 0.1}

register("aesthetic", True, "LAION improved aesthetic predictor (1-10 scale) on CLIP ViT-L/14 image embeddings")


def build_mlp():
    import torch.nn as nn

    layers = []
    for i in range(8):
        if i in LINEAR_SHAPES:
            out_f, in_f = LINEAR_SHAPES[i]
            layers.append(nn.Linear(in_f, out_f))
        else:
            layers.append(nn.Dropout(_DROPOUT[i]))
    mlp = nn.Module()
    mlp.layers = nn.Sequential(*layers)
    return mlp


def load_aesthetic_mlp(path: str | os.PathLike):
    """The predictor MLP (float64, eval mode) from a state-dict file; refuses pickled code."""
    from odebench.fileio import load_torch_tensors

    sd = load_torch_tensors(path, "aesthetic predictor weights file")
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise OdebenchError(f"aesthetic weights '{path}' hold a {type(sd).__name__}, expected a state dict")
    expected = {f"layers.{i}.{p}" for i in LINEAR_SHAPES for p in ("weight", "bias")}
    if set(sd) != expected:
        raise OdebenchError(f"aesthetic weights '{path}' have keys {sorted(sd)[:6]}..., expected layers.0/2/4/6/7 weight+bias")
    for i, (o, n) in LINEAR_SHAPES.items():
        if tuple(sd[f"layers.{i}.weight"].shape) != (o, n) or tuple(sd[f"layers.{i}.bias"].shape) != (o,):
            raise OdebenchError(f"aesthetic weights '{path}': layers.{i} has shape "
                                f"{tuple(sd[f'layers.{i}.weight'].shape)}, expected {(o, n)}")
    mlp = build_mlp()
    mlp.load_state_dict(sd, strict=True)
    return mlp.double().eval()


class AestheticScorer:
    """Aesthetic score of images: LAION MLP on L2-normalised OpenAI CLIP ViT-L/14 image embeddings.

    `clip` is a ClipScorer (default: ClipScorer(), the OpenAI ViT-L/14 weights) with 768-d embeddings.
    """

    def __init__(self, weights: str | os.PathLike | None = None, clip=None, *, flag: str = "--aesthetic-weights"):
        path = resolve_weights(weights if weights is not None else AESTHETIC_FILE, "aesthetic score", flag=flag,
                               describe="LAION aesthetic predictor weights")
        if path.is_dir():
            path = resolve_weights(path / AESTHETIC_FILE, "aesthetic score", flag=flag,
                                   describe="LAION aesthetic predictor weights")
        self.mlp = load_aesthetic_mlp(path)
        if clip is None:
            from odebench.metrics.clip import ClipScorer

            clip = ClipScorer()
        if getattr(clip, "embed_dim", 768) != 768:
            raise OdebenchError(f"the aesthetic predictor needs 768-d CLIP ViT-L/14 embeddings, "
                                f"got {clip.embed_dim}-d from {clip.arch}")
        self.clip = clip
        self.identity = (f"LAION improved aesthetic predictor MLP {weights_tag(path)} (float64); input: L2-normalised "
                         f"image embedding of {clip.backbone}; {clip.preprocess_identity}; raw predictor scale (~1-10)")

    def scores_from_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        """Per-image scores from image embeddings (normalised here again, so raw ones work too)."""
        import torch

        e = np.asarray(embeddings, np.float64)
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        with torch.no_grad():
            return self.mlp.layers(torch.from_numpy(e)).numpy()[:, 0]

    def scores(self, images: np.ndarray) -> np.ndarray:
        return self.scores_from_embeddings(self.clip.image_embeddings(images))

    def aesthetic_score(self, images: np.ndarray, image_embeddings: np.ndarray | None = None) -> MetricValue:
        """Mean predicted aesthetic score with its standard error."""
        s = self.scores(images) if image_embeddings is None else self.scores_from_embeddings(image_embeddings)
        m, se = mean_stderr(s)
        return value("aesthetic", m, se, f"{self.identity}; mean over {len(s)} images, stderr of mean", len(s))
