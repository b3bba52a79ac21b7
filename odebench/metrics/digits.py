"""The digits domain's stand-ins for the image-metric backbones: a small CNN classifier on 8x8 digits.

One network, trained on the training split only (`python -m baselines.digits_classifier`) and
shipped as `odebench/assets/digits/classifier.safetensors` with a `classifier.json` sidecar
(architecture, training record, held-out accuracy, weights_sha256), serves three roles:

* `DigitsFeatures` ("digits") -- the Inception/DINOv2 analogue: the penultimate layer (64-d, after
  ReLU) is the feature space for FD/KID (`odebench.metrics.fd`) against held-out real digits.
* `label_adherence` -- the CLIP-score analogue: CLIP score asks whether an image matches the prompt
  it was generated for; here the "prompt" is the requested class, and the metric is the fraction
  of samples the classifier assigns to it (argmax). Stderr is binomial, sqrt(p(1-p)/n).
* `confidence` -- the aesthetic-score analogue: a no-reference, per-image "how much does this look
  like a clean digit" score, the classifier's maximum softmax probability, averaged over samples
  (stderr of the mean). Blurry, ambiguous or off-manifold digits score low regardless of label.

Preprocessing is fixed and named in every identity string: uint8 RGB (N, 8, 8, 3) -> channel 0
(the grey level; grey images are replicated to three channels upstream) / 255 as float32
(N, 1, 8, 8), no resize. The weights are checked against the sidecar's sha256 on load. The network
runs in float32 (as trained) in chunks of 4,096 images: the same input gives bitwise the same
output, while a different batch size may pick another CPU conv kernel and differ at float32
round-off (~1e-6 relative).

torch is imported here at module level; other modules import this one lazily.
"""
from __future__ import annotations

import hashlib
import math
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
import torch
from torch import nn

from odebench.errors import OdebenchError
from odebench.fileio import read_json_object
from odebench.metrics.features import check_images
from odebench.metrics.registry import MetricValue, register, value
from odebench.metrics.stats import mean_stderr

SIDECAR_FORMAT = "odebench-digits-classifier"
SIDECAR_VERSION = 1
WEIGHTS_NAME = "classifier.safetensors"
SIDECAR_NAME = "classifier.json"
IMAGE_SIZE = 8
NUM_CLASSES = 10
PREPROCESSING = "uint8 RGB -> channel 0 /255 at 8x8, no resize"
FEATURE_LAYER = "penultimate fc (after ReLU)"
_BATCH = 4096

register("label_adherence", True, "fraction of samples the digits classifier assigns (argmax) to the requested class "
         "(CLIP-score analogue)")
register("confidence", True, "mean maximum softmax probability of the digits classifier (aesthetic-score analogue)")


