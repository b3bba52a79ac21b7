"""Measure the accuracy/cost trade-off of the reference PF-ODE solver (to choose its defaults).

Run:  python benchmarks/reference_solver.py [--samples N] [--json out.json]

Two problems, both started from x(sigma_max) = sigma_max * z, z ~ N(0, I) with a fixed seed:
  gauss16  one isotropic Gaussian N(mu, s^2 I) in 16-D (s = 0.3), whose PF-ODE has a closed form:
           x(sigma) = mu + (x(sigma_0) - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_0^2),
           and the endpoint D(x, sigma_min) = mu + s^2 / (s^2 + sigma_min^2) (x - mu).
  gmm64    the 64-D, 16-component preset `gmm64` (unconditional), against a truth from
           solve_reference with dopri8 at rtol = atol = 1e-10 in float64 (cross-checked against
           dopri5 at 1e-10, and on gauss16 against the closed form).
For each adaptive method / time variable / tolerance we report NFE per sample (the batch shares
one step sequence), accepted/rejected steps, the endpoint relative RMS error
sqrt(sum (x0 - truth)^2 / sum truth^2), and wall time; DDIM-100/1000 give the scale.
All samples are solved as one batch (the default 256 equals SolverSpec's default batch).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass

import torch
from torchdiffeq._impl.odeint import SOLVERS

from odebench.ode.reference import solve_reference
from odebench.ode.spec import SolverSpec
from odebench.students.solvers import SolverStudent
from odebench.teachers import load_teacher
from odebench.teachers.base import Teacher
from odebench.teachers.gmm import GMMTeacher

METHODS = ("dopri5", "dopri8", "bosh3")
TIMES = ("log-sigma", "sigma")
TOLS = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7)
FLOAT32_ROWS = (("dopri5", "log-sigma", 1e-4), ("dopri5", "log-sigma", 1e-5))
DDIM_STEPS = (100, 1000)
TRUTH_SPEC = SolverSpec(method="dopri8", rtol=1e-10, atol=1e-10, time="log-sigma", dtype="float64")
GAUSS_MEAN = [1.0, -2.0, 0.5, 1.5, -0.5, 0.0, 2.0, -1.0, 0.25, -1.5, 0.75, 1.25, -0.25, -2.5, 1.75, -0.75]
GAUSS_STD = 0.3
# Goals for the default reference setting.
GOAL_ERR, GOAL_NFE, GOAL_RATIO = 1e-4, 100, 100.0


@dataclass
class Problem:
    name: str
    teacher: Teacher
    x_start: torch.Tensor  # (B, d) float64, x(sigma_max)
    truth: torch.Tensor  # (B, d) float64, the exact (or dopri8 1e-10) endpoint
    truth_note: str


@dataclass
class Row:
    problem: str
    method: str
    time: str
    tol: float | None
    dtype: str
    nfe: int | None  # per sample; None when skipped
    accepted: int | None
    rejected: int | None
    rel_err: float | None
    seconds: float
    note: str = ""


def rel_rms(x0: torch.Tensor, truth: torch.Tensor) -> float:
    """Endpoint relative RMS error sqrt(sum (x0 - truth)^2 / sum truth^2)."""
    x0, truth = x0.double(), truth.double()
    return float(((x0 - truth).pow(2).sum() / truth.pow(2).sum()).sqrt())


def start_noise(teacher: Teacher, n: int, seed: int) -> torch.Tensor:
    """x(sigma_max) = sigma_max * z, z ~ N(0, I), float64, fixed seed."""
    g = torch.Generator().manual_seed(seed)
    return teacher.sigma_max * torch.randn((n, *teacher.shape), generator=g, dtype=torch.float64)


def gaussian_endpoint(x_start: torch.Tensor, mu: torch.Tensor, s: float, sigma_max: float, sigma_min: float) -> torch.Tensor:
    """Closed-form flow to sigma_min, x(sigma) = mu + (x0 - mu) sqrt(s^2+sigma^2)/sqrt(s^2+sigma0^2), then D."""
    x_min = mu + (x_start - mu) * math.sqrt(s**2 + sigma_min**2) / math.sqrt(s**2 + sigma_max**2)
    return mu + s**2 / (s**2 + sigma_min**2) * (x_min - mu)


def gaussian_problem(samples: int, seed: int) -> Problem:
    """Problem (a): the single 16-D Gaussian with its closed-form truth."""
    mu = torch.tensor(GAUSS_MEAN, dtype=torch.float64)
    teacher = GMMTeacher(means=[GAUSS_MEAN], stds=[GAUSS_STD], name="gauss16")
    x = start_noise(teacher, samples, seed)
    truth = gaussian_endpoint(x, mu, GAUSS_STD, teacher.sigma_max, teacher.sigma_min)
    return Problem("gauss16", teacher, x, truth, "closed form")


def gmm64_problem(samples: int, seed: int) -> Problem:
    """Problem (b): the gmm64 preset, truth = solve_reference with TRUTH_SPEC."""
    teacher = load_teacher("gmm64")
    x = start_noise(teacher, samples, seed)
    truth = solve_reference(teacher, x, None, TRUTH_SPEC).x0
    return Problem("gmm64", teacher, x, truth, f"solve_reference {TRUTH_SPEC.describe()}")


def evals_per_step(method: str) -> int:
    """Denoiser calls per attempted Runge-Kutta step (FSAL: the stages after the first)."""
    return len(SOLVERS[method].tableau.alpha)


def run_adaptive(problem: Problem, method: str, time_var: str, tol: float, dtype: str, nfe_cap: int) -> Row:
    """One solve_reference; skipped (nfe None) if it would take more than about `nfe_cap` NFE."""
    max_steps = max(1, nfe_cap // evals_per_step(method))
    spec = SolverSpec(method=method, rtol=tol, atol=tol, time=time_var, dtype=dtype,
                      batch=problem.x_start.shape[0], options=(("max_num_steps", max_steps),))
    t0 = time.perf_counter()
    try:
        sol = solve_reference(problem.teacher, problem.x_start, None, spec)
    except AssertionError as e:
        if "max_num_steps" not in str(e):
            raise
        return Row(problem.name, method, time_var, tol, dtype, None, None, None, None,
                   time.perf_counter() - t0, f"skipped: > {max_steps} steps (~{nfe_cap} NFE cap)")
    return Row(problem.name, method, time_var, tol, dtype, sol.nfe, sol.accepted, sol.rejected,
               rel_rms(sol.x0, problem.truth), time.perf_counter() - t0)


def run_ddim(problem: Problem, steps: int) -> Row:
    """DDIM (Euler in sigma on the Karras grid) with `steps` denoiser calls, for scale."""
    t0 = time.perf_counter()
    x0 = SolverStudent(problem.teacher, "ddim", steps).sample(problem.x_start, None, None)
    return Row(problem.name, "ddim", "sigma (karras)", None, "float64", steps, None, None,
               rel_rms(x0, problem.truth), time.perf_counter() - t0)


def truth_checks(gauss: Problem, gmm: Problem) -> dict[str, float]:
    """How far the truth could be off: dopri8 1e-10 vs closed form, and dopri5 vs dopri8 at 1e-10."""
    d5 = SolverSpec(method="dopri5", rtol=1e-10, atol=1e-10, time="log-sigma", dtype="float64")
    return {
        "gauss16: dopri8 1e-10 vs closed form": rel_rms(solve_reference(gauss.teacher, gauss.x_start, None, TRUTH_SPEC).x0, gauss.truth),
        "gmm64: dopri5 1e-10 vs dopri8 1e-10": rel_rms(solve_reference(gmm.teacher, gmm.x_start, None, d5).x0, gmm.truth),
    }


def measure(problems: list[Problem], tols: tuple[float, ...], nfe_cap: int) -> list[Row]:
    """Every row of the table, problem by problem."""
    rows = []
    for p in problems:
        for method in METHODS:
            for time_var in TIMES:
                for tol in tols:
                    rows.append(run_adaptive(p, method, time_var, tol, "float64", nfe_cap))
        for method, time_var, tol in FLOAT32_ROWS:
            rows.append(run_adaptive(p, method, time_var, tol, "float32", nfe_cap))
        for k in DDIM_STEPS:
            rows.append(run_ddim(p, k))
    return rows


def setting_of(r: Row) -> tuple:
    return (r.method, r.time, r.tol, r.dtype)


def choose(rows: list[Row], problem_names: list[str]) -> dict:
    """The cheapest adaptive setting (max NFE over problems) with rel. error <= GOAL_ERR on every problem."""
    ddim = {r.problem: r.rel_err for r in rows if r.method == "ddim" and r.nfe == 100}
    by_setting: dict[tuple, dict[str, Row]] = {}
    for r in rows:
        if r.method != "ddim" and r.nfe is not None:
            by_setting.setdefault(setting_of(r), {})[r.problem] = r
    candidates = []
    for setting, per in by_setting.items():
        if set(per) != set(problem_names):
            continue
        nfe = max(per[p].nfe for p in problem_names)
        err = max(per[p].rel_err for p in problem_names)
        ratio = min(ddim[p] / max(per[p].rel_err, 1e-300) for p in problem_names)
        candidates.append({"setting": setting, "max_nfe": nfe, "max_err": err, "min_ratio_vs_ddim100": ratio,
                           "per_problem": {p: {"nfe": per[p].nfe, "rel_err": per[p].rel_err,
                                               "ratio_vs_ddim100": ddim[p] / max(per[p].rel_err, 1e-300)}
                                           for p in problem_names}})
    key = lambda c: (c["max_nfe"], c["max_err"])
    accurate = sorted((c for c in candidates if c["max_err"] <= GOAL_ERR), key=key)
    all_goals = [c for c in accurate if c["max_nfe"] <= GOAL_NFE and c["min_ratio_vs_ddim100"] >= GOAL_RATIO]
    return {"cheapest_accurate": accurate[0] if accurate else None,
            "cheapest_all_goals": all_goals[0] if all_goals else None,
            "ddim100_err": ddim,
            "goals": {"rel_err": GOAL_ERR, "nfe": GOAL_NFE, "ratio_vs_ddim100": GOAL_RATIO}}


def fmt_setting(s: tuple) -> str:
    method, time_var, tol, dtype = s
    return f"{method} in {time_var} time at rtol = atol = {tol:g} ({dtype})"


def choice_paragraph(choice: dict) -> str:
    """Plain-language verdict on the goals: error <= 1e-4, NFE <= 100, >= 100x below DDIM-100."""
    c = choice["cheapest_accurate"]
    if c is None:
        return f"No measured setting reaches <= {GOAL_ERR:g} relative error on both problems."
    per = "; ".join(f"{p}: {v['nfe']} NFE, rel. err {v['rel_err']:.2e}, {v['ratio_vs_ddim100']:.0f}x below DDIM-100 "
                    f"({choice['ddim100_err'][p]:.2e})" for p, v in c["per_problem"].items())
    text = (f"Cheapest setting with <= {GOAL_ERR:g} relative endpoint error on both problems: "
            f"{fmt_setting(c['setting'])}, at most {c['max_nfe']} NFE per sample vs DDIM-100's 100 ({per}).")
    fails = []
    if c["max_nfe"] > GOAL_NFE:
        fails.append(f"NFE <= {GOAL_NFE} fails ({c['max_nfe']} NFE, {c['max_nfe'] / GOAL_NFE:.2f}x the budget)")
    if c["min_ratio_vs_ddim100"] < GOAL_RATIO:
        fails.append(f">= {GOAL_RATIO:.0f}x lower error than DDIM-100 fails "
                     f"(only {c['min_ratio_vs_ddim100']:.0f}x, short by {GOAL_RATIO / c['min_ratio_vs_ddim100']:.1f}x)")
    if not fails:
        return text + " It meets all three goals."
    text += " For this setting: " + "; ".join(fails) + "."
    best = choice["cheapest_all_goals"]
    if best is not None:
        text += (f" The cheapest setting that meets all three goals is {fmt_setting(best['setting'])} "
                 f"({best['max_nfe']} NFE, max rel. err {best['max_err']:.2e}, "
                 f"{best['min_ratio_vs_ddim100']:.0f}x below DDIM-100).")
    else:
        text += " No measured setting meets all three goals."
    return text


def markdown_table(rows: list[Row]) -> str:
    head = "| problem | method | time | tol | dtype | NFE/sample | accepted/rejected | rel. RMS error | wall s |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        tol = "-" if r.tol is None else f"{r.tol:g}"
        nfe = "-" if r.nfe is None else str(r.nfe)
        steps = "-" if r.accepted is None else f"{r.accepted}/{r.rejected}"
        err = r.note if r.rel_err is None else f"{r.rel_err:.2e}"
        lines.append(f"| {r.problem} | {r.method} | {r.time} | {tol} | {r.dtype} | {nfe} | {steps} | {err} | {r.seconds:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=256, help="samples per problem, solved as one batch (default 256)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tols", type=lambda v: tuple(float(t) for t in v.split(",")), default=TOLS,
                    help="comma-separated rtol = atol values (default 1e-3,1e-4,1e-5,1e-6,1e-7)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: the tensors are small, more threads mostly add overhead)")
    ap.add_argument("--nfe-cap", type=int, default=5000, help="skip adaptive solves above about this many NFE")
    ap.add_argument("--json", metavar="PATH", help="also write the rows, truth checks and choice as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    gauss, gmm = gaussian_problem(args.samples, args.seed), gmm64_problem(args.samples, args.seed + 1)
    problems = [gauss, gmm]
    checks = truth_checks(gauss, gmm)
    rows = measure(problems, args.tols, args.nfe_cap)
    choice = choose(rows, [p.name for p in problems])
    total = time.perf_counter() - start

    print(f"# Reference PF-ODE solver: accuracy vs cost ({args.samples} samples per problem, seed {args.seed}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads)\n")
    for p in problems:
        print(f"- truth for {p.name}: {p.truth_note}")
    for name, v in checks.items():
        print(f"- truth check, {name}: rel. RMS difference {v:.2e}")
    print(f"- adaptive solves are capped at ~{args.nfe_cap} NFE (max_num_steps); capped rows say 'skipped'")
    print("- NFE counts every denoiser call per sample, the final D(x(sigma_min), sigma_min) included\n")
    print(markdown_table(rows))
    print("\n## Choice\n")
    print(choice_paragraph(choice))
    print(f"\nTotal runtime {total:.1f} s.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"samples": args.samples, "seed": args.seed, "tols": args.tols, "nfe_cap": args.nfe_cap,
                       "truth": {p.name: p.truth_note for p in problems}, "truth_checks": checks,
                       "rows": [asdict(r) for r in rows], "choice": choice, "seconds": total}, f, indent=2)


if __name__ == "__main__":
    main()
