"""One distillation loop for CM and Direct CM: only the target differs (baselines.targets).

Each update: draw data x0 (and labels) and grid indices n ~ U{0..N-1} from one seeded generator,
forward-noise x_n = x0 + sigma_n z (real data at t_n, not a teacher trajectory, as in the paper),
form the target (CM or Direct CM; CM's target network is the student itself, as released with the
paper, or an EMA of it with `ema` > 0), and regress f_student(x_n, t_n) onto it with L2 or pseudo-Huber
sqrt(d^2 + c^2) - c. Checkpoints (model, optimiser, step, generator state) are written atomically
every `checkpoint_every` steps; `resume` continues from the last one and, on CPU, reproduces an
uninterrupted run bitwise. The result is a student in the odebench student format.

The loop is domain-agnostic: `data.sample(batch, g)` returns (x0, cond) and `cond` goes untouched to
the teacher and the student (class labels for digits, encoded captions with their micro-conditioning
for SDXL). A `runtime` (baselines.runtime) adds accelerate (DDP, mixed precision) when asked for;
under several processes every process draws the same global batch from the same generator and
keeps its own slice, so the data stream does not depend on the process count and the checkpoint
holds one generator state. A model declares the parameters worth checkpointing (`checkpoint_keys()`:
None for all, or e.g. only the LoRA of a frozen SDXL UNet) and the dtype of the ODE state
(`state_dtype`: None for the weights' dtype, float32 when the frozen weights are fp16). Data are
noised with the teacher's forward process (`teacher.add_noise`).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from odebench.ode.paper_grid import grid_for
from baselines.runtime import LocalRuntime
from baselines.targets import SOLVERS, cm_target, direct_target
from odebench.errors import OdebenchError
from odebench.fileio import atomic_write_bytes

TARGETS = ("cm", "direct")
LOSSES = ("l2", "huber")


@dataclass(frozen=True)
class DistillConfig:
    target: str
    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    grid: int = 100
    solver: str = "ddim"
    loss: str = "l2"
    huber_c: float = 0.001
    seed: int = 0
    checkpoint_every: int = 500
    ema: float = 0.0  # CM target network: an EMA of the student with this decay; 0 = the student itself (paper)
    lora_rank: int = 0  # UNet students: LoRA rank through peft (0 = full fine-tune)
    lora_alpha: float = 0.0  # LoRA alpha (0 = the rank, as the paper's 64/64)

    def validate(self) -> None:
        if self.target not in TARGETS:
            raise OdebenchError(f"unknown target {self.target!r}: expected one of {', '.join(TARGETS)}")
        if self.solver not in SOLVERS:
            raise OdebenchError(f"unknown teacher solver {self.solver!r}: expected one of {', '.join(SOLVERS)}")
        if self.loss not in LOSSES:
            raise OdebenchError(f"unknown loss {self.loss!r}: expected one of {', '.join(LOSSES)}")
        for name in ("steps", "batch_size", "grid", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise OdebenchError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if not self.lr > 0:
            raise OdebenchError(f"--lr must be positive, got {self.lr}")
        if not self.grad_clip > 0 or self.weight_decay < 0:
            raise OdebenchError(f"--grad-clip must be positive and --weight-decay non-negative, got {self.grad_clip} and {self.weight_decay}")
        if self.lora_rank < 0 or self.lora_alpha < 0:
            raise OdebenchError("--lora-rank and --lora-alpha must be non-negative")
        if not 0.0 <= self.ema < 1.0:
            raise OdebenchError(f"--ema must be in [0, 1), got {self.ema}")


def distill_loss(pred: torch.Tensor, target: torch.Tensor, kind: str, c: float) -> torch.Tensor:
    """L2: mean (f - target)^2;  pseudo-Huber: mean sqrt((f - target)^2 + c^2) - c (Song & Dhariwal 2023)."""
    d2 = (pred - target) ** 2
    return d2.mean() if kind == "l2" else (torch.sqrt(d2 + c * c) - c).mean()


def _model_state(net, keys) -> dict[str, torch.Tensor]:
    state = net.state_dict()
    return state if keys is None else {k: state[k] for k in keys}


def _load_model_state(net, state, keys) -> None:
    if keys is None:
        net.load_state_dict(state)
        return
    missing = set(keys) - set(state)
    if missing:
        raise OdebenchError(f"cannot resume: the checkpoint lacks {len(missing)} trained tensors (e.g. {sorted(missing)[0]})")
    net.load_state_dict(state, strict=False)


def _save_checkpoint(path: Path, model, opt, step: int, g: torch.Generator, ema_model=None, keys=None, scaler=None) -> None:
    buf = io.BytesIO()
    state = {"model": _model_state(model, keys), "opt": opt.state_dict(), "step": step, "rng": g.get_state()}
    if ema_model is not None:
        state["ema"] = _model_state(ema_model, keys)
    if scaler is not None:
        state["scaler"] = scaler
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_checkpoint(path: Path) -> dict[str, Any]:
    from odebench.fileio import load_torch_tensors

    try:
        return load_torch_tensors(path, "training checkpoint")
    except OdebenchError as e:  # a torn or foreign file: say which and stop
        raise OdebenchError(f"cannot resume: {e}") from None


def train(cfg: DistillConfig, teacher, model: torch.nn.Module, data, out: Path, resume: bool = False,
          progress: Callable[[int, float, float], None] | None = None,
          export: Callable[[Path, torch.nn.Module, dict, int], Path] | None = None, *,
          runtime: LocalRuntime | None = None,
          optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer] | None = None) -> Path:
    """Distil `teacher` into `model` (called as model(x, sigma, cond)); returns the student sidecar path.
    `optimizer(model)` builds the optimiser (default AdamW on the trainable parameters)."""
    cfg.validate()
    rt = runtime or LocalRuntime()
    world, rank = rt.num_processes, rt.process_index
    if cfg.batch_size % world:
        raise OdebenchError(f"--batch-size {cfg.batch_size} must be a multiple of the {world} processes")
    local = cfg.batch_size // world
    part = slice(rank * local, (rank + 1) * local)
    out.mkdir(parents=True, exist_ok=True)
    grid = grid_for(teacher, cfg.grid)
    ckpt_path, log_path = out / "checkpoint.pt", out / "log.jsonl"
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    if optimizer is not None:
        opt = optimizer(model)
    else:
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    keys = model.checkpoint_keys()
    keys = list(keys) if keys is not None else None
    step = 0
    ema_model = copy.deepcopy(model).requires_grad_(False) if cfg.ema > 0 else None
    if resume:
        if not ckpt_path.is_file():
            raise OdebenchError(f"--resume: no checkpoint at {ckpt_path}")
        state = _load_checkpoint(ckpt_path)
        _load_model_state(model, state["model"], keys)
        opt.load_state_dict(state["opt"])
        g.set_state(state["rng"])
        step = int(state["step"])
        if ema_model is not None:
            _load_model_state(ema_model, state["ema"], keys)
        rt.load_scaler_state(state.get("scaler"))
        if log_path.exists() and rt.is_main:  # drop log lines written after the checkpoint
            lines = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
            atomic_write_bytes(log_path, ("\n".join(lines) + "\n" if lines else "").encode())
    elif log_path.exists() and rt.is_main:
        log_path.unlink()
    rt.wait()
    wrapped, opt = rt.prepare(model, opt)  # DDP / mixed-precision wrappers; `model` stays the bare module

    def student(x, idx, cond=None, net=model):
        return net(x, grid.sigmas[idx].to(x.dtype), cond)

    target_net = ema_model if ema_model is not None else model

    dtype = model.state_dtype or next(model.parameters()).dtype
    t_last = time.perf_counter()
    log = open(log_path, "a") if rt.is_main else contextlib.nullcontext(io.StringIO())
    with log:
        while step < cfg.steps:
            x0, cond = data.sample(cfg.batch_size, g) if world == 1 else data.sample(cfg.batch_size, g, part)
            x0 = x0.to(dtype)
            n = torch.randint(0, grid.n, (cfg.batch_size,), generator=g)
            z = torch.randn((cfg.batch_size, *x0.shape[1:]), generator=g, dtype=torch.float32).to(dtype)
            if world > 1:
                n, z = n[part], z[part]
            x_n = teacher.add_noise(x0, grid.sigmas[n], z)
            with rt.autocast():
                if cfg.target == "cm":
                    target = cm_target(lambda x, i: student(x, i, cond, target_net), teacher, x_n, n, grid, cond, cfg.solver)
                else:
                    target = direct_target(teacher, x_n, n, grid, cond, cfg.solver)
                wrapped.train()
                loss = distill_loss(student(x_n, n, cond, wrapped), target.to(dtype), cfg.loss, cfg.huber_c)
            opt.zero_grad(set_to_none=True)
            rt.backward(loss)
            rt.clip_grad_norm_(wrapped.parameters(), cfg.grad_clip)
            opt.step()
            wrapped.eval()
            if ema_model is not None:  # theta_ema <- mu theta_ema + (1 - mu) theta
                with torch.no_grad():
                    for pe, p in zip(ema_model.parameters(), model.parameters()):
                        pe.lerp_(p, 1.0 - cfg.ema)
            step += 1
            now = time.perf_counter()
            rate = cfg.batch_size / max(now - t_last, 1e-9)
            t_last = now
            loss_value = float(rt.mean(loss.detach()))  # the global batch's loss under several processes
            if rt.is_main:
                log.write(json.dumps({"step": step, "loss": loss_value, "samples_per_s": rate}) + "\n")
                if progress is not None:
                    progress(step, loss_value, rate)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                if rt.is_main:
                    log.flush()
                    _save_checkpoint(ckpt_path, model, opt, step, g, ema_model, keys, rt.scaler_state())
                rt.wait()
    training = {**asdict(cfg), "grid": grid.describe(), "teacher": teacher.fingerprint()}
    if not rt.is_main:
        rt.wait()
        return out / "student.json"
    side = export(out / "student", model, training, step)
    rt.wait()
    return side
