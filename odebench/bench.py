"""`odebench run`: reference solutions, student samples from the same noise, metrics, result files."""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from odebench.conditions import Conditions
from odebench.errors import OdebenchError
from odebench.ode.spec import SolverSpec
from odebench.progress import Progress
from odebench.teachers.base import Guidance, Teacher

FLOOR_FACTOR = 10.0  # a student error within this factor of the reference floor is flagged


@dataclass
class RunConfig:
    teacher: Any = None  # preset name, JSON path or inline dict; None: from the student or "gmm"
    students: tuple[str, ...] = ()  # empty: the teacher's default rows
    samples: int | None = None  # None: the teacher's default
    seed: int = 0
    guidance: Guidance | None = None  # None: the student's (if a checkpoint) or the teacher's default
    conditional: bool | None = None  # None: the student's (if a checkpoint) or the teacher's default
    solver: SolverSpec = field(default_factory=SolverSpec)
    batch_size: int = 256  # student sampling batch (the reference batch lives in SolverSpec)
    curve_points: int = 8
    curve_samples: int = 64
    floor_samples: int = 24  # re-solved for the reference floor (odebench.ode.floor)
    ksteps: tuple[int, ...] = (1, 2, 4)
    out: Path = Path("runs")
    name: str | None = None
    allow_mismatch: bool = False
    cache_dir: Path | None = None
    use_cache: bool = True
    # text-to-image (SDXL) teachers
    prompts: str | None = None  # prompt file (.txt / .jsonl / .csv); None: the built-in list
    prompt_column: str | None = None
    teacher_options: dict[str, Any] = field(default_factory=dict)  # vae, dtype, device, height, width, uncond
    student_guidance: Guidance | None = None  # how an external SDXL student was distilled (else its convention)
    student_convention: str | None = None  # lcm | paper | odebench: overrides the detected one
    ddim100_timesteps: str = "auto"  # sigma: UNet at t-1; paper: the released code's integer t; auto: the students' declared one, else the teacher's
    metrics: str = "auto"  # image metrics of text-to-image teachers (odebench.quality.METRICS_HELP)
    metric_weights: dict[str, Any] = field(default_factory=dict)  # fid, dinov2, clip, clip_arch, aesthetic
    fd_bootstrap: int = 10  # bootstrap repetitions for the stderr of FID / FD-DINOv2 (0: none)

    def validate(self) -> None:
        for attr in ("samples", "batch_size"):
            v = getattr(self, attr)
            if attr == "samples" and v is None:
                continue
            if not isinstance(v, int) or v < 1:
                raise OdebenchError(f"--{attr.replace('_', '-')} must be a positive integer, got {v!r}")
        for attr in ("curve_points", "curve_samples", "floor_samples"):
            v = getattr(self, attr)
            if not isinstance(v, int) or v < 0:
                raise OdebenchError(f"--{attr.replace('_', '-')} must be a non-negative integer, got {v!r}")
        if any(k < 1 for k in self.ksteps):
            raise OdebenchError("k-step counts must be positive integers")
        from odebench.quality import parse_metric_selection

        parse_metric_selection(self.metrics)
        if self.ddim100_timesteps not in ("auto", "sigma", "paper"):
            raise OdebenchError(f"--ddim100-timesteps must be auto, sigma or paper, got {self.ddim100_timesteps!r}")


@dataclass
class RunOutcome:
    name: str
    path: Path
    result: dict[str, Any]


