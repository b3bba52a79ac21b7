"""Per-item text conditioning already encoded for a text-to-image network (the trainers' condition type).

Evaluation conditions are prompt indices (sample i gets prompt i mod P, at the output size); the
trainers instead condition every item on its own caption and its own micro-conditioning (original
size, crop, target size of that training image), so they hand the teacher the encoded tensors.
Indexing takes a sub-batch, as the grid solver does for the items still being solved.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EncodedPrompts:
    embeds: torch.Tensor  # (B, L, D1 + D2): both encoders' penultimate hidden states, concatenated
    pooled: torch.Tensor  # (B, P): the second encoder's projected text_embeds
    time_ids: torch.Tensor | None = None  # SDXL (B, 6): original (H, W), crop (top, left), target (H, W) in pixels;
    #                                        None for networks without micro-conditioning (SD3, FLUX.1)

    def __post_init__(self) -> None:
        b = self.embeds.shape[0]
        if self.pooled.shape[0] != b or (self.time_ids is not None and self.time_ids.shape != (b, 6)):
            raise ValueError(f"EncodedPrompts: batch sizes differ (embeds {tuple(self.embeds.shape)}, "
                             f"pooled {tuple(self.pooled.shape)}, time_ids {None if self.time_ids is None else tuple(self.time_ids.shape)})")

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def __getitem__(self, idx) -> "EncodedPrompts":
        return EncodedPrompts(self.embeds[idx], self.pooled[idx], None if self.time_ids is None else self.time_ids[idx])
