"""Measure the accuracy/cost trade-off of the reference PF-ODE solver (to choose its defaults).

Run:  python benchmarks/reference_solver.py [--samples N] [--digits-samples M] [--json out.json]
      python benchmarks/reference_solver.py --precision     (bf16 vs fp32 network on digits: NFE, floor)

Three problems, started from x(sigma_max) = sigma_max * z, z ~ N(0, I) with a fixed seed (digits:
the run's noise bank and labels i mod 10, default guidance):
  gauss16  one isotropic Gaussian N(mu, s^2 I) in 16-D (s = 0.3), whose PF-ODE has a closed form:
           x(sigma) = mu + (x(sigma_0) - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_0^2),
           and the endpoint D(x, sigma_min) = mu + s^2 / (s^2 + sigma_min^2) (x - mu).
  gmm64    the 64-D, 16-component preset `gmm64` (unconditional), against a truth from
           solve_reference with dopri8 at rtol = atol = 1e-10 in float64 (cross-checked against
           dopri5 at 1e-10, and on gauss16 against the closed form).
  digits   the embedded UNet teacher; candidates run as a run does (network and state float32),
           the truth is dopri8 in lambda time at rtol = atol = 1e-6, network float32, state float64
           (cross-checked against dopri5 in log-sigma time at 1e-6: the difference is printed).
Time variables (odebench.ode.pfode): log-sigma (x against log sigma) and lambda (y = x/sigma against
lambda = 1/sigma, the data-prediction exponential integrator: DDIM is Euler there). Engines: torchdiffeq
with one step size per batch, and (if importable) torchode with a step size per sample; torchode is
not an odebench dependency (it pins typeguard < 3 through torchtyping): to get its rows,
  pip install --target /tmp/tode torchode==1.0.1 torchtyping 'typeguard<3' --no-deps
and put /tmp/tode on PYTHONPATH.
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
from dataclasses import asdict, dataclass, replace

import torch
from torchdiffeq._impl.odeint import SOLVERS

from odebench.ode.reference import solve_reference
from odebench.ode.spec import DEFAULT_METHOD, DEFAULT_RTOL, DEFAULT_TIME, SolverSpec
from odebench.students.solvers import SolverStudent
from odebench.teachers import load_teacher
from odebench.teachers.base import Teacher
from odebench.teachers.gmm import GMMTeacher

# (method, time, tolerances): the grid measured on every problem
GRID = (("dopri5", "log-sigma", (1e-3, 1e-4, 1e-5, 1e-6)), ("dopri5", "lambda", (1e-3, 1e-4, 1e-5, 1e-6)),
        ("bosh3", "lambda", (1e-3, 3e-4, 2e-4, 1e-4, 3e-5)), ("bosh3", "log-sigma", (1e-4,)),
        ("adaptive_heun", "lambda", (1e-3, 3e-4)), ("dopri8", "lambda", (1e-4,)), ("dopri8", "log-sigma", (1e-4,)))
PER_SAMPLE = (("dopri5", "lambda", (1e-4, 1e-5)),)  # torchode, a step size per sample
DDIM_STEPS = (100, 1000)
TRUTH_SPEC = SolverSpec(method="dopri8", rtol=1e-10, atol=1e-10, time="log-sigma", dtype="float64")
DIGITS_TRUTH = SolverSpec(method="dopri8", rtol=1e-6, atol=1e-6, time="lambda", dtype="float64")
DIGITS_CHECK = SolverSpec(method="dopri5", rtol=1e-6, atol=1e-6, time="log-sigma", dtype="float64")
GAUSS_MEAN = [1.0, -2.0, 0.5, 1.5, -0.5, 0.0, 2.0, -1.0, 0.25, -1.5, 0.75, 1.25, -0.25, -2.5, 1.75, -0.75]
GAUSS_STD = 0.3
# Goals for the default reference setting (issue 12): <= 1e-4 relative error at <= 100 NFE per sample.
GOAL_ERR, GOAL_NFE, GOAL_RATIO = 1e-4, 100, 100.0


@dataclass
class Problem:
    name: str
    teacher: Teacher
    x_start: torch.Tensor  # (B, *shape) x(sigma_max), in the candidates' state dtype
    cond: torch.Tensor | None
    truth: torch.Tensor  # (B, *shape) float64, the exact (or converged) endpoint
    truth_note: str
    dtype: str  # the candidates' state dtype (float64 analytic, float32 network)


@dataclass
class Row:
    problem: str
    method: str
    time: str
    tol: float | None
    dtype: str
    nfe: float | None  # network evaluations per sample (the batch's evaluations: its cost); None when skipped
    accepted: int | None
    rejected: int | None
    rel_err: float | None
    seconds: float
    note: str = ""
    engine: str = "torchdiffeq"


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
    return Problem("gauss16", teacher, x, None, truth, "closed form", "float64")


def gmm64_problem(samples: int, seed: int) -> Problem:
    """Problem (b): the gmm64 preset, truth = solve_reference with TRUTH_SPEC."""
    teacher = load_teacher("gmm64")
    x = start_noise(teacher, samples, seed)
    truth = solve_reference(teacher, x, None, replace(TRUTH_SPEC, batch=samples)).x0
    return Problem("gmm64", teacher, x, None, truth, f"solve_reference {TRUTH_SPEC.describe()}", "float64")


def digits_start(teacher: Teacher, samples: int, seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's own start: noise bank (seed), labels i mod 10."""
    from odebench.ode.noise import NoiseBank
    from odebench.ode.trajectories import initial_state

    return initial_state(teacher, NoiseBank(seed, teacher.shape), range(samples), dtype), torch.arange(samples) % 10


