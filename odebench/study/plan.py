"""A study's grid (method x training steps x seed, optionally loss, teacher solver, LoRA rank) and the
full identity of each point: everything its numbers depend on, hashed into the key that decides
whether a point is already done."""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from odebench.errors import OdebenchError
from odebench.ode.spec import SolverSpec

GRID_FIELDS = ("methods", "steps", "seeds", "losses", "solvers", "lora_ranks")  # may grow between invocations
FACTORS = ("method", "loss", "solver", "lora_rank", "steps", "seed")
# training defaults by student architecture: UNet teachers as the shipped digits students (and the
# paper: batch 16, lr 1e-4), MLP students of mixture teachers as `odebench train`
UNET_DEFAULTS = {"batch_size": 16, "lr": 1e-4}
MLP_DEFAULTS = {"batch_size": 256, "lr": 1e-3}


def _canon(x: Any) -> str:
    return json.dumps(x, sort_keys=True, separators=(",", ":"))


def digest(x: Any) -> str:
    return hashlib.sha256(_canon(x).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StudyConfig:
    teacher: str = "gmm"
    # the grid
    methods: tuple[str, ...] = ("cm", "direct")
    steps: tuple[int, ...] = (500, 2000, 8000)
    seeds: tuple[int, ...] = (0, 1, 2)
    losses: tuple[str, ...] = ("l2",)
    solvers: tuple[str, ...] = ("ddim",)
    lora_ranks: tuple[int, ...] = (0,)  # 0: full fine-tune (UNet teachers); > 0: LoRA of that rank
    # training settings shared by every point (None: the architecture's default, UNET_/MLP_DEFAULTS)
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    grid: int = 100
    huber_c: float = 0.001
    ema: float = 0.0
    lora_alpha: float = 0.0
    checkpoint_every: int = 250
    hidden: int = 256
    depth: int = 3
    guidance: float | None = None  # None: the teacher's default
    guidance_form: str = "imagen"
    # evaluation: one RunConfig for every point, so one reference and the same noise
    samples: int | None = None
    eval_seed: int = 0
    solver: SolverSpec = field(default_factory=SolverSpec)
    eval_batch_size: int = 256
    curve_points: int = 8
    curve_samples: int = 64
    floor_samples: int = 64
    ksteps: tuple[int, ...] = (1, 2, 4)

    def fixed(self) -> dict[str, Any]:
        """Every setting but the grid: it must not change between invocations on one study directory."""
        d = self.to_dict()
        for k in GRID_FIELDS:
            d.pop(k)
        return d

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["solver"] = self.solver.to_dict()
        return json.loads(_canon(d))  # tuples as lists, as they read back

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StudyConfig":
        d = dict(d)
        d["solver"] = SolverSpec.from_dict(d["solver"])
        for k in (*GRID_FIELDS, "ksteps"):
            d[k] = tuple(d[k])
        return cls(**d)


@dataclass(frozen=True)
class Point:
    method: str
    loss: str
    solver: str
    lora_rank: int
    steps: int
    seed: int
    identity: dict[str, Any]

    @property
    def key(self) -> str:
        return digest(self.identity)

    @property
    def trajectory_key(self) -> str:
        """The training run this point is a step-count snapshot of: its identity without the step count."""
        ident = json.loads(_canon(self.identity))
        ident["train"].pop("steps")
        return digest(ident)

    @property
    def run_label(self) -> str:
        """The training run: every factor but the step count."""
        ft = "full" if self.lora_rank == 0 else f"lora{self.lora_rank}"
        return f"{self.method}-{self.loss}-{self.solver}-{ft}-seed{self.seed}"

    @property
    def name(self) -> str:
        return f"{self.run_label}-{self.steps}steps"

    def factors(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in FACTORS}

    def distill_config(self):
        from baselines.distill import DistillConfig

        return DistillConfig(**self.identity["train"])


def _unique(name: str, values) -> None:
    if len(set(values)) != len(values):
        raise OdebenchError(f"--{name} lists a value twice: {', '.join(map(str, values))}")
    if not values:
        raise OdebenchError(f"--{name} is empty")


def plan(config: StudyConfig) -> tuple[list[Point], dict[str, Any]]:
    """Every grid point with its full identity (checked before anything runs), and the teacher's identity."""
    from baselines.distill import LOSSES, TARGETS, DistillConfig
    from baselines.targets import SOLVERS
    from baselines.train import trainer_for
    from odebench.bench import RunConfig
    from odebench.teachers import load_teacher
    from odebench.teachers.base import DISCRETE, Guidance

    c = config
    for name in GRID_FIELDS:
        _unique(name.replace("_", "-"), getattr(c, name))
    bad = [m for m in c.methods if m not in TARGETS]
    if bad:
        raise OdebenchError(f"unknown method {bad[0]!r} in --methods: expected {', '.join(TARGETS)}")
    if any(not isinstance(s, int) or s < 1 for s in c.steps):
        raise OdebenchError(f"--steps must be positive integers, got {', '.join(map(str, c.steps))}")
    if any(not isinstance(s, int) or s < 0 for s in c.seeds):
        raise OdebenchError("--seeds must be non-negative integers")
    for name, values, allowed in (("loss", c.losses, LOSSES), ("solver", c.solvers, SOLVERS)):
        bad = [v for v in values if v not in allowed]
        if bad:
            raise OdebenchError(f"unknown {name} {bad[0]!r} in --{name}: expected {', '.join(allowed)}")
    if {"ddim", "euler"} <= set(c.solvers):
        raise OdebenchError("--solver ddim and euler are the same step (DDIM = Euler in sigma in VE coordinates); list one")
    if any(r < 0 for r in c.lora_ranks):
        raise OdebenchError("--lora ranks must be non-negative (0 = full fine-tune)")
    if trainer_for(c.teacher).image_options:
        raise OdebenchError("odebench study trains on CPU-sized teachers (gmm, gmm64, digits, a teacher JSON); "
                            "train text-to-image students with `odebench train` and compare them with `odebench run`")
    guidance = Guidance(c.guidance, c.guidance_form) if c.guidance is not None else None
    teacher = load_teacher(c.teacher, guidance)
    is_unet = teacher.has(DISCRETE)  # a discrete-schedule UNet teacher: its students are LCM UNets
    if not is_unet and any(c.lora_ranks):
        raise OdebenchError(f"--lora applies to UNet teachers (digits), not {teacher.name!r}")
    defaults = UNET_DEFAULTS if is_unet else MLP_DEFAULTS
    batch = c.batch_size if c.batch_size is not None else defaults["batch_size"]
    lr = c.lr if c.lr is not None else defaults["lr"]
    run_cfg = RunConfig(teacher=c.teacher, samples=c.samples, seed=c.eval_seed, solver=c.solver, batch_size=c.eval_batch_size,
                        curve_points=c.curve_points, curve_samples=c.curve_samples, floor_samples=c.floor_samples,
                        ksteps=tuple(c.ksteps))
    run_cfg.validate()
    teacher_id = {"spec": str(c.teacher),
                  "name": teacher.name, "fingerprint": teacher.fingerprint(), "guidance": teacher.guidance.to_dict(),
                  "conditional": teacher.default_conditional}
    evaluation = {"samples": c.samples if c.samples is not None else teacher.default_samples, "seed": c.eval_seed,
                  "reference": c.solver.to_dict(), "batch_size": c.eval_batch_size, "curve_points": c.curve_points,
                  "curve_samples": c.curve_samples, "floor_samples": c.floor_samples, "ksteps": list(c.ksteps)}
    points = []
    for method, loss, solver, lora, seed, steps in itertools.product(c.methods, c.losses, c.solvers, c.lora_ranks,
                                                                      c.seeds, sorted(c.steps)):
        dc = DistillConfig(target=method, steps=steps, batch_size=batch, lr=lr, weight_decay=c.weight_decay,
                           grad_clip=c.grad_clip, grid=c.grid, solver=solver, loss=loss, huber_c=c.huber_c, seed=seed,
                           checkpoint_every=c.checkpoint_every, ema=c.ema, lora_rank=lora,
                           lora_alpha=c.lora_alpha if lora else 0.0)
        dc.validate()
        ident = {"teacher": {k: teacher_id[k] for k in ("fingerprint", "guidance", "conditional")},
                 "train": asdict(dc), "student": {"hidden": c.hidden, "depth": c.depth} if not is_unet else {"unet": "teacher copy"},
                 "evaluation": evaluation}
        points.append(Point(method, loss, solver, lora, steps, seed, json.loads(_canon(ident))))
    return points, teacher_id