def _resolve_teacher(config: RunConfig) -> tuple[Teacher, bool, str]:
    """The run's teacher, conditioning and where they came from (flag, student sidecar, default)."""
    from odebench.students.load import checkpoint_sidecar, is_checkpoint_spec, is_external_spec
    from odebench.teachers import DEFAULT_TEACHER, load_teacher

    teacher_spec, guidance, conditional, origin = config.teacher, None, None, "flag"
    ckpts = [s for s in config.students if is_checkpoint_spec(s) and not is_external_spec(s)]
    if ckpts:
        _, side = checkpoint_sidecar(ckpts[0])
        if teacher_spec is None:
            teacher_spec, origin = side["teacher"].get("spec") or side["teacher"].get("name"), f"student {ckpts[0]}"
        guidance = Guidance.from_dict(side["guidance"])
        conditional = bool(side.get("conditional", False))
    if teacher_spec is None:
        teacher_spec, origin = DEFAULT_TEACHER, "default"
    teacher = load_teacher(teacher_spec, **config.teacher_options)
    _set_prompts(teacher, config)
    if config.guidance is not None:
        guidance = config.guidance
    if guidance is not None:
        teacher = teacher.with_guidance(guidance)
    if config.conditional is not None:
        conditional = config.conditional
    if conditional is None:
        conditional = teacher.default_conditional
    if conditional and teacher.num_classes is None:
        raise OdebenchError(f"teacher {teacher.name!r} has no classes to condition on")
    if teacher.guidance.needs_uncond and not conditional:
        raise OdebenchError("classifier-free guidance needs class-conditional sampling (drop --uncond or set --guidance 1)")
    return teacher, conditional, origin


def _set_prompts(teacher: Teacher, config: RunConfig) -> None:
    """Text-conditioned teachers get the run's prompt list; other teachers refuse prompt flags."""
    if hasattr(teacher, "set_prompts"):
        from odebench.prompts import load_prompts

        teacher.set_prompts(load_prompts(config.prompts, config.prompt_column))
    elif config.prompts is not None or config.prompt_column is not None:
        raise OdebenchError(f"--prompts applies to text-conditioned teachers (sdxl), not {teacher.name!r}")


def _conditions(teacher: Teacher, conditional: bool) -> Conditions:
    """Prompt i mod P for text-conditioned teachers, label i mod C for class-conditional ones."""
    if conditional and getattr(teacher, "prompts", None):
        from odebench.conditions import PromptConditions

        return PromptConditions(teacher.prompts)
    return Conditions(teacher.num_classes if conditional else None)


def _declared_ddim100(students) -> str | None:
    """The DDIM-100 timestep mode the students were distilled on, when their sidecars declare one and agree."""
    declared = {(getattr(s, "trained_for", None) or {}).get("ode", {}).get("ddim100_timesteps") for s in students}
    declared.discard(None)
    return declared.pop() if len(declared) == 1 else None


def _ddim100_teacher(teacher: Teacher, config: RunConfig, students=()) -> tuple[Teacher, str]:
    """The teacher the DDIM-100 reference runs on, and how its UNet timesteps are chosen."""
    mode = config.ddim100_timesteps
    if mode == "auto":
        mode = _declared_ddim100(students) or ("paper" if getattr(teacher, "paper_timestep_shift", 0.0) else "sigma")
    if mode == "paper":
        return teacher.with_timestep_shift(1.0), "UNet given the integer t, abar at t-1 (the released code)"
    return teacher, "UNet at t-1, consistent with sigma"


def _run_names(config: RunConfig, students) -> list[str]:
    from odebench.results import check_name, safe_name

    if config.name is not None:
        check_name(config.name)
        names = [config.name] if len(students) == 1 else [f"{config.name}-{safe_name(s.name)}" for s in students]
    else:
        names = [safe_name(s.name) for s in students]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise OdebenchError(f"two students would write the same run directory {dupes[0]!r}; list each student once")
    return names


def _sample_student(student, teacher, noise, conditions, n, batch_size, dtype, advance, steps=None,
                    dist=None, cache=None) -> torch.Tensor | None:
    """Samples of indices [0, n) in batches [lo, lo + batch_size); sharded over ranks by whole batches
    (so each batch is the single-process one) and gathered on rank 0 (None on other ranks). Students
    with a `cache_identity` (the solver rows: deterministic functions of the teacher) are memoized."""
    from odebench.distributed import Single
    from odebench.ode.cache import memoized
    from odebench.ode.trajectories import initial_state

    def shard(indices: range) -> torch.Tensor:
        outs = []
        for lo in range(indices.start, indices.stop, batch_size):
            idx = range(lo, min(lo + batch_size, indices.stop))
            x_start = initial_state(teacher, noise, idx, dtype)
            cond = conditions.tensor(idx)
            compute = lambda x_start=x_start, cond=cond, idx=idx: student.sample(  # noqa: E731
                x_start, cond, lambda s: noise.draw(idx, s, dtype), steps)
            if cache is not None and hasattr(student, "cache_identity"):
                outs.append(memoized(cache, {**student.cache_identity(steps), "cond": conditions.key(idx)},
                                     {"x": x_start}, compute))
            else:
                outs.append(compute())
            advance(len(idx))
        return torch.cat(outs)

    parts = (dist or Single()).run(shard, n, batch_size)
    return torch.cat(parts) if parts is not None else None


