"""`odebench run`: reference solutions, student samples from the same noise, metrics, result files."""
from __future__ import annotations

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
from odebench.teachers.base import DECODES, TEXT, Guidance, Teacher

FLOOR_FACTOR = 10.0  # a student error within this factor of the reference floor is flagged
NON_FINITE_OUTPUT = "non-finite-student-output"


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
    floor_samples: int = 8  # re-solved for the reference floor (odebench.ode.floor)
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
        for attr in ("curve_points", "curve_samples", "floor_samples", "fd_bootstrap"):
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
    """The run's teacher, conditioning and where they came from (flag, a student file's declaration, default)."""
    from odebench.students.kinds import declared_ode
    from odebench.teachers import DEFAULT_TEACHER, load_teacher

    teacher_spec, guidance, conditional, origin = config.teacher, None, None, "flag"
    declared = declared_ode(config.students)
    if declared is not None:
        if teacher_spec is None and declared.teacher is not None:
            teacher_spec, origin = declared.teacher, declared.source
        guidance, conditional = declared.guidance, declared.conditional
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
    if teacher.has(TEXT):
        from odebench.prompts import load_prompts

        teacher.set_prompts(load_prompts(config.prompts, config.prompt_column))
    elif config.prompts is not None or config.prompt_column is not None:
        raise OdebenchError(f"--prompts applies to text-conditioned teachers, not {teacher.name!r}")


def _conditions(teacher: Teacher, conditional: bool) -> Conditions:
    """Prompt i mod P for text-conditioned teachers, label i mod C for class-conditional ones."""
    if conditional and teacher.has(TEXT):
        from odebench.conditions import PromptConditions

        return PromptConditions(teacher.prompts)
    return Conditions(teacher.num_classes if conditional else None)


def _declared_ddim100(students) -> str | None:
    """The DDIM-100 timestep mode the students were distilled on, when their sidecars declare one and agree."""
    declared = {(s.trained_for or {}).get("ode", {}).get("ddim100_timesteps") for s in students}
    declared.discard(None)
    return declared.pop() if len(declared) == 1 else None


