"""Which quality metrics a domain gets, and the reference data they compare against."""
from __future__ import annotations

from typing import Any

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

    def score(self, samples: torch.Tensor) -> tuple[dict[str, MetricValue], dict[str, Any]]:
        from odebench.metrics.gmm_quality import mixture_quality

        return mixture_quality(samples, self.exact, self.mixture, self.mask, self.ref_set)


def quality_for(teacher: Teacher, conditions: Conditions, seed: int, n: int):
    """The quality scorer for this teacher's domain, or None if it has none."""
    if hasattr(teacher, "mixture"):
        return MixtureQuality(teacher, conditions, seed, n)
    return None