def _curve(student, ref, conditions, m: int, cache=None) -> dict | None:
    from odebench.metrics.ode_error import error_curve
    from odebench.ode.cache import memoized

    m = min(m, ref.traj.shape[1]) if ref.curve_sigmas.numel() else 0
    if m == 0:
        return None
    cond = conditions.tensor(range(m))

    def at(j: int, s: float) -> torch.Tensor:
        x = ref.traj[j, :m]
        if cache is None or not hasattr(student, "cache_identity"):
            return student(x, s, cond)
        return memoized(cache, {**student.cache_identity(), "call": "consistency", "sigma": s, "cond": conditions.key(range(m))},
                        {"x": x}, lambda: student(x, s, cond))

    outs = [at(j, float(s)) for j, s in enumerate(ref.curve_sigmas)]
    return error_curve(outs, ref.x0[:m], ref.curve_sigmas)


def run(config: RunConfig, progress: Progress | None = None, command: list[str] | None = None) -> list[RunOutcome]:
    """Score every student of `config` against one shared reference; one run directory each.

    Under a multi-process launch every rank calls this: each computes its shard of every stage,
    rank 0 scores and writes and returns the outcomes, other ranks return [] (odebench.distributed)."""
    from odebench.distributed import current
    from odebench.metrics.ode_error import ode_error_metrics, per_sample_se
    from odebench.metrics.registry import value
    from odebench.metrics.stats import mean_stderr
    from odebench.ode.cache import TrajectoryCache
    from odebench.ode.grids import karras_sigmas
    from odebench.ode.floor import reference_floor
    from odebench.ode.noise import NoiseBank
    from odebench.ode.precision import effective_spec
    from odebench.ode.reference import DTYPE
    from odebench.ode.trajectories import merge_reference_sets, reference_set
    from odebench.quality import quality_for
    from odebench.results import SCHEMA, environment, write_run
    from odebench.students.load import load_student

    t_start = time.perf_counter()
    dist = current()  # Single() unless launched as several processes (odebench.distributed)
    progress = (progress or Progress()) if dist.is_main else Progress()  # bars on rank 0 only
    config.validate()

    def setup():
        teacher, conditional, teacher_origin = _resolve_teacher(config)
        spec = config.solver.resolved("float64" if teacher.default_dtype == torch.float64 else "float32")
        loaded = [load_student(s, teacher, spec, conditional, config.allow_mismatch, config.student_guidance,
                               config.student_convention) for s in (config.students or teacher.default_students)]
        return teacher, conditional, teacher_origin, spec, loaded, _run_names(config, [s for s, _ in loaded])

    # a failure on any rank fails every rank here, before any rank waits on another
    teacher, conditional, teacher_origin, spec, loaded, names = dist.check(setup)
    n = config.samples if config.samples is not None else teacher.default_samples

    noise = NoiseBank(config.seed, teacher.shape)
    conditions = _conditions(teacher, conditional)
    cache = TrajectoryCache(config.cache_dir, enabled=config.use_cache)
    curve_sigmas = karras_sigmas(config.curve_points + 2, teacher.sigma_min, teacher.sigma_max)[1:-1] \
        if config.curve_points else torch.empty(0, dtype=torch.float64)
    dtype = DTYPE[spec.dtype]

    # built before any solving (rank 0 scores): an explicitly requested metric without weights fails at once
    quality = dist.check(lambda: quality_for(teacher, conditions, config.seed, n, config.metrics, config.metric_weights,
                                             getattr(teacher, "device", None), config.fd_bootstrap) if dist.is_main else None)
    # tolerances no tighter than the drift's measured precision allows (odebench.ode.precision)
    spec, drift_delta, tolerance_note = effective_spec(teacher, spec, noise, conditions, cache)
    for student, _ in loaded:
        if getattr(student, "is_reference", False):
            student.solver = spec  # the ref row describes the reference as solved
    # each stage runs on this rank's whole reference chunks / batches; ranks > 0 get None back
    merged = lambda parts, merge: merge(parts) if parts is not None else None  # noqa: E731
    with progress.task("reference ODE", len(dist.shard(n, spec.batch))) as advance:
        ref = merged(dist.run(lambda idx: reference_set(teacher, spec, noise, conditions, len(idx), cache, curve_sigmas,
                                                        start=idx.start, progress=advance), n, spec.batch),
                     merge_reference_sets)
    m_floor = min(config.floor_samples, n)
    floor = None
    if m_floor:
        def floor_solve(t, s, m, label):
            with progress.task(f"reference floor: {label} ({s.rtol:g})", len(dist.shard(m, s.batch))) as advance:
                part = merged(dist.run(lambda idx: reference_set(t, s, noise, conditions, len(idx), cache, torch.empty(0, dtype=torch.float64),
                                                                 start=idx.start, progress=advance), m, s.batch), merge_reference_sets)
            return None if part is None else (part.x0, part.nfe_per_sample)

        floor = reference_floor(teacher, spec, ref.x0 if dist.is_main else None, m_floor, floor_solve, drift_delta)
    floor_s = floor.pop("seconds") if floor is not None else 0.0  # with the timings: the floor's numbers stay bitwise reproducible

    ddim100 = None
    if hasattr(teacher, "num_timesteps"):  # discrete teachers: also the paper's DDIM-100 reference
        from odebench.ode.trajectories import GRID_BATCH, grid_reference_set, merge_grid_references

        ddim_teacher, ddim_timesteps = _ddim100_teacher(teacher, config, [s for s, _ in loaded])
        with progress.task("DDIM-100 reference (paper)", len(dist.shard(n, GRID_BATCH))) as advance:
            ddim100, ddim100_info = merged(dist.run(lambda idx: grid_reference_set(
                ddim_teacher, noise, conditions, len(idx), cache, progress=advance, start=idx.start), n, GRID_BATCH),
                merge_grid_references) or (None, None)
        if ddim100_info is not None:
            ddim100_info["unet_timesteps"] = ddim_timesteps

    network = f"; network {teacher.network_dtype}" if teacher.network_dtype else ""
    ref_identity = f"reference {spec.describe()}; teacher {teacher.fingerprint()}{network}; guidance {teacher.guidance.describe()}"
    outcomes = []
    for (student, note), name in zip(loaded, names):
        t0 = time.perf_counter()
        before = teacher.counter.snapshot()
        if getattr(student, "is_reference", False):
            x0, student_nfe = (ref.x0, ref.nfe_per_sample) if dist.is_main else (None, None)
        else:
            with progress.task(f"{student.name} samples", len(dist.shard(n, config.batch_size))) as advance:
                x0 = _sample_student(student, teacher, noise, conditions, n, config.batch_size, dtype, advance, dist=dist,
                                     cache=cache)
            student_nfe = student.nfe()
        t_sample = time.perf_counter() - t0
        sample_passes = dist.sum(teacher.counter.since(before).passes)
        # k-step samples are sampled by every rank; everything after them is rank 0's alone
        xks = {k: _sample_student(student, teacher, noise, conditions, n, config.batch_size, dtype, lambda k_=1: None,
                                  steps=k, dist=dist, cache=cache)
               for k in (config.ksteps if student.variable_steps else ()) if k != student.steps}
        if not dist.is_main:
            continue
        metrics = ode_error_metrics(x0, ref.x0, ref_identity)
        if ddim100 is not None:
            d100 = ode_error_metrics(x0, ddim100, f"teacher DDIM on the paper's 1-indexed 100-point grid ({ddim_timesteps}), same noise; "
                                     f"teacher {teacher.fingerprint()}; guidance {teacher.guidance.describe()}")
            metrics["ode_mse@ddim100"] = value("ode_mse@ddim100", d100["ode_mse@ref"].value, d100["ode_mse@ref"].stderr,
                                               d100["ode_mse@ref"].identity, n)
        kstep = {}
        for k, xk in xks.items():
            kstep[k] = ode_error_metrics(xk, ref.x0, ref_identity + f"; student sampled with k={k}", suffix=f"[k={k}]")
            metrics.update({k_: v for k_, v in kstep[k].items() if k_.startswith("ode_mse")})
        t1 = time.perf_counter()
        # the oracle's curve would cost one reference solve per noise level and is zero up to the floor
        curve = None if getattr(student, "is_reference", False) else _curve(student, ref, conditions, min(config.curve_samples, n), cache)
        if curve is not None:
            metrics["ode_mse@ref_curve_mean"] = value("ode_mse@ref_curve_mean", float(sum(curve["ode_mse"]) / len(curve["ode_mse"])),
                                                      None, ref_identity + f"; mean over {len(curve['sigma'])} karras sigmas", curve["n"])
        t_curve = time.perf_counter() - t1
        extras: dict[str, Any] = {}
        per_sample_quality: dict[str, Any] = {}
        t2 = time.perf_counter()
        if quality is not None:
            with progress.task(f"{student.name} quality metrics", 1) as advance:
                qm, extras, per_sample_quality = quality.score(x0, ref.x0)
                advance(1)
            metrics.update(qm)
        t_quality = time.perf_counter() - t2
        flags = []
        mse = metrics["ode_mse@ref"].value
        if floor is not None and not getattr(student, "is_reference", False) and mse < FLOOR_FACTOR * floor["ode_mse"]:
            flags.append(f"at-reference-floor: ode_mse {mse:.3g} is within {FLOOR_FACTOR:g}x of the reference floor {floor['ode_mse']:.3g} "
                         f"(solver {floor['parts']['solver']['ode_mse']:.2g} + precision {floor['parts']['precision']['ode_mse']:.2g}); "
                         "tighten the reference (--rtol/--atol) or raise the network precision (--dtype)")
        if tolerance_note:
            flags.append(f"reference-tolerance-raised: {tolerance_note}")
        if note:
            flags.append(f"teacher-mismatch: {note}")
        result = {
            "schema": SCHEMA,
            "name": name,
            "command": command if command is not None else sys.argv,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "teacher": {**teacher.describe(), "origin": teacher_origin},
            "student": student.describe(),
            "conditioning": conditions.describe(),
            "samples": n,
            "seeds": {**noise.describe(), "exact_samples": "stream_seed(seed, -1, 0)"},
            "reference": {"solver": spec.to_dict(), "description": spec.describe(), "floor": floor,
                          "requested_solver": config.solver.to_dict(), "drift_precision": drift_delta,
                          "network_dtype": teacher.network_dtype,
                          "ddim100": ddim100_info if ddim100 is not None else None,
                          "curve_sigmas": ref.curve_sigmas.tolist(), "seconds": ref.seconds},
            "nfe": {"student_per_sample": student_nfe, "student_teacher_passes": sample_passes,
                    "reference": ref.nfe_summary()},
            "metrics": {k: v.to_dict() for k, v in metrics.items()},
            "curves": {"ode_mse_vs_sigma": curve} if curve is not None else {},
            "extras": extras,
            "flags": flags,
            "timings": {"sample_s": t_sample, "curve_s": t_curve, "quality_s": t_quality,
                        "reference_s": ref.seconds, "floor_s": floor_s, "total_s": time.perf_counter() - t_start},
            "environment": {**environment(), **dist.describe()},
        }
        tensors = {"ode_se": torch.from_numpy(per_sample_se(x0, ref.x0)), "samples": x0.float()}
        # per-sample quality scores, for reports that set ODE error against quality sample by sample
        tensors.update({f"quality.{k}": torch.as_tensor(v, dtype=torch.float64) for k, v in per_sample_quality.items()})
        labels = conditions.tensor(range(n))
        if labels is not None:
            tensors["labels"] = labels
        grid = None
        if hasattr(teacher, "decode"):  # image domains: a sample grid, one column per label
            from odebench.images import save_grid

            images = teacher.decode(x0[:min(n, getattr(teacher, "grid_count", 100))])
            grid = lambda d, images=images: save_grid(images, d / "samples.png", nrow=10,  # noqa: E731
                                                      scale=getattr(teacher, "grid_scale", 4))
        path = write_run(Path(config.out), name, result, tensors, grid)
        outcomes.append(RunOutcome(name, path, result))
    return outcomes