def _ddim100_teacher(teacher: Teacher, config: RunConfig, students=()) -> tuple[Teacher, str]:
    """The teacher the DDIM-100 reference runs on, and how its UNet timesteps are chosen."""
    from odebench.teachers.family import family_of

    mode = config.ddim100_timesteps
    if mode == "auto":
        grid = family_of(teacher).paper_grid
        mode = _declared_ddim100(students) or (grid.unet_timesteps if grid is not None else "sigma")
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
    that declare a `cache_identity` (the solver rows: deterministic functions of the teacher) are memoized."""
    from odebench.distributed import Single
    from odebench.ode.cache import memoized
    from odebench.ode.noise import SampleNoise
    from odebench.ode.trajectories import initial_state

    identity = student.cache_identity(steps) if cache is not None else None

    def shard(indices: range) -> torch.Tensor:
        outs = []
        for lo in range(indices.start, indices.stop, batch_size):
            idx = range(lo, min(lo + batch_size, indices.stop))
            x_start = initial_state(teacher, noise, idx, dtype)
            cond = conditions.tensor(idx)
            compute = lambda x_start=x_start, cond=cond, idx=idx: student.sample(  # noqa: E731
                x_start, cond, SampleNoise(noise, idx, dtype), steps)
            if identity is not None:
                outs.append(memoized(cache, {**identity, "cond": conditions.key(idx)}, {"x": x_start}, compute))
            else:
                outs.append(compute())
            advance(len(idx))
        return torch.cat(outs)

    parts = (dist or Single()).run(shard, n, batch_size)
    return torch.cat(parts) if parts is not None else None


def _non_finite(x: torch.Tensor) -> int:
    """How many samples hold an inf or nan anywhere."""
    return int((~torch.isfinite(x.reshape(x.shape[0], -1))).any(dim=1).sum())


def _curve(student, ref, conditions, m: int, cache=None) -> dict | None:
    from odebench.metrics.ode_error import error_curve
    from odebench.ode.cache import memoized

    m = min(m, ref.traj.shape[1]) if ref.curve_sigmas.numel() else 0
    if m == 0:
        return None
    cond = conditions.tensor(range(m))
    identity = student.cache_identity() if cache is not None else None

    def at(j: int, s: float) -> torch.Tensor:
        x = ref.traj[j, :m]
        if identity is None:
            return student(x, s, cond)
        return memoized(cache, {**identity, "call": "consistency", "sigma": s, "cond": conditions.key(range(m))},
                        {"x": x}, lambda: student(x, s, cond))

    outs = [at(j, float(s)) for j, s in enumerate(ref.curve_sigmas)]
    return error_curve(outs, ref.x0[:m], ref.curve_sigmas)


# -- the run as named stages: plan -> references -> per student: sample, score -> write -------------

@dataclass
class Plan:
    """Everything decided before any solving: the teacher ODE, the students, the samples and their noise."""

    teacher: Teacher
    conditional: bool
    teacher_origin: str
    spec: SolverSpec  # the reference solve: dtype resolved, tolerances raised to the drift's precision
    requested: SolverSpec  # the reference the user asked for (--method/--rtol/--atol/...)
    drift_delta: float  # the drift's measured relative rounding noise (odebench.ode.precision)
    tolerance_note: str | None  # one line when the tolerances were raised
    rows: list  # (student, mismatch note)
    names: list[str]  # run directory per row
    n: int
    noise: Any  # NoiseBank
    conditions: Conditions
    cache: Any  # TrajectoryCache
    curve_sigmas: torch.Tensor
    dtype: torch.dtype
    quality: Any  # the family's quality scorer (rank 0), or None


@dataclass
class References:
    """The shared references every student is scored against (full on rank 0; None fields elsewhere)."""

    ref: Any  # ReferenceSet
    floor: dict | None  # odebench.ode.floor.reference_floor, its parts included
    floor_seconds: float  # the floor's re-solves (a timing, kept out of the floor's reproducible numbers)
    ddim100: torch.Tensor | None
    ddim100_info: dict | None
    identity: str  # what `ode_mse@ref` is measured against


@dataclass
class Sampled:
    x0: torch.Tensor | None  # gathered samples (rank 0)
    nfe_per_sample: Any
    teacher_passes: int
    seconds: float
    ksteps: dict  # k -> samples with k steps (variable-step students)


@dataclass
class Scored:
    metrics: dict
    curve: dict | None
    spectrum: dict | None  # radially averaged spectra of the error, samples and reference (image states)
    extras: dict
    per_sample: dict  # per-sample quality scores and spectral diagnostics, by tensor name
    flags: list[str]
    curve_seconds: float
    quality_seconds: float


def plan(config: RunConfig, dist, progress: Progress) -> Plan:
    """Stage 1: teacher, conditioning, reference spec, students and run names; the quality scorer (a
    requested metric without weights fails here, before any solving); then the reference's tolerances
    raised to what the drift's measured precision allows (a short cached probe)."""
    from odebench.ode.cache import TrajectoryCache
    from odebench.ode.grids import karras_sigmas
    from odebench.ode.noise import NoiseBank
    from odebench.ode.precision import effective_spec
    from odebench.ode.reference import DTYPE
    from odebench.students.kinds import default_rows, load_student
    from odebench.teachers.family import family_of

    def setup():
        if dist.is_main:  # rank 0 writes: an unwritable --out fails now, not after the solving
            from odebench.fileio import check_writable_dir

            check_writable_dir(Path(config.out))
        teacher, conditional, teacher_origin = _resolve_teacher(config)
        spec = config.solver.resolved("float64" if teacher.default_dtype == torch.float64 else "float32")
        specs = config.students or default_rows(teacher, family_of(teacher).rows(teacher))
        loaded = [load_student(s, teacher, spec, conditional, config.allow_mismatch, config.student_guidance,
                               config.student_convention) for s in specs]
        return teacher, conditional, teacher_origin, spec, loaded, _run_names(config, [s for s, _ in loaded])

    # a failure on any rank fails every rank here, before any rank waits on another
    teacher, conditional, teacher_origin, spec, loaded, names = dist.check(setup)
    n = config.samples if config.samples is not None else teacher.default_samples
    noise = NoiseBank(config.seed, teacher.shape)
    conditions = _conditions(teacher, conditional)
    cache = TrajectoryCache(config.cache_dir, enabled=config.use_cache)
    cache_note = cache.check_writable()  # a file in the way is an error now, not after the first solve
    if cache_note:
        progress.log(cache_note)
    curve_sigmas = karras_sigmas(config.curve_points + 2, teacher.sigma_min, teacher.sigma_max)[1:-1] \
        if config.curve_points else torch.empty(0, dtype=torch.float64)
    # built before any solving (rank 0 scores): an explicitly requested metric without weights fails at once
    quality = dist.check(lambda: family_of(teacher).quality(teacher, conditions, config.seed, n, config.metrics,
                                                            config.metric_weights, teacher.device, config.fd_bootstrap)
                         if dist.is_main else None)
    # tolerances no tighter than the drift's measured precision allows (deterministic and cached: every rank agrees)
    requested = spec
    spec, drift_delta, tolerance_note = effective_spec(teacher, spec, noise, conditions, cache)
    for student, _ in loaded:
        if student.is_oracle:
            student.solver = spec  # the ref row describes (and its curve solves) the reference as solved
    return Plan(teacher, conditional, teacher_origin, spec, requested, drift_delta, tolerance_note, loaded, names, n, noise,
                conditions, cache, curve_sigmas, DTYPE[spec.dtype], quality)