def digits_truth(samples: int, seed: int, truth_file: str | None = None) -> tuple[torch.Tensor, dict]:
    """Converged endpoints of the digits teacher: network float32, state float64, DIGITS_TRUTH, and the
    relative difference to DIGITS_CHECK (another method in other variables). Tighter is not cheaper to
    trust: the network sees sigma through a piecewise-linear timestep map (1000 knots), whose kinks need
    steps below the knot spacing at tolerances under ~1e-7; a float64 network costs ~4x per evaluation."""
    import os

    if truth_file and os.path.exists(truth_file):
        saved = torch.load(truth_file, weights_only=True)
        if saved["samples"] == samples and saved["seed"] == seed:
            return saved["truth"], {"check": float(saved["check"]), "nfe": int(saved["nfe"]), "check_nfe": int(saved["check_nfe"])}
    t64 = load_teacher("digits")
    x, cond = digits_start(t64, samples, seed, torch.float64)
    truth = solve_reference(t64, x, cond, replace(DIGITS_TRUTH, batch=samples))
    check = solve_reference(t64, x, cond, replace(DIGITS_CHECK, batch=samples))
    info = {"check": rel_rms(check.x0, truth.x0), "nfe": truth.nfe, "check_nfe": check.nfe}
    if truth_file:
        torch.save({"samples": samples, "seed": seed, "truth": truth.x0, **info}, truth_file)
    return truth.x0, info


def digits_problem(samples: int, seed: int, truth_file: str | None = None, network: str = "fp32") -> tuple[Problem, dict]:
    """Problem (c): the digits UNet teacher as a run integrates it (network `network`, state float32)."""
    truth, info = digits_truth(samples, seed, truth_file)
    teacher = load_teacher("digits", dtype=network)
    x, cond = digits_start(teacher, samples, seed, torch.float32)
    note = (f"network float32, state float64, {DIGITS_TRUTH.method} in {DIGITS_TRUTH.time} time at {DIGITS_TRUTH.rtol:g} "
            f"({info['nfe']} NFE); {DIGITS_CHECK.method} in {DIGITS_CHECK.time} time at {DIGITS_CHECK.rtol:g} differs by "
            f"{info['check']:.1e} relative")
    return Problem(f"digits-{network}" if network != "fp32" else "digits", teacher, x, cond, truth, note, "float32"), info


def evals_per_step(method: str) -> int:
    """Denoiser calls per attempted Runge-Kutta step (FSAL: the stages after the first)."""
    return len(SOLVERS[method].tableau.alpha)


