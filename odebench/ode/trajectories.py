"""Reference solutions for a whole run: fixed chunks of sample indices, each cached on its own.

Chunk c covers indices [c*batch, (c+1)*batch): the batch that shares a step size is fixed by the
SolverSpec, not by how a run is invoked, so an interrupted run resumes from its finished chunks
and a warm rerun costs zero teacher evaluations. Only the first chunk also records states at the
error-curve noise levels (forcing steps onto them costs NFEs), so curves use at most `batch` samples.
A multi-process run gives each rank a run of whole chunks (`start` a chunk boundary) and merges the
ranks' sets in index order (`merge_reference_sets`, see odebench.distributed).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from odebench.conditions import Conditions
from odebench.ode.cache import TrajectoryCache, cache_key
from odebench.ode.noise import NoiseBank
from odebench.ode.reference import DTYPE, solve_reference
from odebench.ode.spec import SolverSpec
from odebench.teachers.base import Teacher


@dataclass
class ReferenceSet:
    x0: torch.Tensor  # (n, *shape)
    traj: torch.Tensor  # (P, m, *shape): curve states of the first chunk's m samples
    curve_sigmas: torch.Tensor
    spec: SolverSpec
    nfe_per_sample: float  # denoiser calls each sample went through (cached or not)
    accepted: int
    rejected: int
    teacher_passes: int = 0  # model passes spent in this call (0 on a warm cache)
    teacher_nfe: int = 0  # denoiser calls spent in this call
    cache_hits: int = 0
    cache_misses: int = 0
    cache_corrupt: int = 0
    seconds: float = 0.0
    chunks: list[tuple[int, int]] = field(default_factory=list)

    def nfe_summary(self) -> dict:
        return {"per_sample": self.nfe_per_sample, "accepted_steps": self.accepted, "rejected_steps": self.rejected,
                "teacher_evals_this_run": self.teacher_nfe, "teacher_passes_this_run": self.teacher_passes,
                "cache_hits": self.cache_hits, "cache_misses": self.cache_misses, "cache_corrupt": self.cache_corrupt}


def initial_state(teacher: Teacher, noise: NoiseBank, indices, dtype: torch.dtype) -> torch.Tensor:
    """x(sigma_max) for each sample index: the teacher's forward-process start from its stream-0 noise z_i."""
    return teacher.initial_state(noise.draw(indices, stream=0, dtype=dtype))