def references(p: Plan, config: RunConfig, progress: Progress, dist) -> References:
    """Stage 2: the converged reference, its floor (solver and precision parts, odebench.ode.floor) and,
    for families with a paper grid, the DDIM reference on it; each rank solves its whole chunks, rank 0
    gets them all."""
    from odebench.ode.floor import reference_floor
    from odebench.ode.trajectories import reference_set, merge_reference_sets
    from odebench.teachers.family import family_of

    teacher, spec, noise, conditions, cache, n = p.teacher, p.spec, p.noise, p.conditions, p.cache, p.n
    merged = lambda parts, merge: merge(parts) if parts is not None else None  # noqa: E731
    with progress.task("reference ODE", len(dist.shard(n, spec.batch))) as advance:
        ref = merged(dist.run(lambda idx: reference_set(teacher, spec, noise, conditions, len(idx), cache, p.curve_sigmas,
                                                        start=idx.start, progress=advance), n, spec.batch),
                     merge_reference_sets)
    m_floor = min(config.floor_samples, n)
    floor = None
    if m_floor:
        def floor_solve(t, s, m, label):
            """One of the floor's re-solves (every rank its whole chunks): the first m endpoints and the NFE per sample."""
            with progress.task(f"reference floor: {label} ({s.rtol:g})", len(dist.shard(m, s.batch))) as advance:
                part = merged(dist.run(lambda idx: reference_set(t, s, noise, conditions, len(idx), cache,
                                                                 torch.empty(0, dtype=torch.float64), start=idx.start,
                                                                 progress=advance), m, s.batch), merge_reference_sets)
            return None if part is None else (part.x0, part.nfe_per_sample)

        floor = reference_floor(teacher, spec, ref.x0 if dist.is_main else None, m_floor, floor_solve, p.drift_delta)
    floor_seconds = floor.pop("seconds") if floor is not None else 0.0  # a timing: the floor's numbers stay bitwise reproducible

    ddim100, ddim100_info = None, None
    grid = family_of(teacher).paper_grid
    if grid is not None:  # discrete families: also the paper's DDIM-100 reference
        from odebench.ode.trajectories import GRID_BATCH, grid_reference_set, merge_grid_references

        ddim_teacher, ddim_timesteps = _ddim100_teacher(teacher, config, [s for s, _ in p.rows])
        with progress.task("DDIM-100 reference (paper)", len(dist.shard(n, GRID_BATCH))) as advance:
            ddim100, ddim100_info = merged(dist.run(lambda idx: grid_reference_set(
                ddim_teacher, noise, conditions, len(idx), cache, grid.n, grid.solver, progress=advance, start=idx.start),
                n, GRID_BATCH), merge_grid_references) or (None, None)
        if ddim100_info is not None:
            ddim100_info["unet_timesteps"] = ddim_timesteps
    network = f"; network {teacher.network_dtype}" if teacher.network_dtype else ""
    identity = f"reference {spec.describe()}; teacher {teacher.fingerprint()}{network}; guidance {teacher.guidance.describe()}"
    return References(ref, floor, floor_seconds, ddim100, ddim100_info, identity)


