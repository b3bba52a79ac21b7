"""The rectified-flow family on closed forms: the analytic flow mixtures (exact velocity), the reference
from t = 1 against the exact single-Gaussian flow, FlowMatchEuler rows against a hand-written Euler loop,
embedded guidance."""
import json
import math

import numpy as np
import pytest
import torch

from odebench.errors import OdebenchError
from odebench.ode.reference import solve_reference
from odebench.ode.spec import SolverSpec
from odebench.teachers import load_teacher
from odebench.teachers.base import FLOW, FLOW_VELOCITY, Guidance
from odebench.teachers.gmm import GMMFlowTeacher, GMMTeacher

MU = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
S = 0.3
T_MIN = 0.002


def gauss_flow():
    return GMMFlowTeacher(MU, [S], sigma_min=T_MIN, sigma_max=1.0, name="gauss-flow")


def exact_flow(z, t):
    """x_t = (1 - t) mu + sqrt((1 - t)^2 s^2 + t^2) z: the flow of N(mu, s^2 I) from x_1 = z."""
    return (1 - t) * MU + math.sqrt((1 - t) ** 2 * S ** 2 + t ** 2) * z


def exact_x0_hat(x_t, t):
    """D(x_t, t) = E[x0 | x_t] of one Gaussian, written out here: mu + (1-t) s^2/((1-t)^2 s^2 + t^2) (x_t - (1-t) mu)."""
    return MU + (1 - t) * S ** 2 / ((1 - t) ** 2 * S ** 2 + t ** 2) * (x_t - (1 - t) * MU)


def bank_noise(n, seed):
    """The run's noise for n samples (stream 0 is z) as bench hands it to students."""
    from odebench.ode.noise import NoiseBank, SampleNoise

    noise = SampleNoise(NoiseBank(seed, (3,)), range(n), torch.float64)
    return noise(0), noise


def rel(a, b):
    return float(((a - b).pow(2).sum() / b.pow(2).sum()).sqrt())


def _mixture_flow(conditional_classes=None):
    g = torch.Generator().manual_seed(3)
    means = torch.randn(5, 4, generator=g, dtype=torch.float64) * 2
    stds = 0.2 + torch.rand(5, 4, generator=g, dtype=torch.float64)
    return GMMFlowTeacher(means, stds, weights=[1, 2, 3, 1, 2], classes=[0, 1, 0, 1, 1], sigma_min=T_MIN, sigma_max=1.0)


@pytest.mark.parametrize("t", [0.01, 0.3, 0.8, 0.999])
@pytest.mark.parametrize("conditional", [False, True])
def test_flow_denoiser_is_tweedie_of_the_native_marginal(t, conditional):
    """E[x0 | x_t] = (x_t + t^2 grad log p_t(x_t)) / (1 - t), with p_t the mixture of N((1-t) mu_k, (1-t)^2 s_k^2 + t^2)
    built here from torch.distributions; the velocity is (x_t - D)/t."""
    teacher = _mixture_flow()
    m = teacher.mixture
    x = torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
    cond = torch.arange(16) % 2 if conditional else None
    comps = torch.distributions.Independent(torch.distributions.Normal((1 - t) * m.means, torch.sqrt((1 - t) ** 2 * m.stds ** 2 + t ** 2)), 1)
    log_w = torch.log(m.weights).expand(16, -1)
    if conditional:
        log_w = log_w.masked_fill(teacher.classes[None, :] != cond[:, None], float("-inf"))
    logp = torch.logsumexp(log_w + comps.log_prob(x[:, None, :]), dim=1).sum()
    (grad,) = torch.autograd.grad(logp, x)
    d = teacher.denoise(x.detach(), t, cond)
    torch.testing.assert_close(d, (x.detach() + t ** 2 * grad) / (1 - t), rtol=1e-9, atol=1e-9)
    v = teacher.model_output(x.detach(), 1000 * t, cond)
    torch.testing.assert_close(v, (x.detach() - d) / t, rtol=1e-12, atol=1e-12)


