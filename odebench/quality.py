"""Quality scorers and the reference data they compare against; a teacher family picks its scorer
(TeacherFamily.quality in odebench.teachers.family)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from odebench.conditions import Conditions
from odebench.errors import OdebenchError
from odebench.metrics.registry import MetricValue
from odebench.ode.noise import stream_seed
from odebench.teachers.base import Teacher


class MixtureQuality:
    """GMM domains: exact density and exact data samples under the same per-sample conditions."""

    def __init__(self, teacher: Teacher, conditions: Conditions, seed: int, n: int) -> None:
        self.mixture = teacher.mixture
        labels = conditions.tensor(range(n))
        self.mask = teacher.class_mask(labels)
        g = torch.Generator().manual_seed(stream_seed(seed, -1, 0))  # index -1: not a sample's stream
        w = self.mixture.weights.double()[None].expand(n, -1)
        if self.mask is not None:
            w = w * self.mask
        component = torch.multinomial(w, 1, generator=g).squeeze(1)
        self.exact = self.mixture.sample(component, g)
        self.ref_set = "exact data samples (same conditions, seed-derived)"

    def score(self, samples: torch.Tensor, reference: torch.Tensor) -> tuple[dict[str, MetricValue], dict[str, Any], dict[str, np.ndarray]]:
        """(metrics, extras for result.json, per-sample scores for per_sample.safetensors)."""
        from odebench.metrics.gmm_quality import mixture_quality

        return mixture_quality(samples, self.exact, self.mixture, self.mask, self.ref_set)


class DigitsQuality:
    """Digits domain: the shipped classifier's features against held-out real digits and against the
    teacher's own reference-ODE samples (the paper's protocol), plus label adherence and confidence."""

    REAL = "held-out real digits (sklearn load_digits, stratified 25% split, seed 0)"
    TEACHER = "teacher samples (reference ODE endpoints, same seeds and labels)"

    def __init__(self, teacher: Teacher, conditions: Conditions, n: int) -> None:
        from odebench.data.digits import digits_split
        from odebench.metrics.digits import DigitsFeatures
        from odebench.metrics.fd import fd_features
        from odebench.metrics.features import grey_to_rgb

        self.teacher = teacher
        self.features = DigitsFeatures()
        self.labels = conditions.tensor(range(n))
        real = self.features(grey_to_rgb(digits_split().test_images))
        self.real = real
        half = len(real) // 2
        perm = np.random.default_rng(0).permutation(len(real))
        self.real_halves_fd = fd_features(real[perm[:half]], real[perm[half:]])
        self._teacher_features: np.ndarray | None = None

    def score(self, samples: torch.Tensor, reference: torch.Tensor) -> tuple[dict[str, MetricValue], dict[str, Any], dict[str, np.ndarray]]:
        """(metrics, extras for result.json, per-sample scores for per_sample.safetensors)."""
        from odebench.metrics.digits import label_metrics, label_scores
        from odebench.metrics.distribution import distribution_metrics

        images = self.teacher.decode(samples)
        feats = self.features(images)
        if self._teacher_features is None:
            self._teacher_features = self.features(self.teacher.decode(reference))
        metrics = distribution_metrics(feats, self.real, "digits", self.features.identity, "real", self.REAL)
        metrics.update(distribution_metrics(feats, self._teacher_features, "digits", self.features.identity, "teacher",
                                            self.TEACHER, paired=True))
        per_sample: dict[str, np.ndarray] = {}
        if self.labels is not None:
            per_sample = label_scores(images, self.labels.numpy())
            metrics.update(label_metrics(images, self.labels.numpy(), scores=per_sample))
        extras = {"fd_digits_real_halves": {"value": self.real_halves_fd, "n": len(self.real) // 2,
                                            "definition": "FD between two random halves of the held-out real digits"}}
        return metrics, extras, per_sample


IMAGE_METRICS = ("fid", "fd_dinov2", "clip_score", "aesthetic", "cmmd")
METRICS_HELP = ("auto: every image metric whose weights are found (the others are listed as skipped, with why); "
                "ode: ODE error only; or a comma list of fid,fd_dinov2,clip_score,aesthetic,cmmd (each required)")


def parse_metric_selection(selection: str) -> tuple[str, tuple[str, ...]]:
    """("auto" | "ode" | "list", metrics) from --metrics."""
    s = (selection or "auto").strip()
    if s in ("auto", "all"):
        return "auto", IMAGE_METRICS
    if s in ("ode", "none"):
        return "ode", ()
    names = tuple(n.strip() for n in s.split(",") if n.strip())
    unknown = [n for n in names if n not in IMAGE_METRICS]
    if unknown or not names:
        raise OdebenchError(f"unknown metric(s) {', '.join(unknown) or s!r} in --metrics: {METRICS_HELP}")
    return "list", names


class ImageQuality:
    """Text-to-image families (SDXL, SD): latents decoded to uint8 images in memory; FID and FD-DINOv2
    against the teacher's own reference-ODE samples from the same seeds and prompts (the paper's
    protocol), CMMD against the same samples, CLIP score of each sample against its prompt, and the LAION
    aesthetic score."""

    TEACHER = "teacher samples (reference ODE endpoints, same seeds and prompts)"

    def __init__(self, teacher: Teacher, conditions, n: int, selection: str = "auto",
                 weights: dict[str, Any] | None = None, device=None, fd_bootstrap: int = 10) -> None:
        mode, names = parse_metric_selection(selection)
        self.fd_bootstrap = int(fd_bootstrap)
        weights = dict(weights or {})
        self.teacher = teacher
        self.prompts = conditions.texts(range(n))
        self.skipped: dict[str, str] = {}
        self.extractors: dict[str, Any] = {}
        self.clip = None
        self.aesthetic = None
        self.cmmd = None
        builders = {
            "fid": lambda: self._inception(weights.get("fid"), device),
            "fd_dinov2": lambda: self._dinov2(weights.get("dinov2"), device),
            "clip_score": lambda: self._clip(weights, device),
            "aesthetic": lambda: self._aesthetic(weights, device),
            "cmmd": lambda: self._cmmd(weights, device),
        }
        for name in names:
            if name == "clip_score" and self.prompts is None:
                self.skipped[name] = "no prompts"
                continue
            try:
                builders[name]()
            except OdebenchError as e:
                if mode == "list":
                    raise
                self.skipped[name] = str(e)
        self._ref_features: dict[str, np.ndarray] = {}

    def _inception(self, path, device):
        from odebench.metrics.inception import InceptionFeatures

        self.extractors["inception"] = InceptionFeatures(path, device=device)

    def _dinov2(self, path, device):
        from odebench.metrics.dinov2 import DinoV2Features

        self.extractors["dinov2"] = DinoV2Features(path, device=device)

    def _clip(self, weights, device):
        if self.clip is None:
            from odebench.metrics.clip import DEFAULT_ARCH, ClipScorer

            self.clip = ClipScorer(weights.get("clip_arch") or DEFAULT_ARCH, weights.get("clip"), device=device)
        return self.clip

    def _cmmd(self, weights, device):
        from odebench.metrics.cmmd import CMMDEmbeddings

        self.cmmd = CMMDEmbeddings(weights.get("cmmd"), weights.get("cmmd_arch"), device=device)

    def _aesthetic(self, weights, device):
        from odebench.metrics.aesthetic import AestheticScorer

        try:
            clip = self._clip(weights, device)
        except OdebenchError as e:
            raise OdebenchError(f"the aesthetic score needs CLIP ViT-L/14: {e}") from None
        self.aesthetic = AestheticScorer(weights.get("aesthetic"), clip=clip)

    @property
    def active(self) -> bool:
        return bool(self.extractors or self.clip is not None or self.cmmd is not None)

    def score(self, samples: torch.Tensor, reference: torch.Tensor) -> tuple[dict[str, MetricValue], dict[str, Any], dict[str, np.ndarray]]:
        """(metrics, extras for result.json, per-sample scores for per_sample.safetensors)."""
        from odebench.metrics.distribution import distribution_metrics

        extras: dict[str, Any] = {"skipped_metrics": dict(self.skipped)}
        metrics: dict[str, MetricValue] = {}
        per_sample: dict[str, np.ndarray] = {}
        if not self.active:
            return metrics, extras, per_sample
        images = self.teacher.decode(samples)
        ref_images = None
        for key, ext in self.extractors.items():
            if key not in self._ref_features:
                ref_images = self.teacher.decode(reference) if ref_images is None else ref_images
                self._ref_features[key] = ext(ref_images)
            metrics.update(distribution_metrics(ext(images), self._ref_features[key], key, ext.identity, "teacher",
                                                self.TEACHER, fd_bootstrap=self.fd_bootstrap, paired=True))
        if self.cmmd is not None:  # CLIP-336 embeddings against the teacher's samples, the paper's protocol
            from odebench.metrics.cmmd import cmmd_value

            if "cmmd" not in self._ref_features:
                ref_images = self.teacher.decode(reference) if ref_images is None else ref_images
                self._ref_features["cmmd"] = self.cmmd(ref_images)
            metrics["cmmd@teacher"] = cmmd_value(self.cmmd(images), self._ref_features["cmmd"], self.cmmd.identity, self.TEACHER)
        if self.clip is not None:
            emb = self.clip.image_embeddings(images)
            if "clip_score" not in self.skipped and self.prompts is not None:
                # per-sample cosines once (the prompt encoding is the cost); the metric is their mean
                per_sample["clip_score"] = self.clip.cosines(images, self.prompts[:len(images)], image_embeddings=emb)
                metrics["clip_score"] = self.clip.clip_score(images, self.prompts[:len(images)], cosines=per_sample["clip_score"])
            if self.aesthetic is not None:
                metrics["aesthetic"] = self.aesthetic.aesthetic_score(images, image_embeddings=emb)
                per_sample["aesthetic"] = self.aesthetic.scores_from_embeddings(emb)
        return metrics, extras, per_sample
