"""Few-step solver students against closed-form answers on a single Gaussian."""
import math

import pytest
import torch

from odebench.bench import RunConfig, run
from odebench.ode.grids import karras_sigmas
from odebench.ode.spec import SolverSpec
from odebench.students.solvers import SolverStudent

MU = [1.0, -2.0, 0.5]
S = 0.3
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def ddim_factor(sigmas) -> float:
    """DDIM on N(mu, s^2 I) is linear in (x - mu): each Euler step sigma -> sigma' multiplies it by
    1 + (sigma' - sigma) sigma/(s^2 + sigma^2), and the final step to 0 by s^2/(s^2 + sigma_K^2)."""
    f = 1.0
    for a, b in zip(sigmas[:-1], sigmas[1:]):
        f *= 1 + (b - a) * a / (S ** 2 + a ** 2)
    return f * S ** 2 / (S ** 2 + sigmas[-1] ** 2)


def exact_factor() -> float:
    """Exact flow sigma_max -> sigma_min, then the reference endpoint D(x(sigma_min), sigma_min)."""
    return math.sqrt(S ** 2 + SIGMA_MIN ** 2) / math.sqrt(S ** 2 + SIGMA_MAX ** 2) * S ** 2 / (S ** 2 + SIGMA_MIN ** 2)


def test_karras_grid():
    sig = karras_sigmas(5, SIGMA_MIN, SIGMA_MAX)
    assert sig[0] == SIGMA_MAX and sig[-1] == SIGMA_MIN and bool((sig[1:] < sig[:-1]).all())
    # eq. 5 of Karras et al. at i = 2: the midpoint of the rho-th roots
    mid = ((SIGMA_MAX ** (1 / 7) + SIGMA_MIN ** (1 / 7)) / 2) ** 7
    assert float(sig[2]) == pytest.approx(mid, rel=1e-12)
    assert karras_sigmas(1, SIGMA_MIN, SIGMA_MAX).tolist() == [SIGMA_MAX]


@pytest.mark.parametrize("k", [1, 2, 4, 16])
def test_ddim_ode_error_matches_closed_form(tmp_path, k):
    """odebench's reported ode_mse@ref for ddim:K equals (a - b)^2 E[(x_T - mu)^2] per element,
    with x_T = sigma_max z, up to sampling error (the expectation is sigma_max^2 + mean(mu^2))."""
    spec = {"kind": "gmm", "means": [MU], "stds": [S]}
    out = run(RunConfig(teacher=spec, students=(f"ddim:{k}",), samples=512, out=tmp_path, curve_points=0,
                        floor_samples=0, solver=SolverSpec(rtol=1e-8, atol=1e-8)))
    m = out[0].result["metrics"]["ode_mse@ref"]
    a = ddim_factor([float(s) for s in karras_sigmas(k, SIGMA_MIN, SIGMA_MAX)])
    expected = (a - exact_factor()) ** 2 * (SIGMA_MAX ** 2 + sum(v * v for v in MU) / 3)
    assert abs(m["value"] - expected) < 4 * m["stderr"] + 1e-9 * expected, (m, expected)
    assert out[0].result["nfe"]["student_per_sample"] == k


def test_solver_samples_are_exactly_the_scalar_products(gaussian_teacher):
    """Per sample, not just on average: ddim:K output = mu + factor (x_T - mu)."""
    x = torch.randn(8, 3, dtype=torch.float64) * SIGMA_MAX
    mu = torch.tensor(MU, dtype=torch.float64)
    for k in (1, 3, 10):
        out = SolverStudent(gaussian_teacher, "ddim", k).sample(x, None, None)
        f = ddim_factor([float(s) for s in karras_sigmas(k, SIGMA_MIN, SIGMA_MAX)])
        torch.testing.assert_close(out, mu + f * (x - mu), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind, k, evals", [("ddim", 4, 4), ("euler", 3, 3), ("heun", 4, 7), ("dpm2", 5, 9)])
def test_teacher_evaluations_per_sample(gaussian_teacher, kind, k, evals):
    s = SolverStudent(gaussian_teacher, kind, k)
    before = gaussian_teacher.counter.snapshot()
    s.sample(torch.randn(6, 3, dtype=torch.float64) * SIGMA_MAX, None, None)
    spent = gaussian_teacher.counter.since(before)
    assert spent.calls == evals == s.nfe() and spent.sample_evals == 6 * evals


def test_second_order_solvers_converge_faster(gaussian_teacher):
    """On a smooth problem Heun and DPM-2 errors fall ~K^-2 and beat Euler at equal K."""
    x = torch.randn(64, 3, dtype=torch.float64) * SIGMA_MAX
    mu = torch.tensor(MU, dtype=torch.float64)
    truth = mu + exact_factor() * (x - mu)

    def err(kind, k):
        return float((SolverStudent(gaussian_teacher, kind, k).sample(x, None, None) - truth).pow(2).mean().sqrt())

    for kind in ("heun", "dpm2"):
        e16, e32 = err(kind, 16), err(kind, 32)
        assert e16 / e32 > 3.0, (kind, e16, e32)  # ~4 for second order
        assert e32 < err("ddim", 32)
    assert 1.5 < err("ddim", 16) / err("ddim", 32) < 2.5  # ~2 for Euler
