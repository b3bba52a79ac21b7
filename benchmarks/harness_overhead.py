"""Harness overhead of the reference solve on a network teacher.

Run:  python benchmarks/harness_overhead.py [--teacher digits] [--batch 256] [--repeats 3] [--threads 2]

ratio = wall time of solve_reference / (its NFE x time of one bare UNet forward on the same batch
the UNet sees per NFE), all measured in one process. With classifier-free guidance the UNet sees
2B samples per NFE (both branches batched), so the bare forward is timed at 2B (the median of 15
forwards before and 15 after each solve). A ratio of 1.0 means the ODE machinery (torchdiffeq
steps, sigma -> t mapping, CFG combine, error norm) is free. Because CPU forward times drift by
+-20% on a shared machine, the script also reports wall / (time spent inside the UNet calls of
that same solve), which isolates the harness's own share without that drift.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def bare_forward_seconds(teacher, x_in: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, repeats: int) -> float:
    """Median wall time of one UNet forward (no grad) on exactly the tensors the harness would pass."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        teacher._unet(x_in, t, labels)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    from odebench.ode.reference import solve_reference
    from odebench.ode.spec import SolverSpec
    from odebench.teachers import load_teacher

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="digits")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    teacher = load_teacher(args.teacher)
    g = torch.Generator().manual_seed(0)
    b = args.batch
    x = torch.randn((b, *teacher.shape), generator=g) * teacher.init_noise_scale()
    labels = torch.arange(b) % teacher.num_classes
    spec = SolverSpec(dtype="float32")
    cfg = teacher.guidance.needs_uncond
    unet_batch = 2 * b if cfg else b
    x_in = torch.randn((unet_batch, *teacher.shape), generator=g)
    t = torch.full((unet_batch,), 500.3)
    lab = torch.cat([labels, labels]) if cfg else labels
    bare_forward_seconds(teacher, x_in, t, lab, 3)  # warm-up
    inside = [0.0]
    unet = teacher._unet

    def timed_unet(*a, **k):
        t0 = time.perf_counter()
        out = unet(*a, **k)
        inside[0] += time.perf_counter() - t0
        return out

    ratios, shares = [], []
    for r in range(args.repeats):
        before = bare_forward_seconds(teacher, x_in, t, lab, 15)
        inside[0] = 0.0
        teacher._unet = timed_unet
        t0 = time.perf_counter()
        sol = solve_reference(teacher, x, labels, spec)
        wall = time.perf_counter() - t0
        teacher._unet = unet
        bare = statistics.median([before, bare_forward_seconds(teacher, x_in, t, lab, 15)])
        ratios.append(wall / (sol.nfe * bare))
        shares.append(wall / inside[0])
        print(f"repeat {r}: solve {wall:.2f} s, NFE {sol.nfe}, bare UNet forward (batch {unet_batch}) {bare * 1e3:.2f} ms, "
              f"ratio {ratios[-1]:.3f}; wall / time inside UNet calls {shares[-1]:.4f}")
    print(f"teacher {args.teacher}, guidance {teacher.guidance.describe()}, {spec.describe()}, threads {args.threads}")
    print(f"harness overhead ratio: median {statistics.median(ratios):.3f} (goal <= 1.10); "
          f"wall / in-UNet time: median {statistics.median(shares):.4f}")


if __name__ == "__main__":
    main()