def test_flow_denoiser_equals_the_ve_one_in_edm_coordinates():
    """sigma = t/(1 - t), x = x_t/(1 - t): the flow teacher's D is the VE mixture's D there (same x0 estimate)."""
    flow = _mixture_flow()
    ve = GMMTeacher(flow.mixture.means, flow.mixture.stds, weights=flow.mixture.weights, classes=flow.classes)
    x_t = torch.randn(32, 4, dtype=torch.float64) * 1.3
    for t in (0.05, 0.5, 0.95):
        torch.testing.assert_close(flow.denoise(x_t, t), ve.denoise(x_t / (1 - t), FLOW.edm_sigma(t)), rtol=1e-10, atol=1e-10)


def test_pure_noise_start_is_finite_and_the_prior_mean():
    """t = 1 (EDM sigma = infinity) is an ordinary point: D = the prior mean, v = x_1 - prior mean."""
    teacher = _mixture_flow()
    x1 = torch.randn(8, 4, dtype=torch.float64)
    prior = (teacher.mixture.weights[:, None] * teacher.mixture.means).sum(0)
    torch.testing.assert_close(teacher.denoise(x1, 1.0), prior.expand(8, -1), rtol=1e-12, atol=1e-12)
    assert teacher.initial_state(x1).equal(x1)  # x_1 = z: no finite sigma_max pretended
    assert teacher.sigma_max == 1.0 and teacher.process is FLOW


