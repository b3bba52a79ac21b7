"""Multi-process runs: rank detection, sharding of sample indices, gathering to rank 0.

`accelerate launch --multi_gpu --num_processes N -m odebench run ...` (or `torchrun --nproc_per_node N
-m odebench run ...`) starts N processes with WORLD_SIZE/RANK/LOCAL_RANK set. Each stage of a run
(reference chunks, floor, DDIM-100 reference, student samples) is a list of fixed batches of sample
indices; the batch boundaries are the single-process ones, and each rank takes a contiguous run of
whole batches. Everything per-sample (noise, labels) comes from the sample index, and each batch is
computed exactly as a single process would compute it, so the gathered tensors are bitwise the
single-process ones and every reference chunk is solved by exactly one rank (the cache is shared
and never written twice). Rank 0 then computes every metric from the gathered samples as a single
process would and writes the run directories; other ranks write nothing.

Samples, not features, are gathered: rank 0 needs every sample anyway (per_sample.safetensors
stores them), and computing features on rank 0 from the same samples keeps feature networks'
batch-size-dependent round-off out of the comparison with a single-process run.

A single process (WORLD_SIZE unset or 1) never imports accelerate or torch.distributed: `Single`
runs each stage on the whole index range and returns its one result.

Errors: a stage's exception on any rank is exchanged at the stage's end and raised on every rank
as one `ShardError` (a one-line OdebenchError naming the rank), so no rank waits for a peer that
died; only rank 0 prints it. A process that dies outright, or rank 0 failing while it scores and
writes (other ranks are then already sampling the next student), is handled by the launcher
(torchrun / accelerate's elastic agent), which stops the other processes as soon as one exits
non-zero.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, TypeVar

from odebench.errors import OdebenchError

T = TypeVar("T")


class ShardError(OdebenchError):
    """A stage failed on some rank; raised on every rank, printed by rank 0 only."""


def world_size() -> int:
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a multi-process launch (env only: no imports)."""
    return world_size() == 1 or os.environ.get("RANK", "0") == "0"


def shard_range(n: int, batch: int, rank: int, world: int) -> range:
    """Rank `rank`'s indices of [0, n): a contiguous run of whole batches [k*batch, (k+1)*batch).

    The first n_batches % world ranks take one batch more, so rank 0 always holds batch 0 (the
    reference chunk that carries the error-curve states) and ranks in order cover indices in order.
    """
    n_batches = -(-n // batch)
    per, extra = divmod(n_batches, world)
    first = rank * per + min(rank, extra)
    last = first + per + (rank < extra)
    return range(min(first * batch, n), min(last * batch, n))


class Single:
    """One process: every stage covers all indices; nothing is imported or exchanged."""

    rank = 0
    local_rank = 0
    world_size = 1
    is_main = True
    device = "cpu"

    def shard(self, n: int, batch: int) -> range:
        return range(0, n)

    def run(self, fn: Callable[[range], T], n: int, batch: int) -> list[T] | None:
        """fn over this rank's shard of [0, n) in whole batches; every rank's result in rank order on
        rank 0 (empty shards left out), None on other ranks."""
        return [fn(range(0, n))] if n > 0 else []

    def check(self, fn: Callable[[], T]) -> T:
        """fn on every rank; if it fails anywhere, it fails everywhere (one ShardError)."""
        return fn()

    def sum(self, value: int) -> int:
        return value

    def describe(self) -> dict[str, Any]:
        return {"processes": 1}


class Distributed(Single):
    """A multi-process launch: one rank of WORLD_SIZE, process group set up through accelerate."""

    def __init__(self) -> None:
        import torch
        import torch.distributed as tdist

        try:
            from accelerate import PartialState
        except ImportError:
            raise OdebenchError("a multi-process launch (WORLD_SIZE > 1) needs accelerate: pip install 'odebench[scale]'") from None

        # gloo on CPU, nccl on GPU (accelerate's choice), one device per local rank
        cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        state = PartialState(cpu=cpu)
        if state.num_processes != world_size():
            raise OdebenchError(f"WORLD_SIZE={world_size()} but accelerate set up {state.num_processes} processes")
        self._dist = tdist
        self.rank, self.local_rank, self.world_size = state.process_index, state.local_process_index, state.num_processes
        self.is_main = self.rank == 0
        self.device = str(state.device)
        self.backend = tdist.get_backend()
        # results are CPU tensors and Python objects: exchange them over gloo even when the default group is nccl
        self._group = None if self.backend == "gloo" else tdist.new_group(backend="gloo")

    def shard(self, n: int, batch: int) -> range:
        return shard_range(n, batch, self.rank, self.world_size)

    def _exchange(self, fn: Callable[[], T]) -> T | None:
        """Run fn; every rank learns whether any rank failed before anything else is exchanged."""
        result, problem = None, None
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 -- any failure must reach the other ranks, or they wait forever
            first = (str(e).strip().splitlines() or [""])[0]
            problem = first if isinstance(e, OdebenchError) else f"{type(e).__name__}: {first}"
            if not isinstance(e, OdebenchError):
                import traceback

                traceback.print_exc(file=sys.stderr)  # an unexpected failure keeps its traceback on its own rank
        problems = [None] * self.world_size
        self._dist.all_gather_object(problems, problem, group=self._group)
        if problems[0] is not None and all(p == problems[0] for p in problems):
            raise ShardError(problems[0])  # every rank failed alike (e.g. bad input): no rank to name
        for rank, p in enumerate(problems):
            if p is not None:
                raise ShardError(f"rank {rank}: {p}")
        return result

    def run(self, fn, n, batch):
        idx = self.shard(n, batch)
        part = self._exchange(lambda: fn(idx) if len(idx) else None)
        parts = [None] * self.world_size if self.is_main else None
        self._dist.gather_object(part, parts, dst=0, group=self._group)
        return [p for p in parts if p is not None] if self.is_main else None

    def check(self, fn):
        return self._exchange(fn)

    def sum(self, value):
        values = [None] * self.world_size
        self._dist.all_gather_object(values, value, group=self._group)
        return sum(values)

    def describe(self):
        # not "device": that names where the numerics run, and they still run on the CPU
        return {"processes": self.world_size, "backend": self.backend, "rank_device": self.device}


_CURRENT: Single | None = None


def current() -> Single:
    """This process's place in the launch (set up once per process)."""
    global _CURRENT
    if _CURRENT is None:
        _CURRENT = Distributed() if world_size() > 1 else Single()
    return _CURRENT


def cpu_launch_hint() -> str | None:
    """`accelerate launch --cpu --num_processes N` (N > 1) without mpirun starts ONE process (accelerate
    1.x), exporting MASTER_ADDR but no WORLD_SIZE; say so instead of silently running unsharded."""
    if world_size() == 1 and os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_ADDR" in os.environ:
        return ("accelerate launch --cpu started a single process (it needs mpirun for several CPU processes); "
                "for N CPU processes use `accelerate launch --multi_gpu --num_processes N -m odebench run ...` "
                "on a machine without GPUs, or `torchrun --nproc_per_node N -m odebench run ...`")
    return None
