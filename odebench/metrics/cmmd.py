"""CMMD (Jayasumana et al. 2024, "Rethinking FID"): MMD between CLIP image embeddings, Gaussian RBF kernel.

    CMMD = 1000 * MMD^2(X, Y),  k(x, y) = exp(-||x - y||^2 / (2 sigma^2)),  sigma = 10,

with x, y the L2-normalised image embeddings (the projection output) of CLIP ViT-L/14 at 336 px with
OpenAI's weights (open_clip "ViT-L-14-336-quickgelu"/openai; the same model as transformers'
`openai/clip-vit-large-patch14-336` CLIPVisionModelWithProjection `image_embeds`). The weights are
resolved as for CLIP score (odebench.metrics.clip): open_clip's copy in the Hugging Face repo
`timm/vit_large_patch14_clip_336.openai` under `$ODEBENCH_WEIGHTS/<repo name>/` or in the HF cache,
OpenAI's `ViT-L-14-336px.pt` in `$ODEBENCH_WEIGHTS`, or an explicit path. Nothing downloads.

Preprocessing follows the reference implementation (google-research/cmmd and its PyTorch port):
uint8 image -> centre crop to a square (PIL box (w - l)//2, (h - l)//2) -> PIL bicubic resize to the
model's input size (antialiased) -> /255 -> CLIP mean/std. (open_clip's own transform resizes before
it crops; for square images, e.g. SDXL's, the two are the same.)

The estimator is the unbiased MMD^2 (Gretton et al. 2012, eq. 3: the within-set means leave out
i = j), as the paper defines CMMD. The reference code computes the biased V-statistic instead (the
within-set means include the diagonal, whose kernel is 1); `estimator="biased"` reproduces it. The
two differ by about (1 - mean k(x, x'))(1/m + 1/n) x 1000, small next to the values the paper
reports (0.1 to a few units) for sets of a thousand images. The standard error is the two-sample
jackknife (Arvesen 1969), in closed form from kernel row sums, so nothing costs more than the
estimate; the kernel sums are taken in row chunks, so 10,000 images never need a 10,000^2 matrix.
"""
from __future__ import annotations

import math
import os

import numpy as np

from odebench.metrics.registry import MetricValue, register, value

SIGMA = 10.0  # the paper's bandwidth
SCALE = 1000.0  # the paper's reporting scale
DEFAULT_ARCH = "ViT-L-14-336-quickgelu"
DEFAULT_PRETRAINED = "openai"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
ESTIMATORS = ("unbiased", "biased")

register("cmmd", False, "CMMD: 1000 x MMD^2 of CLIP ViT-L/14-336 image embeddings, Gaussian RBF kernel sigma = 10")


def _rbf_sums(a: np.ndarray, b: np.ndarray, gamma: float, same: bool, chunk_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column sums of K = exp(-gamma ||a_i - b_j||^2), leaving out the diagonal when `same`."""
    a_sq, b_sq = np.einsum("ij,ij->i", a, a), np.einsum("ij,ij->i", b, b)
    rows, cols = np.zeros(len(a)), np.zeros(len(b))
    step = max(1, chunk_bytes // (8 * max(len(b), 1)))
    for s in range(0, len(a), step):
        d = a[s:s + step] @ b.T
        d *= -2.0
        d += a_sq[s:s + step, None]
        d += b_sq[None, :]
        np.maximum(d, 0.0, out=d)
        k = np.exp(-gamma * d, out=d)
        if same:  # k(x_i, x_i) = 1 exactly; it is not part of the off-diagonal sums
            k[np.arange(k.shape[0]), np.arange(s, s + k.shape[0])] = 0.0
        rows[s:s + step] = k.sum(axis=1)
        cols += k.sum(axis=0)
    return rows, cols


def _mmd2(sxx, m, syy, n, sxy, estimator: str):
    """MMD^2 from off-diagonal within-set kernel sums sxx, syy (diagonal kernel = 1) and the cross sum sxy."""
    if estimator == "unbiased":
        return sxx / (m * (m - 1)) + syy / (n * (n - 1)) - 2.0 * sxy / (m * n)
    return (sxx + m) / (m * m) + (syy + n) / (n * n) - 2.0 * sxy / (m * n)


def mmd2_rbf(x: np.ndarray, y: np.ndarray, sigma: float = SIGMA, estimator: str = "unbiased",
             chunk_bytes: int = 1 << 27) -> tuple[float, float]:
    """(MMD^2, jackknife stderr) between the rows of x (m, d) and y (n, d) with the Gaussian RBF kernel
    exp(-||x - y||^2 / (2 sigma^2)) (Gretton et al. 2012, eq. 3 unbiased / eq. 5 biased)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"embedding sets of shapes {x.shape} and {y.shape} cannot be compared")
    m, n = len(x), len(y)
    if min(m, n) < 2:
        raise ValueError(f"MMD^2 needs at least 2 points a side, got {m} and {n}")
    gamma = 1.0 / (2.0 * sigma * sigma)
    rx, _ = _rbf_sums(x, x, gamma, True, chunk_bytes)
    ry, _ = _rbf_sums(y, y, gamma, True, chunk_bytes)
    cx, cy = _rbf_sums(x, y, gamma, False, chunk_bytes)  # row sums per x_i, column sums per y_j
    sxx, syy, sxy = rx.sum(), ry.sum(), cx.sum()
    est = float(_mmd2(sxx, m, syy, n, sxy, estimator))
    if min(m, n) < 3:
        return est, float("nan")
    # leave-one-out values: dropping x_i removes its row and column of Kxx and its row of Kxy
    loo_x = _mmd2(sxx - 2.0 * rx, m - 1, syy, n, sxy - cx, estimator)
    loo_y = _mmd2(sxx, m, syy - 2.0 * ry, n - 1, sxy - cy, estimator)
    var = (m - 1) / m * ((loo_x - loo_x.mean()) ** 2).sum() + (n - 1) / n * ((loo_y - loo_y.mean()) ** 2).sum()
    return est, float(math.sqrt(var))