def test_add_noise_is_the_flow_forward_process():
    from diffusers import FlowMatchEulerDiscreteScheduler

    teacher = load_teacher("gmm-flow")
    x0, z = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    t = torch.tensor([0.0, 0.1, 0.5, 0.7, 0.9, 1.0], dtype=torch.float64)
    torch.testing.assert_close(teacher.add_noise(x0, t, z), (1 - t[:, None]) * x0 + t[:, None] * z)
    # diffusers' own forward process at its table's timesteps
    s = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    ts = s.timesteps[[0, 300, 999]]
    idx = [0, 300, 999]
    x0f, zf = x0[:3].float(), z[:3].float()
    ours = teacher.add_noise(x0f, s.sigmas[idx].double(), zf)
    torch.testing.assert_close(ours, s.scale_noise(x0f, ts, zf), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("time", ["lambda", "log-sigma", "sigma"])
def test_reference_from_pure_noise_matches_the_exact_flow(time):
    """The reference starts at t = 1 from x_1 = z exactly and follows x_t = (1-t) mu + sqrt((1-t)^2 s^2 + t^2) z
    (log-sigma time is log t for a flow teacher, lambda time integrates y = x_t / t against 1/t from 1 to
    1/t_min); the endpoint is D at t_min of the exact x_{t_min}."""
    teacher = gauss_flow()
    z = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    curve = torch.tensor([0.9, 0.5, 0.1, 0.01], dtype=torch.float64)
    truth = exact_x0_hat(exact_flow(z, T_MIN), T_MIN)
    errs = []
    for tol in (1e-5, 1e-7):
        sol = solve_reference(teacher, teacher.initial_state(z), None, SolverSpec(rtol=tol, atol=tol, dtype="float64", time=time), curve)
        err = rel(sol.x0, truth)
        assert 1e-14 < err < 10 * tol, err
        for j, t in enumerate(curve):
            assert rel(sol.traj[j], exact_flow(z, float(t))) < 10 * tol
        errs.append(err)
    assert errs[1] < errs[0]


def _hand_euler(z, k, shift=1.0):
    """FlowMatchEuler written out: t_i = shift(linspace(1, shift(1/1000), k)), t_k = 0; x <- x + (t_{i+1} - t_i) v(x, t_i),
    v from the closed-form Gaussian D (not odebench's mixture code)."""
    def sh(u):
        return shift * u / (1 + (shift - 1) * u)

    ts = sh(np.linspace(1.0, sh(1.0 / 1000), k)).astype(np.float32).tolist() + [0.0]
    x = z.clone()
    for t, t_next in zip(ts[:-1], ts[1:]):
        v = (x - exact_x0_hat(x, t)) / t
        x = x + (t_next - t) * v
    return x


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_flow_match_euler_row_equals_a_hand_written_loop(k):
    from odebench.students.kinds import load_student

    teacher = gauss_flow()
    z, noise = bank_noise(16, 1)
    row, _ = load_student(f"FlowMatchEulerDiscreteScheduler:{k}", teacher)
    assert row.kind == "solver" and row.nfe() == k
    out = row.sample(teacher.initial_state(z), None, noise).double()
    torch.testing.assert_close(out, _hand_euler(z, k), rtol=2e-6, atol=2e-6)  # diffusers steps in float32


def test_flow_match_euler_error_falls_at_first_order():
    """Euler's ODE error against the exact endpoint falls ~1/K (rate between 0.8 and 1.2 over K = 16 .. 128)."""
    from odebench.students.kinds import load_student

    teacher = gauss_flow()
    z, noise = bank_noise(32, 2)
    truth = exact_x0_hat(exact_flow(z, 1e-3), 1e-3)  # the rows' last level is t = 1/1000
    errs = [rel(load_student(f"flow-euler:{k}", teacher)[0].sample(z, None, noise).double(), truth)
            for k in (16, 32, 64, 128)]
    rates = [math.log2(a / b) for a, b in zip(errs[:-1], errs[1:])]
    assert all(0.8 < r < 1.2 for r in rates), (errs, rates)


def test_heun_and_dpmsolver_rows_on_the_analytic_flow():
    """FlowMatchHeun (2nd order) beats Euler at the same NFE; DPMSolver/UniPC with flow_prediction run on the velocity."""
    from odebench.students.kinds import load_student

    teacher = gauss_flow()
    z, noise = bank_noise(32, 5)
    truth = exact_x0_hat(exact_flow(z, 1e-3), 1e-3)

    def err(spec):
        row = load_student(spec, teacher)[0]
        return rel(row.sample(z, None, noise).double(), truth), row.nfe()

    e_euler, n_euler = err("FlowMatchEulerDiscreteScheduler:16")
    e_heun, n_heun = err("FlowMatchHeunDiscreteScheduler:8")
    assert n_heun == 15 and n_euler == 16 and e_heun < e_euler / 3
    e_euler8, _ = err("FlowMatchEulerDiscreteScheduler:8")
    for spec in ("DPMSolverMultistepScheduler:8", "UniPCMultistepScheduler:8"):  # multistep 2nd order, 1 NFE a step
        e, n = err(spec)
        assert n == 8 and e < e_euler8 / 2, (spec, e, e_euler8)
    with pytest.raises(OdebenchError, match="cannot integrate a velocity field"):
        load_student("DDIMScheduler:4", teacher)
    with pytest.raises(OdebenchError, match="is not one"):
        load_student("FlowMatchEulerDiscreteScheduler:4", load_teacher("gmm"))


def test_presets_specs_and_errors(tmp_path):
    ring, ring_flow = load_teacher("gmm"), load_teacher("gmm-flow")
    m64 = load_teacher("gmm64-flow")
    assert ring_flow.has(FLOW_VELOCITY) and not ring.has(FLOW_VELOCITY) and m64.shape == (64,)
    assert ring_flow.fingerprint() != ring.fingerprint()
    assert "process" not in ring.spec() and ring.ode_identity().get("process") is None  # VE keys unchanged
    assert load_teacher(ring_flow.spec()).fingerprint() == ring_flow.fingerprint()
    d = ring_flow.describe()
    assert d["flow"]["t_max"] == 1.0 and "shift-free" in d["grid"]["note"] and "rectified flow" in d["process"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**ring_flow.spec(), "sigma_max": 80.0}))
    with pytest.raises(OdebenchError, match="must be 1"):
        load_teacher(str(bad))


def test_embedded_guidance_is_its_own_ode():
    g = Guidance(3.5, "embedded", "none")
    assert not g.needs_uncond and g.needs_cond and g.embedded
    assert not g.same_ode(Guidance(3.5, "imagen", "none")) and g.same_ode(Guidance(3.5, "embedded", "none"))
    assert g.identity() == {"embedded_w": 3.5, "uncond": "none"}
    assert Guidance.from_dict(g.to_dict()) == g
    assert Guidance(9.0, "imagen", "zeros").identity() == {"imagen_w": 9.0, "uncond": "zeros"}  # CFG keys unchanged


