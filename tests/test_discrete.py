"""The discrete-schedule adapter against diffusers' own schedulers on the same (tiny, random) UNet."""
import math

import numpy as np
import pytest
import torch

from odebench.ode.reference import solve_reference
from odebench.ode.spec import SolverSpec
from odebench.teachers.base import Guidance
from odebench.teachers.discrete import scaled_linear_alphas_cumprod
from odebench.teachers.unet import UNetClassTeacher

SCHED = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)


def tiny_unet(seed=0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, num_class_embeds=4).eval()


@pytest.fixture(scope="module")
def teacher():
    return UNetClassTeacher(tiny_unet(), scaled_linear_alphas_cumprod(), "epsilon", num_classes=3, null_class=3,
                            weights_sha256="test", name="tiny")


def test_sigma_table_matches_diffusers(teacher):
    from diffusers import EulerDiscreteScheduler

    sch = EulerDiscreteScheduler(**SCHED)
    abar = sch.alphas_cumprod.double()
    # diffusers accumulates in float32; ours is float64, so agreement is to float32 round-off
    torch.testing.assert_close(teacher.alphas_cumprod, abar, rtol=1e-5, atol=0)
    expected = ((1 - abar) / abar).sqrt()
    assert teacher.sigma_min == pytest.approx(float(expected[0]), rel=1e-4)
    assert teacher.sigma_max == pytest.approx(float(expected[-1]), rel=1e-4)
    assert 0.029 < teacher.sigma_min < 0.03 and 14.6 < teacher.sigma_max < 14.7  # SDXL's range


def test_sigma_to_t_matches_diffusers_log_sigma_interpolation(teacher):
    from diffusers import EulerDiscreteScheduler

    sch = EulerDiscreteScheduler(**SCHED)
    log_sigmas = teacher.log_sigmas.numpy()  # same table, so only the interpolation is compared
    sig = np.exp(np.linspace(np.log(teacher.sigma_min), np.log(teacher.sigma_max), 37))
    ours = teacher.sigma_to_t(torch.from_numpy(sig)).numpy()
    theirs = np.array([sch._sigma_to_t(np.array(s), log_sigmas) for s in sig]).reshape(-1)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)
    torch.testing.assert_close(teacher.t_to_sigma(teacher.sigma_to_t(torch.from_numpy(sig))), torch.from_numpy(sig), rtol=1e-9, atol=0)
    torch.testing.assert_close(teacher.sigma_to_t(teacher.sigmas[[0, 10, 999]]), torch.tensor([0.0, 10.0, 999.0], dtype=torch.float64))


def test_denoiser_is_eps_parameterisation(teacher):
    """D(x, sigma_t) = x - sigma_t eps(x / sqrt(1 + sigma_t^2), t) at an integer timestep."""
    x = torch.randn(4, 1, 8, 8) * 3
    t = 500
    s = float(teacher.sigmas[t])
    labels = torch.tensor([0, 1, 2, 0])
    eps = teacher.unet(x / math.sqrt(1 + s * s), torch.full((4,), float(t)), class_labels=labels).sample
    torch.testing.assert_close(teacher.denoise(x, torch.full((4,), s, dtype=torch.float32), labels), x - s * eps,
                               rtol=1e-4, atol=1e-4)


def test_cfg_pair_batch_equals_two_passes(teacher):
    g = teacher.with_guidance(Guidance(3.0))
    x = torch.randn(5, 1, 8, 8)
    sig = torch.full((5,), 2.0)
    labels = torch.tensor([0, 1, 2, 1, 0])
    d_u, d_c = teacher.denoise(x, sig, None), teacher.denoise(x, sig, labels)
    torch.testing.assert_close(g.denoise(x, sig, labels), d_u + 3.0 * (d_c - d_u), rtol=1e-4, atol=1e-5)


def _diffusers_sample(teacher, scheduler, z, labels, steps):
    scheduler.set_timesteps(steps)
    x = z * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(x, t)
        eps = teacher.unet(inp, t.float().expand(z.shape[0]), class_labels=labels).sample
        x = scheduler.step(eps, t, x).prev_sample
    return x


def test_reference_is_the_limit_of_diffusers_samplers(teacher):
    """Many-step DDIM and Euler from the same noise approach odebench's reference solution."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 1, 8, 8, generator=g)
    labels = torch.arange(4) % 3
    ref = solve_reference(teacher, z * teacher.init_noise_scale(), labels,
                          SolverSpec(rtol=1e-5, atol=1e-5, dtype="float32")).x0
    rel = lambda a: float((a - ref).pow(2).sum().sqrt() / ref.pow(2).sum().sqrt())  # noqa: E731
    ddim = DDIMScheduler(**SCHED, set_alpha_to_one=True, clip_sample=False, timestep_spacing="trailing")
    # DDIM with alpha_0 = 1 ends on the x0-prediction at t = 0, which is D(x(sigma_min), sigma_min)
    errs = [rel(_diffusers_sample(teacher, ddim, z, labels, n)) for n in (10, 50, 250)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < errs[1] / 2.5 and errs[2] < 0.02, errs  # ~1/N: first order
    euler = EulerDiscreteScheduler(**SCHED, timestep_spacing="trailing")
    e_errs = [rel(_diffusers_sample(teacher, euler, z, labels, n)) for n in (10, 50, 250)]
    assert e_errs[0] > e_errs[1] > e_errs[2] and e_errs[2] < 0.02, e_errs
