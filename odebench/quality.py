"""Which quality metrics a domain gets, and the reference data they compare against."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from odebench.conditions import Conditions
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
        metrics.update(distribution_metrics(feats, self._teacher_features, "digits", self.features.identity, "teacher", self.TEACHER))
        per_sample: dict[str, np.ndarray] = {}
        if self.labels is not None:
            per_sample = label_scores(images, self.labels.numpy())
            metrics.update(label_metrics(images, self.labels.numpy(), scores=per_sample))
        extras = {"fd_digits_real_halves": {"value": self.real_halves_fd, "n": len(self.real) // 2,
                                            "definition": "FD between two random halves of the held-out real digits"}}
        return metrics, extras, per_sample


def quality_for(teacher: Teacher, conditions: Conditions, seed: int, n: int):
    """The quality scorer for this teacher's domain, or None if it has none."""
    if hasattr(teacher, "mixture"):
        return MixtureQuality(teacher, conditions, seed, n)
    if teacher.name == "digits":
        return DigitsQuality(teacher, conditions, n)
    return None
