"""Train the digits classifier behind the "digits" features, label_adherence and confidence.

Trains `odebench.metrics.digits.DigitsNet` on the TRAINING split of `odebench.data.digits` only
(seeded, single-threaded by default so reruns give the same weights on the same machine and
torch build), with random +-1 pixel shifts (zero fill, no flips) as the only augmentation, and
reports accuracy on the held-out split. Writes classifier.safetensors, then classifier.json
(architecture, training record, held-out accuracy, weights_sha256), each atomically.

    python -m baselines.digits_classifier [--out DIR] [--epochs N] [--seed S] [--threads T]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from odebench.data.digits import HELD_OUT_FRACTION, SPLIT_SEED, digits_split
from odebench.fileio import atomic_write_bytes
from odebench.metrics.digits import (FEATURE_LAYER, PREPROCESSING, SIDECAR_FORMAT, SIDECAR_NAME,
                                     SIDECAR_VERSION, WEIGHTS_NAME, DigitsNet)

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "odebench" / "assets" / "digits"
MIN_ACCURACY = 0.97


def to_input(images_uint8: np.ndarray) -> torch.Tensor:
    """uint8 (N, 8, 8) grey -> float32 (N, 1, 8, 8) in [0, 1]: the same pixels DigitsFeatures feeds."""
    return torch.from_numpy(images_uint8.astype(np.float32)[:, None] / 255.0)


def random_shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by dx, dy in {-1, 0, 1} (independently, uniformly), zero fill."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    off = torch.randint(0, 3, (n, 2), generator=gen)
    out = torch.empty_like(x)
    for dy in range(3):
        for dx in range(3):
            sel = (off[:, 0] == dy) & (off[:, 1] == dx)
            if sel.any():
                out[sel] = padded[sel, :, dy:dy + h, dx:dx + w]
    return out


@torch.no_grad()
def accuracy(net: DigitsNet, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    return float((net(x).argmax(dim=1) == y).double().mean())


def train(epochs: int = 40, seed: int = 0, threads: int = 1, batch_size: int = 64, lr: float = 1e-3,
          weight_decay: float = 1e-4, log=print) -> tuple[DigitsNet, dict]:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(seed)

    split = digits_split()
    x_tr, y_tr = to_input(split.train_images), torch.from_numpy(split.train_labels)
    x_te, y_te = to_input(split.test_images), torch.from_numpy(split.test_labels)

    net = DigitsNet()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = -(-len(x_tr) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
    loss_fn = torch.nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(x_tr), generator=gen)
        total = 0.0
        for i in range(0, len(x_tr), batch_size):
            idx = perm[i:i + batch_size]
            xb = random_shift(x_tr[idx], gen)
            loss = loss_fn(net(xb), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if epoch % 5 == 4 or epoch == epochs - 1:
            log(f"epoch {epoch + 1:3d}/{epochs}  train loss {total / len(x_tr):.4f}  "
                f"train acc {accuracy(net, x_tr, y_tr):.4f}  held-out acc {accuracy(net, x_te, y_te):.4f}")
    train_s = time.perf_counter() - t0
    net.eval()
    held_out = accuracy(net, x_te, y_te)
    record = {
        "held_out_accuracy": held_out,
        "held_out_n": int(len(x_te)),
        "train_accuracy": accuracy(net, x_tr, y_tr),
        "training": {
            "script": "python -m baselines.digits_classifier",
            "data": f"odebench.data.digits training split (n={len(x_tr)}; split seed {SPLIT_SEED}, "
                    f"held-out fraction {HELD_OUT_FRACTION}); held-out split used for evaluation only",
            "seed": seed, "epochs": epochs, "batch_size": batch_size, "threads": threads,
            "optimizer": {"kind": "AdamW", "lr": lr, "weight_decay": weight_decay},
            "schedule": {"kind": "OneCycleLR", "max_lr": lr, "pct_start": 0.15},
            "loss": "cross-entropy",
            "augmentation": "random shift dx, dy in {-1, 0, 1} per image, zero fill; no flips",
            "deterministic_algorithms": True,
            "torch": torch.__version__,
            "train_seconds": round(train_s, 2),
        },
    }
    return net, record


def save(net: DigitsNet, record: dict, out: Path) -> tuple[Path, Path]:
    from safetensors.torch import save as st_save

    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    blob = st_save(state, metadata={"format": SIDECAR_FORMAT})
    weights = out / WEIGHTS_NAME
    atomic_write_bytes(weights, blob)
    side = {"format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION, "weights": WEIGHTS_NAME,
            "weights_sha256": hashlib.sha256(blob).hexdigest(), "architecture": net.config,
            "num_parameters": int(sum(p.numel() for p in net.parameters())),
            "preprocessing": PREPROCESSING, "feature_layer": FEATURE_LAYER, **record}
    side_path = out / SIDECAR_NAME
    atomic_write_bytes(side_path, (json.dumps(side, indent=1, sort_keys=True) + "\n").encode())
    return weights, side_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m baselines.digits_classifier", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (fixed for reproducibility)")
    args = ap.parse_args(argv)
    net, record = train(args.epochs, args.seed, args.threads)
    acc = record["held_out_accuracy"]
    print(f"held-out accuracy {acc:.4f} (n={record['held_out_n']}), "
          f"{record['training']['train_seconds']:.1f} s training")
    if acc < MIN_ACCURACY:
        print(f"error: held-out accuracy {acc:.4f} is below {MIN_ACCURACY}; not writing weights", file=sys.stderr)
        return 1
    weights, side = save(net, record, args.out)
    print(f"wrote {weights} ({weights.stat().st_size} bytes) and {side}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
