"""The noise bank: sample i's noise comes from its own generator seeded by (seed, i, stream).

Noise therefore never depends on batch size, ordering or sharding. Stream 0 is the initial noise;
multistep samplers draw their re-noising from streams 1, 2, ... of the same sample (step i of a
stochastic diffusers scheduler: stream i + 1, through `SampleNoise.generators`).
"""
from __future__ import annotations

import hashlib

import torch


def stream_seed(seed: int, index: int, stream: int = 0) -> int:
    """A 63-bit generator seed derived by hashing (seed, index, stream)."""
    digest = hashlib.sha256(f"odebench-noise/{seed}/{index}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


class NoiseBank:
    def __init__(self, seed: int, shape: tuple[int, ...]) -> None:
        self.seed = int(seed)
        self.shape = tuple(shape)

    def draw(self, indices, stream: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal noise (len(indices), *shape); drawn in float32 so it is the same for any dtype."""
        out = torch.empty((len(indices), *self.shape), dtype=torch.float32)
        g = torch.Generator()
        for row, i in enumerate(indices):
            g.manual_seed(stream_seed(self.seed, int(i), stream))
            out[row] = torch.randn(self.shape, generator=g, dtype=torch.float32)
        return out.to(dtype)

    def describe(self) -> dict:
        return {"seed": self.seed, "scheme": "torch.Generator(sha256('odebench-noise/{seed}/{index}/{stream}')[:8]), float32 randn"}


class SampleNoise:
    """The noise of one batch of samples (indices): `noise(stream)` draws it; `noise.generators(stream)` is one
    torch.Generator per sample seeded as `draw` seeds it, for diffusers' randn_tensor, which draws a batch
    sample by sample from a list of generators: the same numbers, so stochastic schedulers stay
    deterministic and batch-size invariant."""

    def __init__(self, bank: NoiseBank, indices, dtype: torch.dtype = torch.float32) -> None:
        self.bank, self.indices, self.dtype = bank, list(indices), dtype

    def __call__(self, stream: int) -> torch.Tensor:
        return self.bank.draw(self.indices, stream, self.dtype)

    def generators(self, stream: int) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(stream_seed(self.bank.seed, int(i), stream)) for i in self.indices]