class DigitsNet(nn.Module):
    """conv3x3(1->c1) ReLU, conv3x3(c1->c2) ReLU, maxpool2 (8->4), conv3x3(c2->c3) ReLU, maxpool2 (4->2),
    flatten, fc(4*c3 -> feature_dim) ReLU [features], fc(feature_dim -> 10) [logits].
    Input: float (N, 1, 8, 8) in [0, 1]."""

    def __init__(self, channels: tuple[int, int, int] | list[int] = (32, 64, 64), feature_dim: int = 64,
                 num_classes: int = NUM_CLASSES):
        super().__init__()
        c1, c2, c3 = (int(c) for c in channels)
        self.config = {"kind": "digits-cnn", "channels": [c1, c2, c3], "feature_dim": int(feature_dim),
                       "num_classes": int(num_classes), "input": [1, IMAGE_SIZE, IMAGE_SIZE]}
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c3 * (IMAGE_SIZE // 4) ** 2, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "DigitsNet":
        if config.get("kind") != "digits-cnn":
            raise OdebenchError(f"digits classifier: unknown architecture kind {config.get('kind')!r}")
        return cls(config["channels"], config["feature_dim"], config.get("num_classes", NUM_CLASSES))


def asset_dir():
    """Where the shipped classifier lives (a Traversable; tests point this elsewhere)."""
    return resources.files("odebench.assets").joinpath("digits")


def load_digits_net() -> tuple[DigitsNet, dict[str, Any]]:
    """The shipped classifier in eval mode and its sidecar; the weights' sha256 is verified."""
    from safetensors.torch import load as st_load

    directory = asset_dir()
    side_file, weights_file = directory.joinpath(SIDECAR_NAME), directory.joinpath(WEIGHTS_NAME)
    hint = "train it with `python -m baselines.digits_classifier`"
    if not side_file.is_file():
        raise OdebenchError(f"digits classifier sidecar not found: {side_file} ({hint})")
    if not weights_file.is_file():
        raise OdebenchError(f"digits classifier weights not found: {weights_file} ({hint})")
    side = read_json_object(side_file, "digits classifier sidecar")
    if side.get("format") != SIDECAR_FORMAT:
        raise OdebenchError(f"{side_file}: not a digits classifier sidecar (\"format\" must be \"{SIDECAR_FORMAT}\")")
    blob = weights_file.read_bytes()
    sha = hashlib.sha256(blob).hexdigest()
    if sha != side.get("weights_sha256"):
        raise OdebenchError(f"{weights_file}: weights do not match the checksum in {SIDECAR_NAME} (file changed or corrupt)")
    try:
        net = DigitsNet.from_config(side["architecture"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise OdebenchError(f"{side_file}: bad architecture in digits classifier sidecar ({type(e).__name__}: {e})") from None
    try:
        net.load_state_dict(st_load(blob))
    except Exception as e:  # safetensors header errors, missing/unexpected keys, shape mismatches
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OdebenchError(f"{weights_file}: cannot load digits classifier weights ({first})") from None
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, side


@lru_cache(maxsize=1)
def _default_net() -> tuple[DigitsNet, dict[str, Any]]:
    return load_digits_net()


def network_identity(side: dict[str, Any]) -> str:
    arch = side["architecture"]
    return (f"digits-cnn {arch['channels']}/fc{arch['feature_dim']} trained on the digits training split, "
            f"weights sha256:{side['weights_sha256'][:12]}")


def preprocess(images: np.ndarray) -> torch.Tensor:
    """uint8 RGB (N, 8, 8, 3) -> float32 (N, 1, 8, 8) in [0, 1] from channel 0."""
    images = check_images(images)
    if images.shape[1:3] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"digits classifier takes 8x8 images (no resize), got {images.shape[1]}x{images.shape[2]}")
    return torch.from_numpy(np.ascontiguousarray(images[..., 0], dtype=np.float32)[:, None] / 255.0)


@torch.no_grad()
def _run(net: DigitsNet, x: torch.Tensor, what: str) -> torch.Tensor:
    fn = net.features if what == "features" else net
    outs = [fn(x[i:i + _BATCH]) for i in range(0, x.shape[0], _BATCH)]
    return torch.cat(outs) if outs else torch.zeros(0, net.head.in_features if what == "features" else net.head.out_features)


class DigitsFeatures:
    """FeatureExtractor "digits": penultimate-layer features of the shipped digits classifier."""

    name = "digits"

    def __init__(self, net: DigitsNet | None = None, sidecar: dict[str, Any] | None = None):
        if net is None:
            net, sidecar = _default_net()
        self.net, self.sidecar = net, sidecar or {}
        sha = self.sidecar.get("weights_sha256", "unknown")
        base = network_identity(self.sidecar) if "architecture" in self.sidecar else f"digits-cnn sha256:{sha[:12]}"
        self.identity = f"{base}; preprocessing: {PREPROCESSING}; feature layer: {FEATURE_LAYER}, {net.head.in_features}-d"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return _run(self.net, preprocess(images), "features").numpy().astype(np.float64)


def label_scores(images: np.ndarray, labels: np.ndarray, net: DigitsNet | None = None) -> dict[str, np.ndarray]:
    """Per-sample label hit (argmax == requested label, 0/1) and confidence (max softmax probability)
    of uint8 RGB (N, 8, 8, 3) samples generated for `labels` (N,)."""
    if net is None:
        net, _ = _default_net()
    x = preprocess(images)
    labels = np.asarray(labels)
    n = x.shape[0]
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"expected {n} integer labels, got {labels.dtype} {labels.shape}")
    if n == 0:
        raise ValueError("label_metrics needs at least one image")
    if labels.min() < 0 or labels.max() >= net.head.out_features:
        raise ValueError(f"labels must lie in 0..{net.head.out_features - 1}")
    probs = torch.softmax(_run(net, x, "logits").double(), dim=1).numpy()
    return {"label_adherence": (probs.argmax(axis=1) == labels).astype(np.float64), "confidence": probs.max(axis=1)}


def label_metrics(images: np.ndarray, labels: np.ndarray, net: DigitsNet | None = None,
                  sidecar: dict[str, Any] | None = None, scores: dict[str, np.ndarray] | None = None) -> dict[str, MetricValue]:
    """label_adherence and confidence of uint8 RGB (N, 8, 8, 3) samples generated for `labels` (N,)
    (means of `label_scores`; pass `scores` when they are already computed)."""
    if net is None:
        net, sidecar = _default_net()
    if scores is None:
        scores = label_scores(images, labels, net)
    n = len(scores["confidence"])
    p = float(scores["label_adherence"].mean())
    conf, conf_err = mean_stderr(scores["confidence"])
    net_id = network_identity(sidecar) if sidecar and "architecture" in sidecar else "digits-cnn"
    return {
        "label_adherence": value("label_adherence", p, math.sqrt(p * (1 - p) / n),
                                 f"{net_id}; argmax class == requested label; binomial stderr; {PREPROCESSING}", n),
        "confidence": value("confidence", conf, conf_err,
                            f"{net_id}; mean max softmax probability; stderr of the mean; {PREPROCESSING}", n),
    }