def reference_set(teacher: Teacher, spec: SolverSpec, noise: NoiseBank, conditions: Conditions, n: int,
                  cache: TrajectoryCache, curve_sigmas: torch.Tensor, start: int = 0,
                  progress: Callable[[int], None] | None = None) -> ReferenceSet:
    """Reference endpoints and curve states for indices [start, start + n), chunk by chunk."""
    spec = spec.resolved("float64" if teacher.default_dtype == torch.float64 else "float32")
    dtype = DTYPE[spec.dtype]
    t0 = time.perf_counter()
    hits0, miss0, corrupt0 = cache.hits, cache.misses, cache.corrupt
    before = teacher.counter.snapshot()
    x0s, chunks = [], []
    curve_traj = torch.empty(0)
    nfe_weighted, accepted, rejected = 0.0, 0, 0
    stop_all = start + n
    first_chunk = start // spec.batch
    for c in range(first_chunk, (stop_all + spec.batch - 1) // spec.batch):
        lo, hi = max(c * spec.batch, start), min((c + 1) * spec.batch, stop_all)
        indices = range(lo, hi)
        chunk_curve = curve_sigmas if c == 0 else curve_sigmas[:0]
        payload = {"kind": "reference", "ode": teacher.ode_identity(), "cond": conditions.key(indices),
                   "seed": noise.seed, "start": lo, "stop": hi, "shape": list(noise.shape),
                   "spec": spec.to_dict(), "curve_sigmas": chunk_curve.tolist()}
        key = cache_key(payload)
        hit = cache.load(key)
        if hit is not None:
            tensors, info = hit
            x0, traj = tensors["x0"], tensors["traj"]
        else:
            # the state lives where the network does (a GPU teacher: no copies per NFE); results on the CPU
            x_start = initial_state(teacher, noise, indices, dtype).to(teacher.device)
            sol = solve_reference(teacher, x_start, conditions.tensor(indices), spec, chunk_curve)
            x0, traj = sol.x0.cpu(), sol.traj.cpu()
            info = {"nfe": sol.nfe, "accepted": sol.accepted, "rejected": sol.rejected}
            cache.store(key, payload, {"x0": x0, "traj": traj}, info)
        x0s.append(x0)
        if c == 0:
            curve_traj = traj
        chunks.append((lo, hi))
        nfe_weighted += info["nfe"] * (hi - lo)
        accepted += info["accepted"]
        rejected += info["rejected"]
        if progress is not None:
            progress(hi - lo)
    spent = teacher.counter.since(before)
    return ReferenceSet(
        x0=torch.cat(x0s), traj=curve_traj, curve_sigmas=curve_sigmas, spec=spec,
        nfe_per_sample=nfe_weighted / max(n, 1), accepted=accepted, rejected=rejected,
        teacher_passes=spent.passes, teacher_nfe=spent.calls, cache_hits=cache.hits - hits0,
        cache_misses=cache.misses - miss0, cache_corrupt=cache.corrupt - corrupt0,
        seconds=time.perf_counter() - t0, chunks=chunks)


# the arithmetic of odebench.ode.steps (solves under an older table differ in the last bits: not reused)
STEP_TABLE = "x + (s' - s)(x - D)/s"
GRID_BATCH = 256  # chunk of the DDIM-100 reference (part of its cache key through start/stop)


def grid_reference_set(teacher: Teacher, noise: NoiseBank, conditions: Conditions, n: int, cache: TrajectoryCache,
                       grid_n: int = 100, solver: str = "ddim", batch: int = GRID_BATCH,
                       progress: Callable[[int], None] | None = None, start: int = 0) -> tuple[torch.Tensor, dict]:
    """The paper's ODE-error reference: the teacher's DDIM solve on its N-point grid from the same
    noise (PAPER.md), chunked and cached like the converged reference, for indices [start, start + n)
    (`start` a multiple of `batch`, so a shard's chunks are the single-process ones)."""
    from odebench.ode.paper_grid import grid_for, solve_on_grid

    grid = grid_for(teacher, grid_n)
    before = teacher.counter.snapshot()
    hits0 = cache.hits
    outs = []
    for lo in range(start, start + n, batch):
        indices = range(lo, min(lo + batch, start + n))
        payload = {"kind": "grid-reference", "ode": teacher.ode_identity(), "cond": conditions.key(indices),
                   "seed": noise.seed, "start": lo, "stop": indices.stop, "shape": list(noise.shape),
                   "grid": grid.describe(), "solver": solver, "steps": STEP_TABLE}
        key = cache_key(payload)
        hit = cache.load(key)
        if hit is not None:
            x0 = hit[0]["x0"]
        else:
            x_start = initial_state(teacher, noise, indices, torch.float32)
            x0 = solve_on_grid(teacher, x_start, torch.zeros(len(indices), dtype=torch.long), grid,
                               conditions.tensor(indices), solver)
            cache.store(key, payload, {"x0": x0}, {"nfe": grid_n})
        outs.append(x0)
        if progress is not None:
            progress(len(indices))
    info = {"grid": grid.describe(), "solver": solver, "nfe_per_sample": grid_n,
            "teacher_evals_this_run": teacher.counter.since(before).calls, "cache_hits": cache.hits - hits0}
    return torch.cat(outs), info


def merge_reference_sets(parts: list[ReferenceSet]) -> ReferenceSet:
    """One ReferenceSet from the sets of consecutive index ranges (ranks' shards, in index order).

    Counters add up (each chunk was solved or loaded by exactly one part); the curve states come from
    the part holding chunk 0; seconds is the slowest part (the parts ran in parallel). One part is
    returned as it is, so a single process is untouched."""
    if len(parts) == 1:
        return parts[0]
    n = sum(p.x0.shape[0] for p in parts)
    # per-sample NFE is an integer sum over chunks divided by n: undo each part's division exactly
    nfe_total = sum(round(p.nfe_per_sample * p.x0.shape[0]) for p in parts)
    first = parts[0]
    return ReferenceSet(
        x0=torch.cat([p.x0 for p in parts]), traj=first.traj, curve_sigmas=first.curve_sigmas, spec=first.spec,
        nfe_per_sample=nfe_total / max(n, 1), accepted=sum(p.accepted for p in parts),
        rejected=sum(p.rejected for p in parts), teacher_passes=sum(p.teacher_passes for p in parts),
        teacher_nfe=sum(p.teacher_nfe for p in parts), cache_hits=sum(p.cache_hits for p in parts),
        cache_misses=sum(p.cache_misses for p in parts), cache_corrupt=sum(p.cache_corrupt for p in parts),
        seconds=max(p.seconds for p in parts), chunks=[c for p in parts for c in p.chunks])


def merge_grid_references(parts: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, dict]:
    """grid_reference_set results of consecutive index ranges -> one, counters summed."""
    if len(parts) == 1:
        return parts[0]
    info = dict(parts[0][1])
    for key in ("teacher_evals_this_run", "cache_hits"):
        info[key] = sum(p[1][key] for p in parts)
    return torch.cat([p[0] for p in parts]), info