def test_cli_run_on_the_analytic_flow_teacher(tmp_path):
    from odebench.bench import RunConfig, run

    outs = run(RunConfig(teacher="gmm-flow", students=("flow-euler:4", "ref"), samples=32,
                         out=tmp_path, floor_samples=8, curve_samples=8, curve_points=3))
    r = {o.name: o.result for o in outs}
    euler = r["flow-euler-4"]
    assert euler["metrics"]["ode_mse@ref"]["value"] > 1e-6 and r["ref"]["metrics"]["ode_mse@ref"]["value"] == 0
    assert euler["teacher"]["flow"]["t_max"] == 1.0 and "rectified flow" in euler["teacher"]["process"]
    assert euler["student"]["timesteps"][0] == 1000.0 and euler["student"]["kind"] == "solver"


def test_cm_and_direct_targets_on_the_flow_teacher_equal_hand_written_ones():
    """baselines/targets.py on the flow teacher (forward process x_t = (1-t) x0 + t z): CM's target is the student at
    x_n + (t_{n+1} - t_n) v(x_n, t_n); Direct CM's is Euler in t from t_n to t_N = 0, v from the closed-form Gaussian."""
    from baselines.targets import cm_target, direct_target
    from odebench.ode.paper_grid import grid_for

    teacher = gauss_flow()
    grid = grid_for(teacher, 10)
    # the teacher's own sampler grid (FlowMatchEuler, shift 1): 10 levels linspace(1, 1/1000), then t = 0
    expected = np.append(np.linspace(1.0, 1e-3, 10), 0.0)
    assert grid.kind == "flow-sampler" and np.allclose(grid.sigmas.numpy(), expected, rtol=1e-6, atol=0)
    g = torch.Generator().manual_seed(7)
    x0, z = MU + S * torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)
    n = torch.tensor([0, 1, 3, 5, 8, 9])
    t = grid.sigmas[n]
    x_n = teacher.add_noise(x0, t, z)
    torch.testing.assert_close(x_n, (1 - t[:, None]) * x0 + t[:, None] * z)

    def v(x, tt):
        return (x - exact_x0_hat(x, tt)) / tt

    student = lambda x, idx: x * 0.5 + grid.sigmas[idx][:, None]  # noqa: E731  any function of (x, index)
    want = torch.stack([student((x_n[i] + (grid.sigmas[n[i] + 1] - t[i]) * v(x_n[i:i + 1], float(t[i])))[0][None],
                                (n[i:i + 1] + 1))[0] for i in range(6)])
    torch.testing.assert_close(cm_target(student, teacher, x_n, n, grid, None, "euler"), want, rtol=1e-12, atol=1e-12)
    direct = []
    for i in range(6):
        x = x_n[i:i + 1]
        for m in range(int(n[i]), grid.n):
            tt, tn = float(grid.sigmas[m]), float(grid.sigmas[m + 1])
            x = x + (tn - tt) * v(x, tt)
        direct.append(x[0])
    torch.testing.assert_close(direct_target(teacher, x_n, n, grid, None, "euler"), torch.stack(direct), rtol=1e-12, atol=1e-12)


def test_trained_flow_student_loads_flag_free_and_renoises_with_the_flow_process(tmp_path):
    """`odebench train cm --teacher gmm-flow` writes a student whose sidecar names the flow teacher: a run needs no
    other flag, and its 2-step sampler re-noises as x_t = (1 - t) x0_hat + t z."""
    from baselines.distill import DistillConfig
    from baselines.train import train_student
    from odebench.ode.grids import karras_sigmas
    from odebench.students.kinds import declared_ode, load_student

    side = train_student(DistillConfig("cm", steps=3, batch_size=16, checkpoint_every=3), "gmm-flow", tmp_path / "cm",
                         hidden=16, depth=2)
    declared = declared_ode([str(side)])
    teacher = load_teacher(declared.teacher).with_guidance(declared.guidance)
    assert teacher.has(FLOW_VELOCITY) and teacher.fingerprint() == load_teacher("gmm-flow").fingerprint()
    student, note = load_student(str(side), teacher, conditional=declared.conditional)
    assert note is None and student.flow
    z, noise = bank_noise(4, 3)
    z, z1 = z[:, :2].contiguous(), noise(1)[:, :2]
    cond = torch.arange(4) % 8 if declared.conditional else None
    out = student.sample(z, cond, lambda i: z1, steps=2)
    levels = karras_sigmas(3, student.sigma_min, 1.0)[:2]
    first = student(z, float(levels[0]), cond)
    t1 = float(levels[1])
    torch.testing.assert_close(out, student((1 - t1) * first + t1 * z1, t1, cond))
