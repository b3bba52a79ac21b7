"""The reference solver against the closed-form flow of a single Gaussian, and its invariances."""
import math

import pytest
import torch

from odebench.conditions import Conditions
from odebench.ode.cache import TrajectoryCache
from odebench.ode.grids import karras_sigmas
from odebench.ode.noise import NoiseBank
from odebench.ode.reference import solve_reference
from odebench.ode.spec import SolverSpec
from odebench.ode.trajectories import reference_set
from odebench.errors import OdebenchError

MU = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
S = 0.3


def exact_flow(x_start, sigma_start, sigma):
    """x(sigma) = mu + (x(sigma_0) - mu) sqrt(s^2 + sigma^2)/sqrt(s^2 + sigma_0^2) (DESIGN section 8)."""
    return MU + (x_start - MU) * math.sqrt(S ** 2 + sigma ** 2) / math.sqrt(S ** 2 + sigma_start ** 2)


def exact_endpoint(x_start, sigma_start, sigma_min):
    x_min = exact_flow(x_start, sigma_start, sigma_min)
    return MU + S ** 2 / (S ** 2 + sigma_min ** 2) * (x_min - MU)


def rel_rms(a, b):
    return float(((a - b).pow(2).sum() / b.pow(2).sum()).sqrt())


@pytest.mark.parametrize("method", ["dopri5", "dopri8"])
@pytest.mark.parametrize("tol", [1e-5, 1e-7])
def test_reference_matches_closed_form(gaussian_teacher, method, tol):
    g = torch.Generator().manual_seed(0)
    x_start = torch.randn(64, 3, generator=g, dtype=torch.float64) * 80.0
    curve = karras_sigmas(6, 0.002, 80.0)[1:-1]
    sol = solve_reference(gaussian_teacher, x_start, None, SolverSpec(method=method, rtol=tol, atol=tol, dtype="float64"), curve)
    truth = exact_endpoint(x_start, 80.0, 0.002)
    err = rel_rms(sol.x0, truth)
    assert err < 10 * tol, err  # global error within an order of magnitude of the local tolerance
    assert err > 1e-14  # it is a numerical solve, not the closed form in disguise
    # dense-output states along the way follow the exact flow too; torchdiffeq's dopri8 interpolant
    # is of lower order than its steps, so its intermediate states are only good to ~1e-5
    curve_bound = 10 * tol if method == "dopri5" else 1e-4
    for j, sig in enumerate(curve):
        assert rel_rms(sol.traj[j], exact_flow(x_start, 80.0, float(sig))) < curve_bound
    assert sol.nfe > 10 and sol.accepted > 0


def test_tighter_tolerance_is_more_accurate(gaussian_teacher):
    x_start = torch.randn(32, 3, dtype=torch.float64) * 80.0
    truth = exact_endpoint(x_start, 80.0, 0.002)
    errs = [rel_rms(solve_reference(gaussian_teacher, x_start, None, SolverSpec(rtol=t, atol=t, dtype="float64")).x0, truth)
            for t in (1e-4, 1e-6, 1e-8)]
    assert errs[0] > errs[1] > errs[2]


def test_sigma_time_and_float32(gaussian_teacher):
    x_start = torch.randn(32, 3, dtype=torch.float64) * 80.0
    truth = exact_endpoint(x_start, 80.0, 0.002)
    sol = solve_reference(gaussian_teacher, x_start, None, SolverSpec(time="sigma", rtol=1e-7, atol=1e-7, dtype="float64"))
    assert rel_rms(sol.x0, truth) < 1e-6
    sol32 = solve_reference(gaussian_teacher, x_start, None, SolverSpec(rtol=1e-5, atol=1e-5, dtype="float32"))
    assert sol32.x0.dtype == torch.float32
    assert rel_rms(sol32.x0.double(), truth) < 1e-4


def test_solve_from_intermediate_sigma(gaussian_teacher):
    x = torch.randn(16, 3, dtype=torch.float64) * 5.0
    sol = solve_reference(gaussian_teacher, x, None, SolverSpec(rtol=1e-8, atol=1e-8, dtype="float64"), sigma_start=5.0)
    assert rel_rms(sol.x0, exact_endpoint(x, 5.0, 0.002)) < 1e-7


