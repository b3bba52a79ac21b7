"""Where the distillation loop runs: one plain process, or under accelerate (DDP, mixed precision).

The loop talks to a runtime for the few things that differ: wrapping model and optimiser, the
backward pass (loss scaling in fp16), gradient clipping (after unscaling), autocast, which process
writes files, and barriers. A single CPU process needs none of it and never imports accelerate,
so the small-domain trainers behave exactly as they always have. `accelerate launch` (several
processes) or a CUDA device (autocast and the fp16 loss scaler) use `AccelerateRuntime`.
"""
from __future__ import annotations

import contextlib
import os

import torch

from odebench.errors import OdebenchError

MIXED_PRECISION = ("no", "fp16", "bf16")


def launched_by_accelerate() -> bool:
    """True inside `accelerate launch` or torchrun with several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or "ACCELERATE_MIXED_PRECISION" in os.environ


class LocalRuntime:
    """One process, full precision, plain torch: the loop as it was before accelerate existed here."""

    num_processes, process_index, is_main = 1, 0, True
    device = torch.device("cpu")
    mixed_precision = "no"

    def prepare(self, model, opt):
        return model, opt

    def unwrap(self, model):
        return model

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm_(self, params, max_norm: float) -> None:
        torch.nn.utils.clip_grad_norm_(params, max_norm)

    def autocast(self):
        return contextlib.nullcontext()

    def wait(self) -> None:
        pass

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over processes (a collective: every process calls it); for the log."""
        return value

    def scaler_state(self) -> dict | None:
        return None

    def load_scaler_state(self, state) -> None:
        pass

    def describe(self) -> dict:
        return {"kind": "local", "processes": 1, "mixed_precision": "no", "device": "cpu"}


class AccelerateRuntime(LocalRuntime):
    """accelerate.Accelerator: DDP across `accelerate launch` processes, autocast + loss scaling."""

    def __init__(self, mixed_precision: str = "no", cpu: bool = False) -> None:
        if mixed_precision not in MIXED_PRECISION:
            raise OdebenchError(f"unknown mixed precision {mixed_precision!r}: expected one of {', '.join(MIXED_PRECISION)}")
        try:
            from accelerate import Accelerator
        except ImportError:
            raise OdebenchError("multi-GPU / mixed-precision training needs accelerate: pip install 'odebench[train]'") from None
        if mixed_precision == "fp16" and (cpu or not torch.cuda.is_available()):
            raise OdebenchError("--mixed-precision fp16 needs a CUDA device (use bf16 or no on CPU)")
        self.acc = Accelerator(mixed_precision=mixed_precision, cpu=cpu)
        self.mixed_precision = mixed_precision
        self.device = self.acc.device
        self.num_processes = self.acc.num_processes
        self.process_index = self.acc.process_index
        self.is_main = self.acc.is_main_process

    def prepare(self, model, opt):
        return self.acc.prepare(model, opt)

    def unwrap(self, model):
        return self.acc.unwrap_model(model)

    def backward(self, loss):
        self.acc.backward(loss)

    def clip_grad_norm_(self, params, max_norm):
        self.acc.clip_grad_norm_(params, max_norm)  # unscales fp16 gradients first

    def autocast(self):
        return self.acc.autocast()

    def wait(self):
        self.acc.wait_for_everyone()

    def mean(self, value):
        return self.acc.reduce(value.detach().to(self.device), "mean").cpu() if self.num_processes > 1 else value

    def scaler_state(self):
        scaler = getattr(self.acc, "scaler", None)
        return scaler.state_dict() if scaler is not None else None

    def load_scaler_state(self, state):
        scaler = getattr(self.acc, "scaler", None)
        if scaler is not None and state:
            scaler.load_state_dict(state)

    def describe(self):
        return {"kind": "accelerate", "processes": self.num_processes, "mixed_precision": self.mixed_precision,
                "device": str(self.device)}


def make_runtime(device: str | None, mixed_precision: str | None) -> LocalRuntime:
    """Plain local on CPU without mixed precision (unless launched); accelerate otherwise."""
    cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        raise OdebenchError("--device cuda was asked for, but torch sees no CUDA device")
    mp = mixed_precision or ("fp16" if cuda else "no")
    if mp not in MIXED_PRECISION:
        raise OdebenchError(f"unknown mixed precision {mp!r}: expected one of {', '.join(MIXED_PRECISION)}")
    if not cuda and mp == "no" and not launched_by_accelerate():
        return LocalRuntime()
    return AccelerateRuntime(mp, cpu=not cuda)
