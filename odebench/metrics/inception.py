"""Inception-v3 pool3 features with clean-fid's conventions, and FID.

Pipeline per image (clean-fid "clean" mode, Parmar et al. 2022): the uint8 RGB image goes through
clean-fid's own resizer (`cleanfid.resize.build_resizer("clean")`: PIL bicubic resize of each
channel as a float32 image to 299x299, clipped to [0, 255], no quantisation); the float 0..255
batch is fed to the TorchScript Inception-v3 that clean-fid uses (`inception-2015-12-05.pt`, the
TF-FID network exported by NVIDIA) exactly as `cleanfid.inception_torchscript.InceptionV3W` does
with resize_inside=False: x -> (x - 128) / 128 -> `base.layers` -> 2048-d pool3 features.

The weights are never downloaded: they are resolved locally (odebench.weights) and loaded with
torch.jit.load(map_location="cpu"). Any callable taking float (N, 3, 299, 299) in 0..255 and
returning (N, 2048) can be injected instead (tests use a tiny one).
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from odebench.errors import OdebenchError
from odebench.metrics.features import check_images
from odebench.metrics.fd import fd_bootstrap_stderr, fd_features
from odebench.metrics.registry import MetricValue, register, value
from odebench.weights import resolve_weights, weights_tag

INCEPTION_FILE = "inception-2015-12-05.pt"  # clean-fid's / StyleGAN2-ADA's TorchScript Inception
RESIZE_IDENTITY = "clean-fid clean resize 299 (PIL bicubic per channel in float32, clip 0..255)"
FEATURE_IDENTITY = "pool3 2048"

register("fid", False, "Frechet distance in Inception-v3 pool3 space (clean-fid clean mode) to a reference set")


def _default_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _CleanFidTorchscript:
    """The TorchScript file called as clean-fid's InceptionV3W(resize_inside=False) calls it."""

    def __init__(self, module):
        self.module = module
        # the real file carries the network as `.layers`, fed with (x - 128) / 128; a module without
        # it is taken to accept 0..255 input itself
        self.layers = getattr(module, "layers", None)

    def __call__(self, x):
        if self.layers is None:
            return self.module(x)
        return self.layers.forward((x - 128) / 128).reshape(x.shape[0], -1)

    def to(self, device):
        self.module = self.module.to(device)
        self.layers = getattr(self.module, "layers", None)
        return self


def load_inception(path: str | os.PathLike) -> _CleanFidTorchscript:
    import torch

    try:
        module = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as e:  # not a TorchScript archive, truncated download, ...
        raise OdebenchError(f"cannot load Inception weights '{path}' as TorchScript ({type(e).__name__}); "
                            f"expected clean-fid's {INCEPTION_FILE}") from None
    return _CleanFidTorchscript(module)


class InceptionFeatures:
    """FeatureExtractor: uint8 (N, H, W, 3) -> float64 (N, 2048) Inception pool3 features."""

    name = "inception"

    def __init__(self, weights: str | os.PathLike | None = None, *, model: Callable | None = None,
                 model_name: str | None = None, device=None, batch_size: int = 64, flag: str = "--fid-weights"):
        import torch

        self.device = torch.device(device) if device is not None else _default_device()
        self.batch_size = int(batch_size)
        if model is not None:
            self.model = model
            backbone = f"injected model {model_name or type(model).__name__}"
        else:
            path = resolve_weights(weights if weights is not None else INCEPTION_FILE, "FID", flag=flag,
                                   describe="Inception weights", source="clean-fid's TorchScript Inception-v3")
            if path.is_dir():
                path = resolve_weights(path / INCEPTION_FILE, "FID", flag=flag, describe="Inception weights")
            self.model = load_inception(path).to(self.device)
            backbone = f"Inception-v3 TorchScript {weights_tag(path)}"
        self.identity = f"{backbone}; {RESIZE_IDENTITY}; {FEATURE_IDENTITY}"
        self._resizer = None

    def resize(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float32 (N, 3, 299, 299) in 0..255, via clean-fid's resizer."""
        if self._resizer is None:
            from cleanfid.resize import build_resizer

            self._resizer = build_resizer("clean")
        images = check_images(images)
        out = np.empty((len(images), 3, 299, 299), dtype=np.float32)
        for i, img in enumerate(images):
            out[i] = self._resizer(img).transpose(2, 0, 1)
        return out

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch

        images = check_images(images)
        feats = []
        for start in range(0, len(images), self.batch_size):
            x = torch.from_numpy(self.resize(images[start:start + self.batch_size])).to(self.device)
            with torch.no_grad():
                f = self.model(x)
            f = torch.as_tensor(f).reshape(x.shape[0], -1)
            if f.shape[1] != 2048:
                raise OdebenchError(f"Inception model returned {f.shape[1]} features per image, expected 2048")
            feats.append(f.detach().to("cpu", torch.float64).numpy())
        return np.concatenate(feats) if feats else np.zeros((0, 2048))


def fd_value(name: str, features: np.ndarray, ref_features: np.ndarray, feature_identity: str, ref_set: str,
             stderr_reps: int = 10, seed: int = 0) -> MetricValue:
    """A Frechet-distance MetricValue (float64 eigen-trace FD; seeded bootstrap stderr over both sets)."""
    a, b = np.asarray(features, np.float64), np.asarray(ref_features, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise OdebenchError(f"{name}: feature sets of shapes {a.shape} and {b.shape} cannot be compared")
    if len(a) < 2 or len(b) < 2:
        raise OdebenchError(f"{name}: need at least 2 images in each set, got {len(a)} and {len(b)}")
    err = fd_bootstrap_stderr(a, b, reps=stderr_reps, seed=seed) if stderr_reps > 1 else None
    ident = (f"{feature_identity}; FD float64 eigen-trace, raw scale; vs {len(b)} {ref_set}"
             + (f"; bootstrap stderr ({stderr_reps} seeded reps)" if err is not None else ""))
    return value(name, fd_features(a, b), err, ident, len(a))


def fid(features: np.ndarray, ref_features: np.ndarray, ref_set: str, extractor_identity: str,
        stderr_reps: int = 10) -> MetricValue:
    """FID from Inception features of the samples and of the reference set (`ref_set` names it)."""
    return fd_value("fid", features, ref_features, extractor_identity, ref_set, stderr_reps)