def run_adaptive(problem: Problem, method: str, time_var: str, tol: float, dtype: str | None = None,
                 nfe_cap: int = 5000) -> Row:
    """One solve_reference (one step size for the batch); skipped (nfe None) above about `nfe_cap` NFE."""
    dtype = dtype or problem.dtype
    max_steps = max(1, nfe_cap // evals_per_step(method))
    spec = SolverSpec(method=method, rtol=tol, atol=tol, time=time_var, dtype=dtype,
                      batch=problem.x_start.shape[0], options=(("max_num_steps", max_steps),))
    t0 = time.perf_counter()
    try:
        sol = solve_reference(problem.teacher, problem.x_start, problem.cond, spec)
    except AssertionError as e:
        if "max_num_steps" not in str(e):
            raise
        return Row(problem.name, method, time_var, tol, dtype, None, None, None, None,
                   time.perf_counter() - t0, f"skipped: > {max_steps} steps (~{nfe_cap} NFE cap)")
    return Row(problem.name, method, time_var, tol, dtype, sol.nfe, sol.accepted, sol.rejected,
               rel_rms(sol.x0, problem.truth), time.perf_counter() - t0)


def run_per_sample(problem: Problem, method: str, time_var: str, tol: float) -> Row | None:
    """torchode (a step size per sample, same per-sample RMS norm); None if torchode is not importable.
    NFE is the batch's evaluations per sample (torchode evaluates every sample each step: the cost);
    the note gives the mean of what each sample alone would have needed."""
    try:
        import torchode as to
    except ImportError:
        return None
    from odebench.ode.pfode import PFODE, time_of, to_state, to_x
    from odebench.ode.reference import DTYPE

    teacher, x = problem.teacher, problem.x_start.to(DTYPE[problem.dtype])
    shape = x.shape[1:]
    sig = torch.tensor([teacher.sigma_max, teacher.sigma_min], dtype=torch.float64)
    t = time_of(sig, time_var).to(x.dtype)
    func = PFODE(teacher, problem.cond, time_var)
    y0 = to_state(x, teacher.sigma_max, time_var).reshape(x.shape[0], -1)
    term = to.ODETerm(lambda tt, yy: func(tt, yy.reshape(-1, *shape)).reshape(yy.shape[0], -1))
    step = {"dopri5": to.Dopri5, "tsit5": to.Tsit5}[method](term=term)
    ctrl = to.IntegralController(atol=tol, rtol=tol, term=term)
    t0 = time.perf_counter()
    with torch.no_grad():
        sol = to.AutoDiffAdjoint(step, ctrl).solve(to.InitialValueProblem(y0=y0, t_eval=t.expand(x.shape[0], -1)))
        x_min = to_x(sol.ys[:, -1].reshape(x.shape), teacher.sigma_min, time_var)
        x0 = teacher.denoise(x_min, torch.full((x.shape[0],), teacher.sigma_min, dtype=x.dtype), problem.cond)
    own = (sol.stats["n_steps"].double() * (evals_per_step(method) - 1) + 2).mean()
    return Row(problem.name, method, time_var, tol, problem.dtype, func.nfe + 1, int(sol.stats["n_accepted"].max()),
               None, rel_rms(x0, problem.truth), time.perf_counter() - t0,
               f"per sample: mean {float(own):.0f} NFE needed", engine="torchode")


def run_ddim(problem: Problem, steps: int) -> Row:
    """DDIM (Euler in sigma on the Karras grid) with `steps` denoiser calls, for scale."""
    t0 = time.perf_counter()
    x0 = SolverStudent(problem.teacher, "ddim", steps).sample(problem.x_start, problem.cond, None)
    return Row(problem.name, "ddim", "sigma (karras)", None, problem.dtype, steps, None, None,
               rel_rms(x0, problem.truth), time.perf_counter() - t0)


def truth_checks(gauss: Problem, gmm: Problem) -> dict[str, float]:
    """How far the truth could be off: dopri8 1e-10 vs closed form, and dopri5 vs dopri8 at 1e-10."""
    d5 = SolverSpec(method="dopri5", rtol=1e-10, atol=1e-10, time="log-sigma", dtype="float64", batch=gmm.x_start.shape[0])
    return {
        "gauss16: dopri8 1e-10 vs closed form": rel_rms(solve_reference(gauss.teacher, gauss.x_start, None,
                                                                        replace(TRUTH_SPEC, batch=gauss.x_start.shape[0])).x0, gauss.truth),
        "gmm64: dopri5 1e-10 vs dopri8 1e-10": rel_rms(solve_reference(gmm.teacher, gmm.x_start, None, d5).x0, gmm.truth),
    }


def measure(problems: list[Problem], nfe_cap: int, per_sample: bool = True) -> list[Row]:
    """Every row of the table, problem by problem."""
    rows = []
    for p in problems:
        for method, time_var, tols in GRID:
            for tol in tols:
                rows.append(run_adaptive(p, method, time_var, tol, nfe_cap=nfe_cap))
                print(f"  {p.name} {method} {time_var} {tol:g}: {rows[-1].nfe} NFE, {rows[-1].rel_err}", flush=True)
        for method, time_var, tols in (PER_SAMPLE if per_sample else ()):
            for tol in tols:
                row = run_per_sample(p, method, time_var, tol)
                if row is not None:
                    rows.append(row)
        for k in DDIM_STEPS:
            rows.append(run_ddim(p, k))
    return rows


def setting_of(r: Row) -> tuple:
    return (r.method, r.time, r.tol, r.engine)


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
    key = lambda c: (c["max_nfe"], c["max_err"])  # noqa: E731
    accurate = sorted((c for c in candidates if c["max_err"] <= GOAL_ERR), key=key)
    all_goals = [c for c in accurate if c["max_nfe"] <= GOAL_NFE and c["min_ratio_vs_ddim100"] >= GOAL_RATIO]
    # the frontier: for each candidate, is there one at most as costly and at least as accurate?
    frontier = sorted((c for c in candidates if not any(o is not c and o["max_nfe"] <= c["max_nfe"] and o["max_err"] < c["max_err"]
                                                        for o in candidates)), key=key)
    return {"cheapest_accurate": accurate[0] if accurate else None,
            "cheapest_all_goals": all_goals[0] if all_goals else None,
            "frontier": frontier, "ddim100_err": ddim,
            "goals": {"rel_err": GOAL_ERR, "nfe": GOAL_NFE, "ratio_vs_ddim100": GOAL_RATIO}}


def fmt_setting(s: tuple) -> str:
    method, time_var, tol, engine = s
    return f"{method} in {time_var} time at rtol = atol = {tol:g} ({engine})"


def choice_paragraph(choice: dict) -> str:
    """Plain-language verdict on the goals: error <= 1e-4, NFE <= 100, >= 100x below DDIM-100."""
    c = choice["cheapest_accurate"]
    front = "; ".join(f"{fmt_setting(f['setting'])}: {f['max_nfe']:.0f} NFE, max rel. err {f['max_err']:.1e}"
                      for f in choice["frontier"])
    if c is None:
        return f"No measured setting reaches <= {GOAL_ERR:g} relative error on every problem. Frontier (max over problems): {front}."
    per = "; ".join(f"{p}: {v['nfe']:.0f} NFE, rel. err {v['rel_err']:.2e}, {v['ratio_vs_ddim100']:.0f}x below DDIM-100 "
                    f"({choice['ddim100_err'][p]:.2e})" for p, v in c["per_problem"].items())
    text = (f"Cheapest setting with <= {GOAL_ERR:g} relative endpoint error on every problem: "
            f"{fmt_setting(c['setting'])}, at most {c['max_nfe']:.0f} NFE per sample vs DDIM-100's 100 ({per}).")
    fails = []
    if c["max_nfe"] > GOAL_NFE:
        fails.append(f"NFE <= {GOAL_NFE} fails ({c['max_nfe']:.0f} NFE, {c['max_nfe'] / GOAL_NFE:.2f}x the budget)")
    if c["min_ratio_vs_ddim100"] < GOAL_RATIO:
        fails.append(f">= {GOAL_RATIO:.0f}x lower error than DDIM-100 fails "
                     f"(only {c['min_ratio_vs_ddim100']:.0f}x, short by {GOAL_RATIO / c['min_ratio_vs_ddim100']:.1f}x)")
    if not fails:
        return text + " It meets all three goals." + f" Frontier: {front}."
    text += " For this setting: " + "; ".join(fails) + "."
    best = choice["cheapest_all_goals"]
    if best is not None:
        text += (f" The cheapest setting that meets all three goals is {fmt_setting(best['setting'])} "
                 f"({best['max_nfe']:.0f} NFE, max rel. err {best['max_err']:.2e}, "
                 f"{best['min_ratio_vs_ddim100']:.0f}x below DDIM-100).")
    else:
        text += " No measured setting meets all three goals."
    return text + f" Frontier (max NFE, max error over problems): {front}."


def markdown_table(rows: list[Row]) -> str:
    head = "| problem | engine | method | time | tol | state | NFE/sample | accepted/rejected | rel. RMS error | wall s | note |"
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        tol = "-" if r.tol is None else f"{r.tol:g}"
        nfe = "-" if r.nfe is None else f"{r.nfe:.0f}"
        steps = "-" if r.accepted is None else f"{r.accepted}/{'-' if r.rejected is None else r.rejected}"
        err = "-" if r.rel_err is None else f"{r.rel_err:.2e}"
        lines.append(f"| {r.problem} | {r.engine} | {r.method} | {r.time} | {tol} | {r.dtype} | {nfe} | {steps} | {err} | "
                     f"{r.seconds:.2f} | {r.note} |")
    return "\n".join(lines)


def precision_study(samples: int, seed: int, truth_file: str | None, tols=(DEFAULT_RTOL, DEFAULT_RTOL / 3),
                    time_var: str = DEFAULT_TIME, method: str = DEFAULT_METHOD) -> dict:
    """bf16 vs fp32 network on digits (state float32): NFE at each requested tolerance with the
    tolerance raise off and on, and the reference floor before (bf16 vs bf16 10x tighter) and after
    (odebench.ode.floor: solver + precision parts) against the true error (bf16 reference vs the
    float64 truth). MSE per element throughout, as the run reports it."""
    from odebench.conditions import Conditions
    from odebench.ode.cache import TrajectoryCache
    from odebench.ode.floor import reference_floor
    from odebench.ode.noise import NoiseBank
    from odebench.ode.precision import effective_spec
    from odebench.ode.reference import DTYPE

    truth, _ = digits_truth(samples, seed, truth_file)
    mse = lambda a, b: float((a.double() - b.double()).pow(2).mean())  # noqa: E731
    out = {"samples": samples, "method": method, "time": time_var, "rows": []}
    teachers = {net: load_teacher("digits", dtype=net) for net in ("fp32", "bf16")}
    x, cond = digits_start(teachers["fp32"], samples, seed, torch.float32)
    no_cache = TrajectoryCache(enabled=False)

    def solve(t, s_, m, label):
        r = solve_reference(t, x[:m].to(DTYPE[s_.dtype]), cond[:m], s_)
        return r.x0, r.nfe

    for tol in tols:
        spec = SolverSpec(method=method, rtol=tol, atol=tol, time=time_var, dtype="float32", batch=samples)
        row = {"tol": tol}
        for net, teacher in teachers.items():
            sol = solve_reference(teacher, x, cond, spec)
            row[f"{net}_nfe"], row[f"{net}_true_mse"] = sol.nfe, mse(sol.x0, truth)
            eff, delta, note = effective_spec(teacher, spec, NoiseBank(seed, teacher.shape), Conditions(10), no_cache)
            row[f"{net}_delta"], row[f"{net}_raised_tol"] = delta, eff.rtol
            ref = sol if eff == spec else solve_reference(teacher, x, cond, eff)
            row[f"{net}_raised_nfe"], row[f"{net}_raised_true_mse"] = ref.nfe, mse(ref.x0, truth)
            if net == "bf16":
                # before: what odebench <= 0.1 reported, the same precision at 10x tighter
                tight = solve_reference(teacher, x, cond, spec.tighter())
                row["bf16_floor_before"], row["bf16_tight_nfe"] = mse(sol.x0, tight.x0), tight.nfe

                fl = reference_floor(teacher, eff, ref.x0, samples, solve, delta)
                row["bf16_floor_after"] = fl["ode_mse"]
                row["bf16_floor_parts"] = {k: v["ode_mse"] for k, v in fl["parts"].items()}
                row["bf16_floor_resolves_nfe"] = [r["nfe_per_sample"] for r in fl["resolves"]]
            else:
                # float32: the floor's precision part (state float32 vs float64) against all the rounding
                # (network and state float64), both on one batch of the same k samples
                fl = reference_floor(teacher, eff, ref.x0, samples, solve, delta)
                row["fp32_floor_parts"] = {k: v["ode_mse"] for k, v in fl["parts"].items()}
                k = min(8, samples)
                r32 = solve_reference(teacher, x[:k], cond[:k], eff)
                r64 = solve_reference(teacher.with_network_dtype("fp64"), x[:k].double(), cond[:k],
                                      replace(eff, dtype="float64"))
                row["fp32_precision_measured"] = mse(r32.x0, r64.x0)
        out["rows"].append(row)
        print(f"  precision tol {tol:g}: {row}", flush=True)
    return out


def precision_table(study: dict) -> str:
    lines = ["| requested tol | fp32 NFE | bf16 NFE (no raise) | bf16 NFE (raised to) | bf16 true MSE (raised) | floor before (bf16 vs bf16 10x) | floor after (solver + precision) |",
             "|---|---|---|---|---|---|---|"]
    for r in study["rows"]:
        parts = r["bf16_floor_parts"]
        lines.append(f"| {r['tol']:g} | {r['fp32_nfe']} | {r['bf16_nfe']} | {r['bf16_raised_nfe']} ({r['bf16_raised_tol']:g}) | "
                     f"{r['bf16_raised_true_mse']:.2e} | {r['bf16_floor_before']:.2e} | {r['bf16_floor_after']:.2e} "
                     f"({parts['solver']:.1e} + {parts['precision']:.1e}) |")
    lines += ["", "| requested tol | fp32 true MSE | fp32 floor: solver part | precision part (state f32 vs f64) | "
              "all rounding (network and state f64) |", "|---|---|---|---|---|"]
    for r in study["rows"]:
        p32 = r["fp32_floor_parts"]
        lines.append(f"| {r['tol']:g} | {r['fp32_true_mse']:.2e} | {p32['solver']:.2e} | {p32['precision']:.1e} | "
                     f"{r['fp32_precision_measured']:.1e} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=256, help="gauss16/gmm64 samples, solved as one batch (default 256)")
    ap.add_argument("--digits-samples", type=int, default=32, help="digits samples, one batch (default 32; 0 skips digits)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: the tensors are small, more threads mostly add overhead)")
    ap.add_argument("--nfe-cap", type=int, default=5000, help="skip adaptive solves above about this many NFE")
    ap.add_argument("--truth-file", help="keep the digits truth here (computed once: ~5 min on one core)")
    ap.add_argument("--no-per-sample", action="store_true", help="skip the torchode rows")
    ap.add_argument("--precision", action="store_true", help="only the bf16-vs-fp32 study on digits")
    ap.add_argument("--json", metavar="PATH", help="also write the rows, truth checks and choice as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    if args.precision:
        study = precision_study(args.digits_samples, args.seed, args.truth_file)
        print(f"# bf16 vs fp32 digits network ({args.digits_samples} samples, {study['method']} in {study['time']} time, "
              "state float32; MSE per element against the float64 truth)\n")
        print(precision_table(study))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(study, f, indent=2)
        return
    gauss, gmm = gaussian_problem(args.samples, args.seed), gmm64_problem(args.samples, args.seed + 1)
    problems = [gauss, gmm]
    checks = truth_checks(gauss, gmm)
    if args.digits_samples:
        digits, info = digits_problem(args.digits_samples, args.seed, args.truth_file)
        problems.append(digits)
        checks["digits: dopri5 log-sigma 1e-6 vs dopri8 lambda 1e-6 (state float64)"] = info["check"]
    rows = measure(problems, args.nfe_cap, per_sample=not args.no_per_sample)
    choice = choose(rows, [p.name for p in problems])
    total = time.perf_counter() - start

    print(f"# Reference PF-ODE solver: accuracy vs cost ({args.samples} samples for gauss16/gmm64, "
          f"{args.digits_samples} for digits, seed {args.seed}, torch {torch.__version__}, {torch.get_num_threads()} threads)\n")
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
            json.dump({"samples": args.samples, "digits_samples": args.digits_samples, "seed": args.seed,
                       "nfe_cap": args.nfe_cap, "truth": {p.name: p.truth_note for p in problems}, "truth_checks": checks,
                       "rows": [asdict(r) for r in rows], "choice": choice, "seconds": total}, f, indent=2)


if __name__ == "__main__":
    main()
