"""The trainers' optimiser: AdamW, 8-bit (bitsandbytes) where the paper used it and it can run.

The paper's released script trains with bitsandbytes' AdamW8bit. It needs CUDA and the optional
bitsandbytes package; elsewhere (CPU, no bitsandbytes) the trainer uses torch's AdamW, and the
student's sidecar records which one ran, so two students are only compared knowingly.
"""
from __future__ import annotations

import torch

from odebench.errors import OdebenchError

OPTIMIZERS = ("auto", "adamw", "adamw8bit")


def bitsandbytes_available() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # ImportError, or a broken CUDA setup raising at import
        return False
    return True


def resolve_optimizer(kind: str, device: torch.device) -> str:
    """`auto`: adamw8bit on CUDA with bitsandbytes installed, else adamw; explicit choices are checked."""
    if kind not in OPTIMIZERS:
        raise OdebenchError(f"unknown optimiser {kind!r}: expected one of {', '.join(OPTIMIZERS)}")
    if kind == "auto":
        return "adamw8bit" if device.type == "cuda" and bitsandbytes_available() else "adamw"
    if kind == "adamw8bit":
        if device.type != "cuda":
            raise OdebenchError("--optimizer adamw8bit needs a CUDA device (bitsandbytes' 8-bit states live on the GPU)")
        if not bitsandbytes_available():
            raise OdebenchError("--optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes")
    return kind


def make_optimizer(kind: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if kind == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
