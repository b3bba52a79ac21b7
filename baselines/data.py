"""Training data for distillation: real (or exact) data x0 with labels, drawn from a seeded generator."""
from __future__ import annotations

import torch


class MixtureData:
    """Exact samples of a GMM teacher's data distribution; labels are component classes."""

    def __init__(self, teacher, conditional: bool) -> None:
        self.mixture = teacher.mixture
        self.classes = teacher.classes
        self.conditional = conditional

    def sample(self, batch: int, g: torch.Generator):
        comp = torch.multinomial(self.mixture.weights.double(), batch, replacement=True, generator=g)
        x0 = self.mixture.sample(comp, g).float()
        return x0, (self.classes[comp] if self.conditional else None)


class ImageData:
    """The digits training split in model space, uniformly resampled with replacement."""

    def __init__(self, conditional: bool) -> None:
        from odebench.data.digits import digits_split, to_model_space

        split = digits_split()
        self.x = torch.from_numpy(to_model_space(split.train_images))
        self.y = torch.from_numpy(split.train_labels)
        self.conditional = conditional

    def sample(self, batch: int, g: torch.Generator):
        idx = torch.randint(0, self.x.shape[0], (batch,), generator=g)
        return self.x[idx], (self.y[idx] if self.conditional else None)
