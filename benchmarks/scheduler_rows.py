"""ODE error against K for every scheduler row, on the digits teacher and a tiny random SD 2.x (v-prediction)
pipeline (tests/sd_tiny.py): which scheduler solves the teacher's ODE best at K steps.

    python benchmarks/scheduler_rows.py [--samples-digits 128] [--samples-sd 32] [--out reports]

Writes reports/schedulers.md (tables: ode_mse@ref and NFE per row and K) and reports/schedulers.png (ode_mse@ref
against NFE, one line per row). Errors and counts only (no timings): safe to run on a busy machine. Each row
samples from the same per-sample noise as the shared reference (odebench's default: dopri5, rtol = atol =
1e-4, log-sigma time), exactly as `odebench run --student ROW` would score it.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

KS = (1, 2, 4, 8, 16)
# odebench's own Karras-grid solvers, then diffusers' schedulers (class names, or aliases of odebench.students.scheduler)
ROWS = ("ddim", "heun", "dpm2",
        "DDIMScheduler", "DDIMScheduler?timestep_spacing=trailing", "EulerDiscreteScheduler",
        "EulerDiscreteScheduler?timestep_spacing=trailing", "HeunDiscreteScheduler", "kdpm2", "lms", "pndm",
        "dpmpp2m", "dpmpp2m-karras", "dpmpp3m", "dpmpp2s", "unipc", "deis", "euler-a", "lcm", "tcd")
STOCHASTIC = ("euler-a", "lcm")  # draw fresh noise between steps (from each sample's own streams)


def row_spec(row: str, k: int) -> str:
    name, _, query = row.partition("?")
    return f"{name}:{k}" + (f"?{query}" if query else "")


def measure(teacher, conditional: bool, n: int, batch: int, log=print) -> dict:
    """{row: {k: (ode_mse, nfe) or error text}} against the default reference from the same noise."""
    from odebench.conditions import Conditions, PromptConditions
    from odebench.metrics.ode_error import per_sample_se
    from odebench.ode.cache import TrajectoryCache
    from odebench.ode.noise import NoiseBank, SampleNoise
    from odebench.ode.spec import SolverSpec
    from odebench.ode.trajectories import initial_state, reference_set
    from odebench.students.kinds import load_student
    from odebench.teachers.base import TEXT

    noise = NoiseBank(0, teacher.shape)
    conditions = PromptConditions(teacher.prompts) if teacher.has(TEXT) else Conditions(teacher.num_classes if conditional else None)
    spec = SolverSpec().resolved("float32")
    ref = reference_set(teacher, spec, noise, conditions, n, TrajectoryCache(), torch.empty(0, dtype=torch.float64))
    log(f"{teacher.name}: reference {ref.nfe_per_sample:.0f} NFE/sample, {n} samples")
    out: dict = {}
    for row in ROWS:
        out[row] = {}
        for k in KS:
            try:
                student, _ = load_student(row_spec(row, k), teacher, spec, conditional)
                parts = []
                for lo in range(0, n, batch):
                    idx = range(lo, min(lo + batch, n))
                    parts.append(student.sample(initial_state(teacher, noise, idx, torch.float32), conditions.tensor(idx),
                                                SampleNoise(noise, idx), None))
                x0 = torch.cat(parts)
                out[row][k] = (float(np.mean(per_sample_se(x0, ref.x0))), student.nfe())
            except Exception as e:  # a scheduler that cannot run at this K: recorded, not fatal
                out[row][k] = str(e).splitlines()[0][:120]
        log(f"  {row}: " + ", ".join(f"K={k}: {v[0]:.3g}" if isinstance(v, tuple) else f"K={k}: n/a" for k, v in out[row].items()))
    return out


def table(results: dict) -> list[str]:
    lines = ["| row | " + " | ".join(f"K={k}" for k in KS) + " |", "|---|" + "---:|" * len(KS)]
    for row, by_k in results.items():
        cells = []
        for k in KS:
            v = by_k[k]
            cells.append(f"{v[0]:.3g} ({v[1]})" if isinstance(v, tuple) else "n/a")
        label = f"`{row}`" + (" (stochastic)" if row in STOCHASTIC else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def plot(panels: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 7), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, (title, results) in zip(axes[0], panels.items()):
        for i, (row, by_k) in enumerate(results.items()):
            pts = [(v[1], v[0]) for v in by_k.values() if isinstance(v, tuple) and v[0] > 0]
            if pts:
                x, y = zip(*pts)
                ax.plot(x, y, marker="o", ms=3, lw=1.2, color=cmap(i % 20), ls="--" if row in STOCHASTIC else "-", label=row)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("teacher evaluations per sample (NFE)")
        ax.set_ylabel("ode_mse@ref")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples-digits", type=int, default=128)
    parser.add_argument("--samples-sd", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("reports"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from sd_tiny import build_tiny_sd

    from odebench.teachers import load_teacher

    digits = load_teacher("digits")
    with tempfile.TemporaryDirectory(prefix="odebench-tiny-sd-") as tmp:
        sd = load_teacher(str(build_tiny_sd(Path(tmp) / "tiny-sd21v", "sd21v")), device="cpu")
        from odebench.prompts import BUILTIN_PROMPTS

        sd.set_prompts(list(BUILTIN_PROMPTS))
        panels = {f"digits (CFG w = {digits.guidance.imagen_w:g}, {args.samples_digits} samples)":
                  measure(digits, True, args.samples_digits, 128),
                  f"tiny random SD 2.x, v-prediction (CFG w = {sd.guidance.imagen_w:g}, {args.samples_sd} samples)":
                  measure(sd, True, args.samples_sd, 32)}
    args.out.mkdir(parents=True, exist_ok=True)
    plot(panels, args.out / "schedulers.png")
    md = ["# Scheduler rows: ODE error against K", "",
          "Generated by `python benchmarks/scheduler_rows.py` (see its docstring). Each cell: `ode_mse@ref` against the",
          "default reference from the same noise (MSE per element), and in brackets the teacher evaluations per",
          "sample (CFG doubles the UNet passes, not the count). `ddim`/`heun`/`dpm2` are odebench's rows on the",
          "Karras grid; the others are diffusers schedulers from the teacher's scheduler config, run exactly as",
          "the pipeline runs them. Stochastic rows re-noise between steps (from each sample's own noise",
          "streams), so their ODE error does not vanish as K grows. n/a: the scheduler cannot run at that K.", "",
          "![ODE error against NFE](schedulers.png)", ""]
    for title, results in panels.items():
        md += [f"## {title}", ""] + table(results) + [""]
    (args.out / "schedulers.md").write_text("\n".join(md))
    print(f"wrote {args.out / 'schedulers.md'} and {args.out / 'schedulers.png'}")


if __name__ == "__main__":
    main()
