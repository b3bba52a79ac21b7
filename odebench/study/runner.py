"""Train and evaluate every point of a study, resumably.

Training: the one distillation loop (`baselines.train.train_student`). The points of one training run
that differ only in their step count share one directory under `train/`: the loop's learning rate is
constant and its checkpoints resume bitwise, so the student at 2,000 steps of a run continued to 8,000
is the student a 2,000-step run would give. Each budget is trained on from the previous one's
checkpoint and snapshotted into `students/<point>/`; the study costs the largest budget per run, not
the sum. An interrupted study resumes from the last checkpoint; a finished point (its key, the hash of
its full identity, in study.json, and its run directory present) is never trained or evaluated again.

Evaluation: `odebench.run` with one RunConfig for every point (teacher, samples, noise seed,
reference solver), so every student is scored on the same noise against the same reference; the
trajectory cache solves that reference once for the whole grid. Runs go to `runs/<point>/`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from odebench.errors import OdebenchError
from odebench.progress import Progress
from odebench.study.plan import Point, StudyConfig, plan
from odebench.study.store import FILE, new_study, read_study, upsert_point, write_study


class StudyProgress:
    """Hooks for the CLI's progress display (and for tests, which interrupt through them)."""

    def point_start(self, point: Point, index: int, total: int, what: str) -> None:
        pass

    def train_step(self, point: Point, step: int, loss: float) -> None:
        pass

    def point_done(self, point: Point, entry: dict[str, Any]) -> None:
        pass

    def run_progress(self) -> Progress:
        return Progress()


def _checkpoint_step(path: Path) -> int:
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except Exception as e:  # a torn or foreign file: say which
        raise OdebenchError(f"cannot read the training checkpoint {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}; "
                            f"delete its folder to retrain that run") from None


def _check_same_settings(study: dict[str, Any], config: StudyConfig, teacher: dict[str, Any], root: Path) -> None:
    """A study directory holds one set of fixed settings; only the grid may grow between invocations."""
    old = StudyConfig.from_dict(study["config"]).fixed()
    new = config.fixed()
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if study["teacher"].get("fingerprint") != teacher["fingerprint"]:
        diff.insert(0, "teacher")
    if diff:
        raise OdebenchError(f"the study in {root} was made with other settings ({', '.join(diff)} differ); "
                            f"use those settings or another --out (only the grid lists may change)")


def _trajectory_dir(root: Path, point: Point) -> tuple[Path, int]:
    """Where `point` trains and the step it starts from: its run's shared directory, unless that run has
    already gone past this budget (then a directory of its own, from scratch)."""
    shared = root / "train" / f"{point.run_label}-{point.trajectory_key[:10]}"
    for d in (shared, root / "train" / f"{point.name}-{point.key[:10]}"):
        ckpt = d / "checkpoint.pt"
        start = _checkpoint_step(ckpt) if ckpt.is_file() else 0
        if start <= point.steps:
            return d, start
    raise OdebenchError(f"{point.name}: its own training directory went past {point.steps} steps; delete it to retrain")


def _snapshot(side: Path, dest: Path) -> Path:
    """Copy the exported student (weights, then sidecar: a sidecar implies its weights) into `dest`."""
    from odebench.fileio import atomic_write_bytes
    from odebench.students.checkpoint import read_sidecar

    dest.mkdir(parents=True, exist_ok=True)
    weights = side.parent / read_sidecar(side)["weights"]
    atomic_write_bytes(dest / weights.name, weights.read_bytes())
    atomic_write_bytes(dest / side.name, side.read_bytes())
    return dest / side.name


def _metrics_summary(result: dict[str, Any]) -> dict[str, Any]:
    return {k: {f: m.get(f) for f in ("value", "stderr", "higher_is_better", "n")} for k, m in result["metrics"].items()}


def run_study(config: StudyConfig, out: Path, progress: StudyProgress | None = None,
              cache_dir: Path | None = None) -> dict[str, Any]:
    """Train and evaluate every unfinished point of `config`'s grid in `out`; returns study.json's content."""
    from odebench.bench import RunConfig, run
    from odebench.teachers.base import Guidance

    from odebench.distributed import world_size

    if world_size() > 1:  # every rank would train and write the same points
        raise OdebenchError("odebench study runs in one process; launch it without accelerate/torchrun")
    progress = progress or StudyProgress()
    points, teacher = plan(config)  # every input error surfaces here, before any training
    root = Path(out)
    if (root / FILE).is_file():
        study = read_study(root)
        _check_same_settings(study, config, teacher, root)
        study["config"] = config.to_dict()  # the latest grid; points of earlier grids stay
    else:
        if root.exists() and any(root.iterdir()):
            raise OdebenchError(f"{root} exists and is not a study directory (no {FILE}); give an empty or new --out")
        root.mkdir(parents=True, exist_ok=True)
        study = new_study(config.to_dict(), teacher)
        write_study(root, study)
    guidance = Guidance(config.guidance, config.guidance_form) if config.guidance is not None else None
    done = {p["key"] for p in study["points"] if (root / p["run"] / "result.json").is_file()}
    todo = [p for p in points if p.key not in done]
    for i, point in enumerate(todo):
        from baselines.train import train_student  # looked up per call: the one distillation loop

        progress.point_start(point, i, len(todo), "train")
        traj, start = _trajectory_dir(root, point)
        t0 = time.perf_counter()
        side = train_student(point.distill_config(), config.teacher, traj, guidance=guidance,
                             resume=(traj / "checkpoint.pt").is_file(), hidden=config.hidden, depth=config.depth,
                             progress=lambda step, loss, rate, p=point: progress.train_step(p, step, loss))
        train_s = time.perf_counter() - t0
        student = _snapshot(side, root / "students" / point.name)
        progress.point_start(point, i, len(todo), "evaluate")
        t1 = time.perf_counter()
        rc = RunConfig(teacher=config.teacher, students=(str(student),), samples=config.samples, seed=config.eval_seed,
                       solver=config.solver, batch_size=config.eval_batch_size, curve_points=config.curve_points,
                       curve_samples=config.curve_samples, floor_samples=config.floor_samples,
                       ksteps=tuple(config.ksteps), out=root / "runs", name=point.name, cache_dir=cache_dir)
        outcome = run(rc, progress=progress.run_progress(), command=["odebench", "study", "(point)", point.name])[0]
        eval_s = time.perf_counter() - t1
        entry = {"key": point.key, "trajectory": point.trajectory_key, "name": point.name, **point.factors(),
                 "identity": point.identity, "student": str(student.relative_to(root)),
                 "run": str(outcome.path.relative_to(root)), "metrics": _metrics_summary(outcome.result),
                 "compute": {"train_s": train_s, "trained_steps": point.steps - start, "resumed_from_step": start,
                             "eval_s": eval_s, "train_dir": str(traj.relative_to(root))},
                 "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        upsert_point(study, entry)
        study["compute"]["train_s"] += train_s
        study["compute"]["eval_s"] += eval_s
        study["compute"]["train_steps"] += point.steps - start
        write_study(root, study)
        progress.point_done(point, entry)
    return study