def cmmd_value(embeddings: np.ndarray, ref_embeddings: np.ndarray, embedding_identity: str, ref_set: str,
               estimator: str = "unbiased", name: str = "cmmd") -> MetricValue:
    """CMMD of the samples' embeddings against the reference set's: 1000 x MMD^2, sigma = 10, jackknife stderr."""
    est, se = mmd2_rbf(embeddings, ref_embeddings, SIGMA, estimator)
    form = ("unbiased MMD^2 (within-set means without i = j; the paper's definition)" if estimator == "unbiased"
            else "biased MMD^2 (V-statistic, as the reference code)")
    ident = (f"{embedding_identity}; Gaussian RBF kernel sigma = {SIGMA:g}; {form}; x{SCALE:g}; two-sample "
             f"jackknife stderr; vs {len(ref_embeddings)} {ref_set}")
    return value(name, SCALE * est, SCALE * se, ident, len(embeddings))


class CMMDEmbeddings:
    """FeatureExtractor "cmmd": L2-normalised CLIP image embeddings with the reference code's preprocessing."""

    name = "cmmd"

    def __init__(self, weights: str | os.PathLike | None = None, arch: str | None = None, *, device=None,
                 batch_size: int = 32):
        from odebench.metrics.clip import ClipScorer

        arch = arch or DEFAULT_ARCH
        self.clip = ClipScorer(arch, DEFAULT_PRETRAINED if weights is None else weights, device=device,
                               batch_size=batch_size, flag="--cmmd-weights", what="CMMD")
        cfg = getattr(self.clip.model.visual, "preprocess_cfg", None) or {}
        size = cfg.get("size") or self.clip.model.visual.image_size
        self.size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean = np.asarray(cfg.get("mean") or OPENAI_MEAN, np.float32)
        self.std = np.asarray(cfg.get("std") or OPENAI_STD, np.float32)
        self.identity = (f"{self.clip.backbone}; uint8 -> centre crop to a square -> PIL bicubic resize to "
                         f"{self.size} -> /255 -> mean {tuple(round(float(v), 4) for v in self.mean)}, std "
                         f"{tuple(round(float(v), 4) for v in self.std)} (the CMMD reference code); L2-normalised image embedding")

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float32 (N, 3, S, S) model input, as the reference code prepares it."""
        from PIL import Image

        from odebench.metrics.features import check_images

        out = np.empty((len(images), 3, self.size, self.size), np.float32)
        for i, img in enumerate(check_images(images)):
            h, w = img.shape[:2]
            side = min(h, w)
            top, left = (h - side) // 2, (w - side) // 2
            im = Image.fromarray(img).crop((left, top, left + side, top + side)).resize((self.size, self.size), Image.BICUBIC)
            arr = np.asarray(im, np.float32) / 255.0
            out[i] = ((arr - self.mean) / self.std).transpose(2, 0, 1)
        return out

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float64 (N, D) unit-norm image embeddings."""
        import torch

        out = []
        bs = self.clip.batch_size
        for start in range(0, len(images), bs):
            x = torch.from_numpy(self.preprocess(images[start:start + bs]))
            with torch.no_grad():
                out.append(self.clip.model.encode_image(x.to(self.clip.device)).to("cpu", torch.float64).numpy())
        e = np.concatenate(out) if out else np.zeros((0, self.clip.embed_dim))
        return e / np.linalg.norm(e, axis=1, keepdims=True)