def test_per_sample_norm_holds_every_sample_to_tolerance(gaussian_teacher):
    """One far-out sample must not be averaged away: each sample's own error stays small."""
    x_start = torch.randn(64, 3, dtype=torch.float64) * 80.0
    x_start[0] *= 50  # an outlier the batch RMS would hide
    sol = solve_reference(gaussian_teacher, x_start, None, SolverSpec(rtol=1e-6, atol=1e-6, dtype="float64"))
    truth = exact_endpoint(x_start, 80.0, 0.002)
    per = ((sol.x0 - truth).pow(2).sum(1) / truth.pow(2).sum(1)).sqrt()
    assert float(per.max()) < 1e-5


def _refs(teacher, batch, n=48, seed=3):
    spec = SolverSpec(rtol=1e-6, atol=1e-6, batch=batch)
    return reference_set(teacher, spec, NoiseBank(seed, teacher.shape), Conditions(teacher.num_classes), n,
                         TrajectoryCache(enabled=False), torch.empty(0, dtype=torch.float64))


def test_batch_size_invariance_and_bitwise_reruns():
    from odebench.teachers import load_teacher

    teacher = load_teacher("gmm")
    a, b, c = _refs(teacher, 48), _refs(teacher, 7), _refs(teacher, 48)
    assert torch.equal(a.x0, c.x0)  # bitwise stable on rerun
    assert not torch.equal(a.x0, b.x0)  # batches share step sizes: the numbers do move...
    assert rel_rms(b.x0, a.x0) < 1e-5  # ...but only within the tolerance
    assert [tuple(ch) for ch in b.chunks][:2] == [(0, 7), (7, 14)]


def test_solver_spec_validation():
    with pytest.raises(OdebenchError, match="unknown solver option"):
        SolverSpec(options=(("bogus", 1.0),))
    with pytest.raises(OdebenchError, match="unknown reference method"):
        SolverSpec(method="rk45")
    with pytest.raises(OdebenchError, match="rtol"):
        SolverSpec(rtol=-1.0)
    with pytest.raises(Exception):  # frozen
        SolverSpec().rtol = 1.0  # type: ignore[misc]
    s = SolverSpec(options=(("max_num_steps", 100.0),), dtype="float64")
    assert SolverSpec.from_dict(s.to_dict()) == s
    assert s.tighter().rtol == pytest.approx(s.rtol / 10) and s.tighter().atol == pytest.approx(s.atol / 10)


def test_max_num_steps_option_is_passed_through(gaussian_teacher):
    x = torch.randn(4, 3, dtype=torch.float64) * 80
    # torchdiffeq's give-up assertion, as one OdebenchError line (odebench.ode.reference.solver_failure)
    with pytest.raises(OdebenchError, match="gave up after max_num_steps=3 steps"):
        solve_reference(gaussian_teacher, x, None, SolverSpec(rtol=1e-10, atol=1e-10, dtype="float64", options=(("max_num_steps", 3),)))


# -- lambda time: y = x / sigma against lambda = 1 / sigma (odebench.ode.pfode) -------------------------
def test_lambda_drift_is_the_derivative_of_the_closed_form_flow(gaussian_teacher):
    """Along the exact flow, y(lambda) = mu lambda + c sqrt(s^2 lambda^2 + 1) with c = (x0 - mu)/sqrt(s^2 + sigma0^2);
    its derivative mu + c s^2 lambda / sqrt(s^2 lambda^2 + 1) must equal the lambda-time drift D(y/lambda, 1/lambda)."""
    from odebench.ode.pfode import PFODE

    x_start = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 80.0
    c = (x_start - MU) / math.sqrt(S ** 2 + 80.0 ** 2)
    func = PFODE(gaussian_teacher, None, "lambda")
    for sigma in (50.0, 3.0, 0.3, 0.01):
        lam = 1.0 / sigma
        y = exact_flow(x_start, 80.0, sigma) / sigma
        assert torch.allclose(y, MU * lam + c * math.sqrt(S ** 2 * lam ** 2 + 1), rtol=1e-12, atol=1e-12)
        dy = MU + c * S ** 2 * lam / math.sqrt(S ** 2 * lam ** 2 + 1)
        assert torch.allclose(func(torch.tensor(lam, dtype=torch.float64), y), dy, rtol=1e-10, atol=1e-12)


