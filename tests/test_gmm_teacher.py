"""The GMM teacher's denoiser against autograd of its exact log-density, CFG forms, JSON teachers."""
import json

import pytest
import torch

from odebench.errors import OdebenchError
from odebench.teachers import load_teacher
from odebench.teachers.base import Guidance
from odebench.teachers.gmm import GMMTeacher


def _diag_teacher():
    g = torch.Generator().manual_seed(1)
    means = torch.randn(6, 5, generator=g, dtype=torch.float64) * 2
    stds = 0.2 + torch.rand(6, 5, generator=g, dtype=torch.float64)
    return GMMTeacher(means, stds, weights=[1, 2, 3, 1, 2, 3], classes=[0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize("sigma", [0.01, 0.3, 2.0, 40.0])
@pytest.mark.parametrize("conditional", [False, True])
def test_score_is_autograd_of_log_density(sigma, conditional):
    """Tweedie: D(x, sigma) = x + sigma^2 grad_x log p_sigma(x), with p_sigma computed independently."""
    t = _diag_teacher()
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(32, 5, generator=g, dtype=torch.float64) * (1 + sigma)).requires_grad_(True)
    cond = torch.arange(32) % 3 if conditional else None
    logp = t.log_prob(x, sigma, cond).sum()
    (grad,) = torch.autograd.grad(logp, x)
    d = t.denoise(x.detach(), sigma, cond)
    torch.testing.assert_close(d, x.detach() + sigma ** 2 * grad, rtol=1e-9, atol=1e-9)


def test_log_density_matches_scipy():
    """The mixture density agrees with scipy's multivariate normal, an implementation nobody here wrote."""
    from scipy.stats import multivariate_normal

    t = _diag_teacher()
    m = t.mixture
    x = torch.randn(7, 5, dtype=torch.float64)
    sigma = 0.5
    expected = sum(float(m.weights[k]) * multivariate_normal(m.means[k].numpy(), torch.diag(m.stds[k] ** 2 + sigma ** 2).numpy()).pdf(x.numpy())
                   for k in range(m.num_components))
    torch.testing.assert_close(t.log_prob(x, sigma).exp(), torch.as_tensor(expected), rtol=1e-10, atol=0)


def test_conditional_is_class_submixture():
    t = _diag_teacher()
    sub = GMMTeacher(t.mixture.means[[1, 4]], t.mixture.stds[[1, 4]], weights=t.mixture.weights[[1, 4]])
    x = torch.randn(10, 5, dtype=torch.float64)
    torch.testing.assert_close(t.denoise(x, 0.7, torch.full((10,), 1)), sub.denoise(x, 0.7), rtol=1e-12, atol=1e-12)


def test_cfg_forms_imagen_w_equals_lcm_w_minus_1():
    t = _diag_teacher()
    x = torch.randn(12, 5, dtype=torch.float64) * 3
    cond = torch.arange(12) % 3
    for w in (0.0, 1.0, 3.0, 9.0):
        d_imagen = t.with_guidance(Guidance(w, "imagen")).denoise(x, 1.5, cond)
        d_lcm = t.with_guidance(Guidance(w - 1, "lcm")).denoise(x, 1.5, cond)
        torch.testing.assert_close(d_imagen, d_lcm, rtol=0, atol=1e-12)
    # and the imagen form is u + w (c - u), computed here from the two branches
    d_u, d_c = t.denoise(x, 1.5, None), t.denoise(x, 1.5, cond)
    torch.testing.assert_close(t.with_guidance(Guidance(9.0)).denoise(x, 1.5, cond), d_u + 9.0 * (d_c - d_u))


def test_cfg_counts_two_passes():
    t = _diag_teacher().with_guidance(Guidance(3.0))
    x = torch.randn(4, 5, dtype=torch.float64)
    t.denoise(x, 1.0, torch.zeros(4, dtype=torch.long))
    assert (t.counter.calls, t.counter.sample_evals, t.counter.passes) == (1, 4, 8)


def test_presets_and_fingerprints():
    ring, m64 = load_teacher("gmm"), load_teacher("gmm64")
    assert ring.shape == (2,) and ring.mixture.num_components == 8 and ring.num_classes == 8
    assert m64.shape == (64,) and m64.num_classes == 4 and m64.mixture.stds.shape == (16, 64)
    assert ring.fingerprint() != m64.fingerprint()
    assert load_teacher(ring.spec()).fingerprint() == ring.fingerprint()  # rebuilt from a sidecar spec
    assert ring.with_guidance(Guidance(2.0)).fingerprint() == ring.fingerprint()  # guidance is separate
    assert ring.with_guidance(Guidance(2.0)).ode_identity() != ring.ode_identity()


def test_json_teacher(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"kind": "gmm", "means": [[0, 0], [3, 3]], "stds": [0.5, [0.1, 0.2]], "weights": [1, 3]}))
    t = load_teacher(str(p))
    assert (t.sigma_min, t.sigma_max) == (0.002, 80.0)
    torch.testing.assert_close(t.mixture.weights, torch.tensor([0.25, 0.75], dtype=torch.float64))
    torch.testing.assert_close(t.mixture.stds, torch.tensor([[0.5, 0.5], [0.1, 0.2]], dtype=torch.float64))


@pytest.mark.parametrize("body, match", [
    ("{not json", "not valid JSON"),
    ('{"kind": "vp", "means": [[0]], "stds": [1]}', "unsupported teacher kind"),
    ('{"kind": "gmm", "means": [[0, 0], [1]], "stds": [1, 1]}', "equal-length"),
    ('{"kind": "gmm", "means": [[0, 0]], "stds": [1, 1]}', "stds"),
    ('{"kind": "gmm", "means": [[0, 0]], "stds": [-1]}', r'"stds\[0\]" must be a finite number > 0'),
    ('{"kind": "gmm", "means": [[0, 0]], "stds": [1], "weights": [0]}', "weights"),
    ('{"kind": "gmm", "means": [[0, 0]], "stds": [1], "sigma_min": 5, "sigma_max": 1}', "sigma_min < sigma_max"),
    ('{"kind": "gmm", "means": [[0, 0]], "stds": [1], "colour": 1}', "unknown field"),
    ('{"kind": "gmm", "means": [[0, 0], [1, 1]], "stds": [1, 1], "classes": [0, 2]}', "without gaps"),
])
def test_bad_json_teacher(tmp_path, body, match):
    p = tmp_path / "bad.json"
    p.write_text(body)
    with pytest.raises(OdebenchError, match=match):
        load_teacher(str(p))


def test_unknown_teacher_name():
    with pytest.raises(OdebenchError, match="unknown teacher"):
        load_teacher("sdxl-turbo-nonexistent")
    with pytest.raises(OdebenchError, match="not found"):
        load_teacher("missing.json")