def sample(p: Plan, student, refs: References, config: RunConfig, progress: Progress, dist) -> Sampled:
    """Stage 3 (every rank): the student's samples from the run's noise, and its k-step samples."""
    t0 = time.perf_counter()
    before = p.teacher.counter.snapshot()
    if student.is_oracle:
        x0, nfe = (refs.ref.x0, refs.ref.nfe_per_sample) if dist.is_main else (None, None)
    else:
        with progress.task(f"{student.name} samples", len(dist.shard(p.n, config.batch_size))) as advance:
            x0 = _sample_student(student, p.teacher, p.noise, p.conditions, p.n, config.batch_size, p.dtype, advance, dist=dist,
                                 cache=p.cache)
        nfe = student.nfe()
    seconds = time.perf_counter() - t0
    passes = dist.sum(p.teacher.counter.since(before).passes)
    # k-step samples are sampled by every rank; everything after them is rank 0's alone
    xks = {k: _sample_student(student, p.teacher, p.noise, p.conditions, p.n, config.batch_size, p.dtype,
                              lambda k_=1: None, steps=k, dist=dist, cache=p.cache)
           for k in (config.ksteps if student.variable_steps else ()) if k != student.steps}
    return Sampled(x0, nfe, passes, seconds, xks)


def score(p: Plan, student, note: str | None, refs: References, s: Sampled, config: RunConfig,
          progress: Progress) -> Scored:
    """Stage 4 (rank 0): ODE errors against both references, k-step errors, the per-sigma curve,
    the family's quality metrics, and the flags."""
    from odebench.metrics.ode_error import ode_error_metrics
    from odebench.metrics.registry import value
    from odebench.students.kinds import DESCRIPTIVE_KINDS

    teacher, ref, n = p.teacher, refs.ref, p.n
    # a diverged student: its metrics are null (a NaN mean), never averaged over its finite samples
    bad_samples = {"": _non_finite(s.x0), **{f"[k={k}]": _non_finite(xk) for k, xk in s.ksteps.items()}}
    metrics = ode_error_metrics(s.x0, ref.x0, refs.identity)
    if refs.ddim100 is not None:
        d100 = ode_error_metrics(s.x0, refs.ddim100, f"teacher DDIM on the paper's 1-indexed 100-point grid "
                                 f"({refs.ddim100_info['unet_timesteps']}), same noise; "
                                 f"teacher {teacher.fingerprint()}; guidance {teacher.guidance.describe()}")
        metrics["ode_mse@ddim100"] = value("ode_mse@ddim100", d100["ode_mse@ref"].value, d100["ode_mse@ref"].stderr,
                                           d100["ode_mse@ref"].identity, n)
    for k, xk in s.ksteps.items():
        kstep = ode_error_metrics(xk, ref.x0, refs.identity + f"; student sampled with k={k}", suffix=f"[k={k}]")
        metrics.update({k_: v for k_, v in kstep.items() if k_.startswith("ode_mse")})
    t1 = time.perf_counter()
    # the oracle's curve would cost one reference solve per noise level and is zero up to the floor
    curve = None if student.is_oracle or not student.curve else _curve(student, ref, p.conditions, min(config.curve_samples, n), p.cache)
    if curve is not None:
        # the levels share their samples, so the stderr of the mean over levels is at most the mean stderr
        metrics["ode_mse@ref_curve_mean"] = value("ode_mse@ref_curve_mean", float(sum(curve["ode_mse"]) / len(curve["ode_mse"])),
                                                  float(sum(curve["stderr"]) / len(curve["stderr"])),
                                                  refs.identity + f"; mean over {len(curve['sigma'])} karras sigmas", curve["n"])
    spectrum, per_sample = None, {}
    if len(teacher.shape) == 3:  # image-shaped states: the ODE error by frequency band, and a blur indicator
        from odebench.metrics.spectral import spectral_diagnostics

        sm, spectrum, per_sample = spectral_diagnostics(s.x0, ref.x0, refs.identity)
        metrics.update(sm)
    t_curve = time.perf_counter() - t1
    extras: dict[str, Any] = {}
    t2 = time.perf_counter()
    if p.quality is not None and bad_samples[""]:
        extras["quality_skipped"] = "the student's samples are not all finite"
    elif p.quality is not None:
        with progress.task(f"{student.name} quality metrics", 1) as advance:
            qm, extras, quality_per_sample = p.quality.score(s.x0, ref.x0)
            advance(1)
        metrics.update(qm)
        # per-sample quality scores, for reports that set ODE error against quality sample by sample
        per_sample.update({f"quality.{k}": v for k, v in quality_per_sample.items()})
    t_quality = time.perf_counter() - t2
    flags = []
    mse = metrics["ode_mse@ref"].value
    if refs.floor is not None and not student.is_oracle and mse < FLOOR_FACTOR * refs.floor["ode_mse"]:
        parts = refs.floor["parts"]
        flags.append(f"at-reference-floor: ode_mse {mse:.3g} is within {FLOOR_FACTOR:g}x of the reference floor {refs.floor['ode_mse']:.3g} "
                     f"(solver {parts['solver']['ode_mse']:.2g} + precision {parts['precision']['ode_mse']:.2g}); "
                     "tighten the reference (--rtol/--atol) or raise the network precision (--dtype)")
    if p.tolerance_note:
        flags.append(f"reference-tolerance-raised: {p.tolerance_note}")
    if note:
        flags.append(f"teacher-mismatch: {note}")
    if student.kind in DESCRIPTIVE_KINDS:
        flags.append(f"descriptive-ode-error: {student.name} is a {student.kind} student (trained to match the data "
                     f"distribution, not to solve the teacher's ODE); its ODE error describes it, it does not grade it")
    flags += [f"{NON_FINITE_OUTPUT}{k}: {b}/{n} samples are inf/nan; their ODE-error metrics are null"
              + ("" if k or p.quality is None else " and quality metrics were not computed") for k, b in bad_samples.items() if b]
    return Scored(metrics, curve, spectrum, extras, per_sample, flags, t_curve, t_quality)