@pytest.mark.filterwarnings("ignore:Solver 'euler' does not support callbacks")
def test_euler_in_lambda_time_is_ddim_exactly(gaussian_teacher):
    """The exponential integrator's first-order step: Euler on (y, lambda) is the DDIM update
    x' = (sigma'/sigma) x + (1 - sigma'/sigma) D, i.e. the ddim:K solver row on the same grid."""
    from torchdiffeq import odeint

    from odebench.ode.pfode import PFODE, time_of, to_state, to_x
    from odebench.students.solvers import SolverStudent

    x_start = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 80.0
    sigmas = karras_sigmas(12, 0.002, 80.0)
    ys = odeint(PFODE(gaussian_teacher, None, "lambda"), to_state(x_start, 80.0, "lambda"), time_of(sigmas, "lambda"),
                method="euler")
    x_min = to_x(ys[-1], float(sigmas[-1]), "lambda")
    ddim = SolverStudent(gaussian_teacher, "ddim", 12)
    x = x_start
    for i in range(len(sigmas) - 1):  # ddim's own steps up to sigma_min (its last step jumps to D)
        d = gaussian_teacher.denoise(x, float(sigmas[i]))
        x = x + (float(sigmas[i + 1]) - float(sigmas[i])) * (x - d) / float(sigmas[i])
    assert torch.allclose(x_min, x, rtol=1e-12, atol=1e-10)
    assert torch.allclose(gaussian_teacher.denoise(x_min, float(sigmas[-1])), ddim.sample(x_start, None, None), atol=1e-10)
    # ...and unlike Euler in log-sigma time, which is a different scheme
    us = odeint(PFODE(gaussian_teacher, None, "log-sigma"), x_start, time_of(sigmas, "log-sigma"), method="euler")
    assert not torch.allclose(us[-1], x, rtol=1e-6)


@pytest.mark.parametrize("method", ["dopri5", "dopri8"])
@pytest.mark.parametrize("tol", [1e-4, 1e-6])
def test_lambda_time_reference_matches_closed_form(gaussian_teacher, method, tol):
    x_start = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80.0
    curve = karras_sigmas(6, 0.002, 80.0)[1:-1]
    sol = solve_reference(gaussian_teacher, x_start, None, SolverSpec(method=method, rtol=tol, atol=tol, time="lambda",
                                                                       dtype="float64"), curve)
    err = rel_rms(sol.x0, exact_endpoint(x_start, 80.0, 0.002))
    assert 1e-14 < err < tol
    for j, sig in enumerate(curve):  # states at the curve levels come back in x, not y = x / sigma
        assert rel_rms(sol.traj[j], exact_flow(x_start, 80.0, float(sig))) < tol
    # from an intermediate level too
    x = exact_flow(x_start[:8], 80.0, 5.0)
    sol5 = solve_reference(gaussian_teacher, x, None, SolverSpec(method=method, rtol=tol, atol=tol, time="lambda",
                                                                  dtype="float64"), sigma_start=5.0)
    assert rel_rms(sol5.x0, exact_endpoint(x_start[:8], 80.0, 0.002)) < tol


def test_default_reference_is_within_its_goal_on_the_gaussian(gaussian_teacher):
    """The default spec (benchmarks/reference_solver.py chose it): <= 1e-4 relative error at <= 100 NFE on
    the closed-form flow (3-D here; the 16-D benchmark problem: 3.6e-5 at 75 NFE)."""
    x_start = torch.randn(256, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 80.0
    sol = solve_reference(gaussian_teacher, x_start, None, SolverSpec(dtype="float64"))
    assert rel_rms(sol.x0, exact_endpoint(x_start, 80.0, 0.002)) < 1e-4
    assert sol.nfe <= 100
