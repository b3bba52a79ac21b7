"""Per-sample conditions: a deterministic function of the sample index, like the noise."""
from __future__ import annotations

from typing import Any

import torch


class Conditions:
    """Class labels assigned round-robin (label of sample i = i mod C), or no conditioning.

    Round-robin keeps every class equally represented at any sample count and makes the label of
    a sample independent of batching.
    """

    def __init__(self, num_classes: int | None) -> None:
        self.num_classes = num_classes

    @property
    def conditional(self) -> bool:
        return self.num_classes is not None

    def tensor(self, indices) -> torch.Tensor | None:
        if self.num_classes is None:
            return None
        return torch.as_tensor(list(indices), dtype=torch.long) % self.num_classes

    def texts(self, indices) -> list[str] | None:
        """The prompts of these samples (None: not text-conditioned)."""
        return None

    def key(self, indices) -> Any:
        """What the cache key records: the labels themselves."""
        t = self.tensor(indices)
        return None if t is None else t.tolist()

    def describe(self) -> dict[str, Any]:
        if self.num_classes is None:
            return {"mode": "unconditional"}
        return {"mode": "class", "assignment": "index mod num_classes", "num_classes": self.num_classes}


class PromptConditions(Conditions):
    """Text prompts assigned round-robin (prompt of sample i = i mod P); the tensor holds prompt
    indices, which a text-conditioned teacher maps to its cached embeddings."""

    def __init__(self, prompts) -> None:
        super().__init__(len(prompts))
        self.prompts = list(prompts)

    def texts(self, indices) -> list[str]:
        return [self.prompts[int(i) % len(self.prompts)] for i in indices]

    def key(self, indices) -> Any:
        """The cache key records the prompt texts, not just their positions in the list."""
        return self.texts(indices)

    def describe(self) -> dict[str, Any]:
        from odebench.prompts import prompts_sha256

        return {"mode": "prompt", "assignment": "index mod num_prompts", "num_prompts": len(self.prompts),
                "prompts_sha256": prompts_sha256(self.prompts), "first": self.prompts[:3]}