def write(p: Plan, student, name: str, refs: References, s: Sampled, sc: Scored, config: RunConfig,
          command: list[str] | None, t_start: float, dist) -> RunOutcome:
    """Stage 5 (rank 0): result.json (odebench.results owns its schema), per-sample tensors, the sample grid."""
    from odebench.metrics.ode_error import per_sample_se
    from odebench.results import build_result, finite_result, write_run

    teacher, n = p.teacher, p.n
    result = build_result(
        name=name, command=command if command is not None else sys.argv,
        teacher={**teacher.describe(), "origin": p.teacher_origin}, student=student.describe(),
        conditioning=p.conditions.describe(), samples=n, seeds=p.noise.describe(), solver=p.spec, floor=refs.floor,
        requested_solver=p.requested, drift_precision=p.drift_delta, network_dtype=teacher.network_dtype,
        ddim100=refs.ddim100_info if refs.ddim100 is not None else None, ref=refs.ref,
        nfe={"student_per_sample": s.nfe_per_sample, "student_teacher_passes": s.teacher_passes},
        metrics=sc.metrics, curve=sc.curve, spectrum=sc.spectrum, extras=sc.extras, flags=sc.flags,
        timings={"sample_s": s.seconds, "curve_s": sc.curve_seconds, "quality_s": sc.quality_seconds,
                 "reference_s": refs.ref.seconds, "floor_s": refs.floor_seconds, "total_s": time.perf_counter() - t_start},
        distributed=dist.describe())
    tensors = {"ode_se": torch.from_numpy(per_sample_se(s.x0, refs.ref.x0)), "samples": s.x0.float()}
    tensors.update({k: torch.as_tensor(v, dtype=torch.float64) for k, v in sc.per_sample.items()})
    labels = p.conditions.tensor(range(n))
    if labels is not None:
        tensors["labels"] = labels
    grid = None
    if teacher.has(DECODES):  # image domains: a sample grid, one column per label
        from odebench.images import save_grid

        images = teacher.decode(s.x0[:min(n, teacher.grid_count)])
        grid = lambda d, images=images: save_grid(images, d / "samples.png", nrow=10, scale=teacher.grid_scale)  # noqa: E731
    result = finite_result(result)  # inf/nan anywhere (curves, extras, floor) -> null plus a flag
    path = write_run(Path(config.out), name, result, tensors, grid)
    return RunOutcome(name, path, result)


def run(config: RunConfig, progress: Progress | None = None, command: list[str] | None = None) -> list[RunOutcome]:
    """Score every student of `config` against one shared reference; one run directory each.

    Under a multi-process launch every rank calls this: each computes its shard of every stage,
    rank 0 scores and writes and returns the outcomes, other ranks return [] (odebench.distributed)."""
    from odebench.distributed import current

    t_start = time.perf_counter()
    dist = current()  # Single() unless launched as several processes (odebench.distributed)
    progress = (progress or Progress()) if dist.is_main else Progress()  # bars on rank 0 only
    config.validate()
    p = plan(config, dist, progress)
    refs = references(p, config, progress, dist)
    outcomes = []
    for (student, note), name in zip(p.rows, p.names):
        sampled = sample(p, student, refs, config, progress, dist)
        if not dist.is_main:
            continue
        scored = score(p, student, note, refs, sampled, config, progress)
        outcomes.append(write(p, student, name, refs, sampled, scored, config, command, t_start, dist))
    return outcomes
