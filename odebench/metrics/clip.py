"""CLIP score (and CLIP image features) through open_clip, from local weights only.

Default backbone: open_clip "ViT-L-14-quickgelu" with OpenAI's weights -- the model the LAION
aesthetic predictor was trained on and the usual CLIP-score backbone. The weights are looked up as
open_clip's own copy, `open_clip_pytorch_model.bin` (or `open_clip_model.safetensors`) of the
Hugging Face repo `timm/vit_large_patch14_clip_224.openai`, in `$ODEBENCH_WEIGHTS/<repo name>/` or
the Hugging Face cache; OpenAI's original TorchScript file `ViT-L-14.pt` in `$ODEBENCH_WEIGHTS` (or
given as a path) works too and gives the same weights. Other backbones: any open_clip architecture
with a pretrained tag (e.g. arch="ViT-g-14", pretrained="laion2b_s12b_b42k") whose hub repo is in the
same places, or an explicit weights path. Nothing is downloaded.

Images go through open_clip's validation transform from uint8 via PIL (for the default: resize the
shorter side to 224 with PIL bicubic, centre crop 224, OpenAI mean/std).

CLIP score = mean over image/prompt pairs of the raw cosine of the L2-normalised image and text
embeddings (about 0.2-0.35 for matching pairs), with the standard error of the mean.
`clip_score(..., torchmetrics_form=True)` gives torchmetrics' max(100 * mean(cos), 0) instead (the clamp
comes after the average, as torchmetrics.functional.multimodal.clip_score computes it).
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from odebench.errors import OdebenchError
from odebench.metrics.features import check_images
from odebench.metrics.inception import fd_value
from odebench.metrics.registry import MetricValue, register, value
from odebench.metrics.stats import mean_stderr
from odebench.weights import WEIGHTS_ENV, resolve_weights, weights_tag

DEFAULT_ARCH = "ViT-L-14-quickgelu"
DEFAULT_PRETRAINED = "openai"
HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # open_clip's preference

register("clip_score", True, "mean cosine similarity of CLIP image and prompt embeddings")
register("fd_clip", False, "Frechet distance in CLIP image-embedding space to a reference set")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in z.namelist())


def _checkpoint_in(folder: Path, names: Sequence[str] = HF_WEIGHT_FILES) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def resolve_clip_weights(arch: str, pretrained: str | os.PathLike | None, flag: str = "--clip-weights",
                         what: str = "CLIP score") -> tuple[Path, str]:
    """(weights file, label) for an open_clip architecture and a pretrained tag or local path; `what`
    names the metric in errors."""
    from open_clip import get_pretrained_cfg

    pretrained = DEFAULT_PRETRAINED if pretrained is None else pretrained
    tag_cfg = get_pretrained_cfg(arch, os.fspath(pretrained)) if isinstance(pretrained, str) else {}
    if not tag_cfg:  # a path (or a typo): resolve it as a path
        try:
            p = resolve_weights(pretrained, what, flag=flag, describe=f"CLIP weights for {arch}")
        except OdebenchError:
            from open_clip import list_pretrained_tags_by_model

            tags = list_pretrained_tags_by_model(arch)
            s = os.fspath(pretrained)
            if tags and "/" not in s and "." not in s:
                raise OdebenchError(f"{what}: '{s}' is neither a weights file nor a pretrained tag of {arch} "
                                    f"(tags: {', '.join(tags)})") from None
            raise
        if p.is_dir():
            ckpt = _checkpoint_in(p)
            if ckpt is None:
                raise OdebenchError(f"{what}: no {' or '.join(HF_WEIGHT_FILES)} in '{p}'")
            p = ckpt
        return p, "local weights"

    repo, hub_file = os.path.split(tag_cfg.get("hf_hub", ""))  # open_clip's convention: "org/repo/[file]"
    names = (hub_file,) if hub_file else HF_WEIGHT_FILES
    url_file = os.path.basename(tag_cfg.get("url", "")) or None
    if repo:
        try:
            folder = resolve_weights(repo, what)
            ckpt = _checkpoint_in(folder, names)
            if ckpt is not None:
                return ckpt, f"{arch}/{pretrained} ({repo})"
        except OdebenchError:
            pass
    if url_file:
        try:
            return resolve_weights(url_file, what), f"{arch}/{pretrained}"
        except OdebenchError:
            pass
    name = repo.split("/", 1)[1] if repo else arch
    if not repo and not url_file:
        raise OdebenchError(f"{what}: open_clip knows no source for {arch}/{pretrained}; pass {flag} PATH")
    places = []
    if repo:
        places.append(f"put {names[-1]} (from {repo}) in ${WEIGHTS_ENV}/{name}/")
    if url_file:
        places.append(f"put {url_file} in ${WEIGHTS_ENV}")
    if repo:
        places.append(f"have {repo} in the Hugging Face cache")
    raise OdebenchError(f"{what} needs {arch}/{pretrained} weights: {', or '.join(places)}, or pass {flag} PATH; "
                        f"nothing is downloaded")


def _preprocess_identity(model) -> str:
    cfg = getattr(getattr(model, "visual", None), "preprocess_cfg", None) or {}
    size = cfg.get("size", "?")
    mean = tuple(round(float(m), 4) for m in cfg.get("mean", ()))
    std = tuple(round(float(s), 4) for s in cfg.get("std", ()))
    return (f"open_clip val transform from uint8 via PIL: resize ({cfg.get('resize_mode', '?')}) to {size} with "
            f"{cfg.get('interpolation', '?')}, centre crop, mean {mean}, std {std}")


class ClipScorer:
    """open_clip CLIP model: image/text embeddings, CLIP score, and a FeatureExtractor ("clip").

    As a FeatureExtractor it returns the raw (unnormalised) image embeddings, as clean-fid's CLIP
    features do; pass normalize_features=True for unit vectors instead.
    """

    name = "clip"

    def __init__(self, arch: str = DEFAULT_ARCH, pretrained: str | os.PathLike | None = None, *, device=None,
                 batch_size: int = 32, normalize_features: bool = False, flag: str = "--clip-weights",
                 what: str = "CLIP score"):
        import open_clip
        import torch

        self.arch = arch
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = int(batch_size)
        self.normalize_features = normalize_features
        if open_clip.get_model_config(arch) is None:
            raise OdebenchError(f"unknown open_clip architecture '{arch}'")
        path, label = resolve_clip_weights(arch, pretrained, flag, what)
        tag = DEFAULT_PRETRAINED if pretrained is None else pretrained
        tag_cfg = open_clip.get_pretrained_cfg(arch, tag) if isinstance(tag, str) else {}
        pp = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
        kw = dict(image_mean=pp.get("mean"), image_std=pp.get("std"), image_interpolation=pp.get("interpolation"),
                  image_resize_mode=pp.get("resize_mode"), precision="fp32", device="cpu")
        try:
            if _is_torchscript(path):  # OpenAI's original archive: take its state dict
                model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None, **kw)
                sd = torch.jit.load(str(path), map_location="cpu").state_dict()
                known = set(model.state_dict())
                for k in list(sd):  # archive-only entries: OpenAI's ints, and masks open_clip rebuilds
                    if k not in known and (k in ("input_resolution", "context_length", "vocab_size")
                                           or k.endswith("attn_mask")):
                        del sd[k]
                model.load_state_dict(sd, strict=True)
            else:
                model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(path),
                                                                             weights_only=True, **kw)
        except OdebenchError:
            raise
        except pickle.UnpicklingError:  # torch's text would suggest retrying with weights_only=False: never
            raise OdebenchError(f"refusing to load CLIP weights '{path}': a pickle holding objects other than tensors "
                                "(possibly code); odebench reads safetensors or plain tensor state dicts only") from None
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise OdebenchError(f"cannot load CLIP weights '{path}' into {arch}: {msg[:300]}") from None
        self.model = model.eval().to(self.device)
        self.preprocess = preprocess
        try:
            self.tokenizer = open_clip.get_tokenizer(arch)
        except Exception as e:
            raise OdebenchError(f"cannot build the {arch} tokenizer offline: {type(e).__name__}") from None
        self.embed_dim = int(open_clip.get_model_config(arch)["embed_dim"])
        self.backbone = f"open_clip {arch}, {label}, {weights_tag(path)}"
        self.preprocess_identity = _preprocess_identity(self.model)
        feats = "L2-normalised" if normalize_features else "raw (unnormalised)"
        self.identity = f"{self.backbone}; {self.preprocess_identity}; {feats} image embedding"

    # -- embeddings -------------------------------------------------------------------------------
    def _encode_images(self, images: np.ndarray) -> np.ndarray:
        import torch
        from PIL import Image

        images = check_images(images)
        out = []
        for start in range(0, len(images), self.batch_size):
            x = torch.stack([self.preprocess(Image.fromarray(img)) for img in images[start:start + self.batch_size]])
            with torch.no_grad():
                out.append(self.model.encode_image(x.to(self.device)).to("cpu", torch.float64).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim))

    def _encode_texts(self, prompts: Sequence[str]) -> np.ndarray:
        import torch

        prompts = [str(p) for p in prompts]
        out = []
        for start in range(0, len(prompts), self.batch_size):
            tokens = self.tokenizer(prompts[start:start + self.batch_size])
            with torch.no_grad():
                out.append(self.model.encode_text(tokens.to(self.device)).to("cpu", torch.float64).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim))

    @staticmethod
    def _l2(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def image_embeddings(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float64 (N, D) L2-normalised image embeddings."""
        return self._l2(self._encode_images(images))

    def text_embeddings(self, prompts: Sequence[str]) -> np.ndarray:
        """N prompts -> float64 (N, D) L2-normalised text embeddings."""
        return self._l2(self._encode_texts(prompts))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """FeatureExtractor: uint8 (N, H, W, 3) -> float64 (N, D) image embeddings (see class doc)."""
        e = self._encode_images(images)
        return self._l2(e) if self.normalize_features else e

    # -- metrics ----------------------------------------------------------------------------------
    def cosines(self, images: np.ndarray, prompts: Sequence[str], image_embeddings: np.ndarray | None = None) -> np.ndarray:
        """Per-pair cosine between each image and its prompt (the per-sample CLIP score)."""
        img = self.image_embeddings(images) if image_embeddings is None else np.asarray(image_embeddings, np.float64)
        if len(prompts) != len(img):
            raise OdebenchError(f"CLIP score needs one prompt per image: {len(img)} images, {len(prompts)} prompts")
        return np.sum(img * self.text_embeddings(prompts), axis=1)

    def clip_score(self, images: np.ndarray, prompts: Sequence[str], torchmetrics_form: bool = False,
                   image_embeddings: np.ndarray | None = None, cosines: np.ndarray | None = None) -> MetricValue:
        """Mean cosine between each image and its prompt; torchmetrics_form: max(100 * mean(cos), 0).
        `cosines` (from `cosines()`) skips re-encoding images and prompts when they are already scored."""
        cos = self.cosines(images, prompts, image_embeddings) if cosines is None else np.asarray(cosines, np.float64)
        m, se = mean_stderr(cos)
        if torchmetrics_form:
            m, se, scale = max(100.0 * m, 0.0), 100.0 * se, "max(100 * mean(cos), 0) (torchmetrics form: clamped after averaging)"
        else:
            scale = "raw cosine of L2-normalised embeddings (x1)"
        ident = f"{self.backbone}; {self.preprocess_identity}; open_clip tokenizer; {scale}; mean over {len(cos)} pairs, stderr of mean"
        return value("clip_score", m, se, ident, len(cos))


def fd_clip(features: np.ndarray, ref_features: np.ndarray, ref_set: str, extractor_identity: str,
            stderr_reps: int = 10) -> MetricValue:
    """FD in CLIP image-embedding space from ClipScorer features of the samples and the reference set."""
    return fd_value("fd_clip", features, ref_features, extractor_identity, ref_set, stderr_reps)
