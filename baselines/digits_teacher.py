"""Train the embedded "digits" teacher: a class-conditional pixel-space diffusers UNet2DModel.

Run:  python -m baselines.digits_teacher [--steps N] [--out DIR] [--seed S] [--threads T]
      python -m baselines.digits_teacher --check [--out DIR]     (sample from the saved teacher)

What it is
  * Data: scikit-learn's handwritten digits through `odebench.data.digits` (uint8 level*255/16,
    model space x = u8/127.5 - 1, shape (1, 8, 8)); ONLY the training split of `digits_split()`
    is used. No augmentation: digits are not flip invariant and the sklearn digits are already
    size-normalised and centred, so shifts would move the model away from the held-out reference.
  * Model: UNet2DModel(sample_size=8, in_channels=1, out_channels=1, num_class_embeds=11) with two
    resolution levels (8x8 at 32 channels, 4x4 at 64 channels), one ResNet block per level,
    self-attention at 4x4 (down, mid, up). 0.70 M parameters, 2.8 MB as fp32 safetensors. Label 10
    is the NULL class for classifier-free guidance.
  * Schedule: discrete 1000-step VP with SD/SDXL's scaled-linear betas (beta_start 0.00085,
    beta_end 0.012; betas = linspace(sqrt(b0), sqrt(b1), 1000)^2, abar = cumprod(1 - betas)), so
    sigma = sqrt((1 - abar)/abar) spans ~0.029 .. 14.6 like SDXL. epsilon-prediction; the integer
    timestep t in 0..999 goes to the UNet as diffusers pipelines pass it.
  * Loss: plain MSE(eps_pred, eps), x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t ~ U{0..999}.
    The label is replaced by the NULL class 10 with probability 0.15 (one model = cond + uncond).

Hyperparameter choices (why)
  * Size/compute: this runs on a shared 2-core CPU with a ~12 minute budget, so the network is
    sized for throughput rather than capacity: (32, 64) channels train at ~8.5-9.5 steps/s at
    batch 64 on one thread, so 4000 steps (~190 epochs of the 1,347 training images) took
    457 s (7.6 min) of training wall time, leaving headroom for a busier machine. 8x8
    digits need little capacity; a (64, 128) net was 3x slower per step and did not fit the budget.
  * Threads: torch.set_num_threads(1) by default. On this machine, with other jobs on the two
    cores, two OpenMP threads were measured 10-20x SLOWER than one (spinning threads descheduled
    at every barrier). The thread count is recorded; bitwise reproducibility holds for the same
    torch build, CPU type and thread count.
  * AdamW (lr 2e-3, betas (0.9, 0.999), weight decay 1e-4), 200 linear warm-up steps then cosine
    decay to 0, grad-norm clip 1.0: a short run wants a high peak lr; warm-up protects the
    attention/GroupNorm layers at the start, the cosine tail anneals the raw weights.
  * EMA of the weights (decay 0.999 with the usual (1+n)/(10+n) ramp), and the EMA is exported:
    per-step eps-loss noise is large (t is uniform over 1000 levels), and the EMA over the last
    ~1000 steps gives visibly cleaner samples than the raw weights at no cost.
  * Reproducible: torch.manual_seed(seed) before building the model; the data order (one random
    permutation per epoch), timesteps, noise and label dropout all come from one seeded
    torch.Generator, in a fixed order.

Outputs (written atomically: temp file + os.replace)
  <out>/teacher.safetensors   the EMA UNet state dict, fp32
  <out>/teacher.json          sidecar, format "odebench-teacher" (UNet config, schedule, classes,
                              data, training config, weights_sha256)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from odebench.fileio import atomic_write_bytes, file_sha256

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "odebench" / "assets" / "digits"
CHECK_PNG = Path(tempfile.gettempdir()) / "digits_teacher_check.png"

NUM_CLASSES = 10
NULL_CLASS = 10
NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012

UNET_CONFIG: dict[str, Any] = dict(
    sample_size=8,
    in_channels=1,
    out_channels=1,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
    attention_head_dim=32,
    num_class_embeds=NUM_CLASSES + 1,  # + the NULL class
)

# Chosen from the sampling check (DDIM 100 steps, 200 samples, seed 0 teacher): w = 1 already
# gives ~95% class-correct digits, w = 2 and 3 give 100% with w = 2 closer to the data statistics.
DEFAULT_GUIDANCE: dict[str, Any] = {"w": 2.0, "form": "imagen", "uncond": "null"}

TRAIN_DEFAULTS: dict[str, Any] = dict(
    steps=4000,
    batch_size=64,
    lr=2e-3,
    warmup_steps=200,
    lr_schedule="linear warm-up then cosine to 0",
    adam_betas=(0.9, 0.999),
    weight_decay=1e-4,
    grad_clip_norm=1.0,
    label_dropout=0.15,
    ema_decay=0.999,
    ema_warmup="decay_n = min(ema_decay, (1 + n) / (10 + n))",
    augmentation="none",
    timestep_sampling="uniform integer 0..999",
    loss="mse(eps_pred, eps)",
)


# ----------------------------------------------------------------------------------------------
# schedule, model, data

def alphas_cumprod() -> torch.Tensor:
    """Scaled-linear abar_t, float64 (same formula as odebench.teachers.discrete and diffusers)."""
    betas = torch.linspace(BETA_START ** 0.5, BETA_END ** 0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def build_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(**UNET_CONFIG)


def json_unet_config(unet) -> dict[str, Any]:
    cfg = {k: v for k, v in dict(unet.config).items() if k != "_use_default_values"}
    return json.loads(json.dumps(cfg, default=list))


def training_data() -> tuple[torch.Tensor, torch.Tensor]:
    from odebench.data.digits import digits_split, to_model_space

    split = digits_split()
    return torch.from_numpy(to_model_space(split.train_images)), torch.from_numpy(split.train_labels).long()


def data_description() -> dict[str, Any]:
    from odebench.data import digits as d

    split = d.digits_split()
    return {
        "source": "sklearn load_digits, 8x8, uint8 level*255/16, model space x = u8/127.5 - 1",
        "module": "odebench.data.digits",
        "split_seed": d.SPLIT_SEED,
        "held_out_fraction": d.HELD_OUT_FRACTION,
        "split": "sklearn train_test_split(stratify=labels); trained on the training split only",
        "train_size": int(split.train_images.shape[0]),
        "held_out_size": int(split.test_images.shape[0]),
        "shape": [1, 8, 8],
        "range": [-1.0, 1.0],
    }


class BatchStream:
    """Deterministic minibatches: one seeded permutation per epoch, consumed in order across epochs."""

    def __init__(self, n: int, batch: int, gen: torch.Generator) -> None:
        self.n, self.batch, self.gen = n, batch, gen
        self.buf = torch.empty(0, dtype=torch.long)

    def next(self) -> torch.Tensor:
        while self.buf.numel() < self.batch:
            self.buf = torch.cat([self.buf, torch.randperm(self.n, generator=self.gen)])
        idx, self.buf = self.buf[: self.batch], self.buf[self.batch:]
        return idx


def lr_at(step: int, cfg: dict[str, Any]) -> float:
    if step < cfg["warmup_steps"]:
        return cfg["lr"] * (step + 1) / cfg["warmup_steps"]
    p = (step - cfg["warmup_steps"]) / max(1, cfg["steps"] - cfg["warmup_steps"])
    return cfg["lr"] * 0.5 * (1.0 + math.cos(math.pi * min(1.0, p)))


# ----------------------------------------------------------------------------------------------
# output (written atomically)

def save_teacher(unet, out: Path, training: dict[str, Any], default_guidance: dict[str, Any] | None = None) -> Path:
    from safetensors.torch import save

    state = {k: v.detach().float().contiguous().cpu() for k, v in unet.state_dict().items()}
    blob = save(state, metadata={"format": "pt", "odebench": "digits teacher (EMA weights, fp32)"})
    weights = out / "teacher.safetensors"
    atomic_write_bytes(weights, blob)
    sidecar = {
        "format": "odebench-teacher",
        "name": "digits",
        "kind": "unet2d-class-conditional",
        "weights": weights.name,
        "weights_dtype": "float32",
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "unet_class": "diffusers.UNet2DModel",
        "unet_config": json_unet_config(unet),
        "num_parameters": int(sum(p.numel() for p in unet.parameters())),
        "schedule": {
            "kind": "discrete-vp",
            "prediction": "epsilon",
            "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
            "beta_schedule": "scaled_linear",
            "beta_start": BETA_START,
            "beta_end": BETA_END,
            "timestep_input": "t in [0, 999] passed to the UNet as diffusers pipelines do (integer in training)",
        },
        "num_classes": NUM_CLASSES,
        "null_class": NULL_CLASS,
        "data": data_description(),
        "training": training,
    }
    if default_guidance is not None:
        sidecar["default_guidance"] = default_guidance
    atomic_write_bytes(out / "teacher.json", (json.dumps(sidecar, indent=2) + "\n").encode())
    return weights


# ----------------------------------------------------------------------------------------------
# training

def train(steps: int, out: Path, seed: int, threads: int, batch_size: int | None = None,
          log_every: int = 500) -> dict[str, Any]:
    t_start = time.perf_counter()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    cfg = dict(TRAIN_DEFAULTS, steps=steps, seed=seed)
    if batch_size is not None:
        cfg["batch_size"] = batch_size

    x0_all, y_all = training_data()
    abar = alphas_cumprod().float()
    sqrt_ab, sqrt_1mab = abar.sqrt(), (1.0 - abar).sqrt()

    unet = build_unet().train()
    ema = build_unet().eval().requires_grad_(False)
    ema.load_state_dict(unet.state_dict())
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"digits teacher: UNet2DModel {UNET_CONFIG['block_out_channels']} x{UNET_CONFIG['layers_per_block']}, "
          f"{n_params:,} params ({n_params * 4 / 1e6:.2f} MB fp32); train images {x0_all.shape[0]}; "
          f"steps {steps}, batch {cfg['batch_size']}, lr {cfg['lr']}, threads {threads}, seed {seed}", flush=True)

    opt = torch.optim.AdamW(unet.parameters(), lr=cfg["lr"], betas=cfg["adam_betas"], weight_decay=cfg["weight_decay"])
    gen = torch.Generator().manual_seed(seed)
    stream = BatchStream(x0_all.shape[0], cfg["batch_size"], gen)
    ema_params = list(ema.parameters())
    params = list(unet.parameters())

    loss_sum, loss_n, last_loss = 0.0, 0, float("nan")
    t_train = time.perf_counter()
    t_log, step_log = t_train, 0
    for step in range(steps):
        idx = stream.next()
        x0, y = x0_all[idx], y_all[idx]
        b = x0.shape[0]
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (b,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        drop = torch.rand(b, generator=gen) < cfg["label_dropout"]
        y = torch.where(drop, torch.full_like(y, NULL_CLASS), y)
        xt = sqrt_ab[t].view(-1, 1, 1, 1) * x0 + sqrt_1mab[t].view(-1, 1, 1, 1) * eps

        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        pred = unet(xt, t, class_labels=y).sample
        loss = torch.nn.functional.mse_loss(pred, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip_norm"])
        opt.step()
        with torch.no_grad():
            d = min(cfg["ema_decay"], (1.0 + step) / (10.0 + step))
            torch._foreach_lerp_(ema_params, params, 1.0 - d)

        loss_sum += loss.item()
        loss_n += 1
        if (step + 1) % log_every == 0 or step + 1 == steps:
            now = time.perf_counter()
            last_loss = loss_sum / loss_n
            print(f"step {step + 1:6d}/{steps}  loss {last_loss:.4f} (mean of last {loss_n})  "
                  f"lr {lr_at(step, cfg):.2e}  {(step + 1 - step_log) / (now - t_log):.2f} steps/s  "
                  f"elapsed {now - t_start:.0f}s", flush=True)
            loss_sum, loss_n, t_log, step_log = 0.0, 0, now, step + 1
    train_wall = time.perf_counter() - t_train

    # EMA buffers (none in this net, but keep them in sync) and a fixed-noise held-out eps-loss.
    for be, b_ in zip(ema.buffers(), unet.buffers()):
        be.copy_(b_)
    heldout = heldout_loss(ema, seed)
    print(f"EMA model eps-MSE on the held-out split (fixed noise, 8 draws/image): {heldout:.4f}", flush=True)

    total_wall = time.perf_counter() - t_start
    training = dict(cfg)
    training.update(
        threads=threads,
        final_train_loss=round(last_loss, 6),
        final_train_loss_window=f"mean over the last {min(log_every, steps)} steps (raw weights)",
        heldout_eps_mse_ema=round(heldout, 6),
        train_wall_s=round(train_wall, 1),
        total_wall_s=round(total_wall, 1),
        torch_version=torch.__version__,
        diffusers_version=__import__("diffusers").__version__,
        command=(f"python -m baselines.digits_teacher --steps {steps} --batch-size {cfg['batch_size']} "
                 f"--seed {seed} --threads {threads}"),
        exported="EMA weights",
    )
    training["adam_betas"] = list(training["adam_betas"])
    save_teacher(ema, out, training, default_guidance=DEFAULT_GUIDANCE)
    print(f"training wall time {train_wall:.1f}s ({train_wall / 60:.2f} min); total {total_wall:.1f}s; "
          f"wrote {out / 'teacher.safetensors'} and {out / 'teacher.json'}", flush=True)
    return training


@torch.no_grad()
def heldout_loss(unet, seed: int, draws: int = 8) -> float:
    from odebench.data.digits import digits_split, to_model_space

    split = digits_split()
    x0 = torch.from_numpy(to_model_space(split.test_images)).repeat(draws, 1, 1, 1)
    y = torch.from_numpy(split.test_labels).long().repeat(draws)
    gen = torch.Generator().manual_seed(seed + 1)
    abar = alphas_cumprod().float()
    t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (x0.shape[0],), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    xt = abar[t].sqrt().view(-1, 1, 1, 1) * x0 + (1 - abar[t]).sqrt().view(-1, 1, 1, 1) * eps
    tot = 0.0
    for i in range(0, x0.shape[0], 512):
        pred = unet(xt[i:i + 512], t[i:i + 512], class_labels=y[i:i + 512]).sample
        tot += float(((pred - eps[i:i + 512]) ** 2).sum())
    return tot / eps.numel()


# ----------------------------------------------------------------------------------------------
# self-check: DDIM sampling with classifier-free guidance

def load_teacher(out: Path):
    from diffusers import UNet2DModel
    from safetensors.torch import load_file

    side = json.loads((out / "teacher.json").read_text())
    weights = out / side["weights"]
    sha = file_sha256(weights)
    if sha != side["weights_sha256"]:
        raise SystemExit(f"{weights}: sha256 {sha} does not match the sidecar")
    unet = UNet2DModel.from_config(side["unet_config"])
    unet.load_state_dict(load_file(str(weights)))
    return unet.eval().requires_grad_(False), side


@torch.no_grad()
def ddim_sample(unet, labels: torch.Tensor, w: float, steps: int = 100, seed: int = 0) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from t = 999 to x0 in `steps` steps, CFG eps = eps_u + w (eps_c - eps_u)."""
    abar = alphas_cumprod()
    ts = np.round(np.linspace(NUM_TRAIN_TIMESTEPS - 1, 0, steps)).astype(np.int64)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((labels.shape[0], 1, 8, 8), generator=gen, dtype=torch.float32)
    b = labels.shape[0]
    null = torch.full_like(labels, NULL_CLASS)
    for i, t in enumerate(ts):
        tt = torch.full((2 * b,), int(t), dtype=torch.long)
        out = unet(torch.cat([x, x]), tt, class_labels=torch.cat([null, labels])).sample
        eps_u, eps_c = out[:b], out[b:]
        eps = eps_u + w * (eps_c - eps_u)
        a_t = float(abar[t])
        a_prev = float(abar[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
    return x


def _grid(images: np.ndarray, labels: np.ndarray, per_class: int, scale: int = 4) -> np.ndarray:
    """uint8 (N, 8, 8) -> one grey panel: row c holds the first `per_class` images of class c."""
    h = 8 * scale
    panel = np.full((10 * (h + 1) + 1, per_class * (h + 1) + 1), 128, dtype=np.uint8)
    for c in range(10):
        sel = images[labels == c][:per_class]
        for j, im in enumerate(sel):
            big = im.repeat(scale, 0).repeat(scale, 1)
            panel[1 + c * (h + 1): 1 + c * (h + 1) + h, 1 + j * (h + 1): 1 + j * (h + 1) + h] = big
    return panel


def check(out: Path, n: int = 200, weights: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0), steps: int = 100,
          threads: int = 1, png: Path = CHECK_PNG) -> dict[float, dict[str, float]]:
    """Sample n images per guidance weight, print stats vs real data and a classifier's accuracy,
    save a PNG grid (panels stacked top to bottom: real held-out, w=0, w=1, w=2, w=3) to `png`."""
    from PIL import Image
    from sklearn.svm import SVC

    from odebench.data.digits import digits_split, to_model_space

    torch.set_num_threads(threads)
    unet, side = load_teacher(out)
    split = digits_split()
    real_tr = to_model_space(split.train_images)
    real_te = to_model_space(split.test_images)
    clf = SVC(C=10.0, gamma="scale").fit(split.train_images.reshape(-1, 64) / 255.0, split.train_labels)
    acc_real = float((clf.predict(split.test_images.reshape(-1, 64) / 255.0) == split.test_labels).mean())
    print(f"real held-out: mean {real_te.mean():+.4f} std {real_te.std():.4f}   (train: mean {real_tr.mean():+.4f} "
          f"std {real_tr.std():.4f});  SVC accuracy on held-out {acc_real:.3f}")
    tr_flat = torch.from_numpy(real_tr.reshape(-1, 64))
    te_flat = torch.from_numpy(real_te.reshape(-1, 64))
    d_te = torch.cdist(te_flat, tr_flat).min(1).values
    print(f"  nearest-train-image L2 distance of held-out images: median {d_te.median():.3f}")
    labels = torch.arange(n) % NUM_CLASSES
    per_class = n // NUM_CLASSES
    panels = [_grid(split.test_images, split.test_labels, per_class)]
    stats: dict[float, dict[str, float]] = {}
    for w in weights:
        t0 = time.perf_counter()
        x = ddim_sample(unet, labels, w, steps=steps, seed=1234)
        u8 = ((x.double() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()[:, 0]
        pred = clf.predict(u8.reshape(-1, 64) / 255.0)
        acc = float((pred == labels.numpy()).mean())
        d = torch.cdist(x.reshape(-1, 64).float(), tr_flat).min(1).values
        frac_out = float((x.abs() > 1.0).float().mean())
        stats[w] = dict(mean=float(x.mean()), std=float(x.std()), acc=acc, nn_median=float(d.median()),
                        frac_outside=frac_out)
        print(f"w={w:g}: mean {x.mean():+.4f} std {x.std():.4f} min {x.min():+.2f} max {x.max():+.2f} "
              f"|x|>1 {frac_out:.3f}; SVC class accuracy {acc:.3f}; nearest-train L2 median {d.median():.3f} "
              f"[{time.perf_counter() - t0:.0f}s]", flush=True)
        panels.append(_grid(u8, labels.numpy(), per_class))
    sep = np.full((6, panels[0].shape[1]), 255, dtype=np.uint8)
    canvas = np.concatenate([p for panel in panels for p in (panel, sep)][:-1], axis=0)
    png.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(png)
    print("grid (rows = class 0..9; panels top to bottom = real held-out | " + " | ".join(f"w={w:g}" for w in weights)
          + f") -> {png}")
    return stats


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m baselines.digits_teacher", description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=TRAIN_DEFAULTS["steps"])
    ap.add_argument("--batch-size", type=int, default=TRAIN_DEFAULTS["batch_size"])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: see the module docstring)")
    ap.add_argument("--check", action="store_true", help="only sample from the saved teacher and report")
    ap.add_argument("--no-check", action="store_true", help="skip the sampling check after training")
    ap.add_argument("--png", type=Path, default=CHECK_PNG)
    args = ap.parse_args(argv)
    if not args.check:
        train(args.steps, args.out, args.seed, args.threads, batch_size=args.batch_size)
    if args.check or not args.no_check:
        check(args.out, threads=args.threads, png=args.png)


if __name__ == "__main__":
    main()
