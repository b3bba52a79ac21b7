"""The LCM-parameterised UNet student: boundary condition, the paper's sampling schedule, round trip."""
import pytest
import torch

from odebench.students.consistency import export_unet_lcm_student
from odebench.students.load import load_student
from odebench.students.unet_lcm import UNetLCM, lcm_scalings
from odebench.teachers.discrete import scaled_linear_alphas_cumprod
from odebench.teachers.unet import UNetClassTeacher

SCHEDULE = {"kind": "discrete-vp", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
            "num_train_timesteps": 1000}


def tiny_teacher():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, num_class_embeds=4)
    return UNetClassTeacher(unet, scaled_linear_alphas_cumprod(), "epsilon", 3, 3, "tiny-weights", name="tiny",
                            spec="tiny", schedule=SCHEDULE)


def test_lcm_scalings_match_the_paper():
    t = torch.tensor([0.0, 1.0, 500.0], dtype=torch.float64)
    c_skip, c_out = lcm_scalings(t)
    torch.testing.assert_close(c_skip, 0.25 / ((10 * t) ** 2 + 0.25))
    torch.testing.assert_close(c_out, 10 * t / torch.sqrt((10 * t) ** 2 + 0.25))
    assert c_skip[0] == 1 and c_out[0] == 0


def test_boundary_and_eps_parameterisation():
    teacher = tiny_teacher()
    model = UNetLCM(teacher.unet, teacher.alphas_cumprod, teacher.null_class)
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(model(x, torch.zeros(4)), x, rtol=0, atol=0)  # f(x, 0) = x exactly
    # at a grid point t (paper, 1-indexed), the UNet sees t - 1 and sigma_{t-1}
    t = 500
    s = float(teacher.sigmas[t - 1])
    labels = torch.tensor([0, 1, 2, 0])
    eps = teacher.unet(x / (1 + s * s) ** 0.5, torch.full((4,), float(t - 1)), class_labels=labels).sample
    c_skip, c_out = (float(v) for v in lcm_scalings(torch.tensor([float(t)], dtype=torch.float64)))
    torch.testing.assert_close(model(x, torch.full((4,), s, dtype=torch.float64), labels), c_skip * x + c_out * (x - s * eps),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("k, timesteps", [(1, [1000]), (2, [1000, 500]), (4, [1000, 750, 500, 250])])
def test_sampler_uses_the_papers_timesteps(tmp_path, k, timesteps):
    teacher = tiny_teacher()
    model = UNetLCM(teacher.unet, teacher.alphas_cumprod, teacher.null_class)
    side = export_unet_lcm_student(tmp_path / "s", model, teacher, conditional=True, steps=k)
    student, _ = load_student(str(side), teacher, conditional=True)
    seen = []
    inner = student.model.forward

    def spy(x, sigma, cond=None):
        seen.append(float(torch.as_tensor(sigma).reshape(-1)[0]))
        return inner(x, sigma, cond)

    student.model.forward = spy
    x = torch.randn(2, 1, 8, 8) * teacher.init_noise_scale()
    student.sample(x, torch.tensor([0, 1]), lambda i: torch.randn(2, 1, 8, 8))
    expected = [float(teacher.sigmas[t - 1]) for t in timesteps]
    assert seen == pytest.approx(expected, rel=1e-6)


def test_round_trip_through_the_student_format(tmp_path):
    teacher = tiny_teacher()
    torch.manual_seed(1)
    model = UNetLCM(teacher.unet, teacher.alphas_cumprod, teacher.null_class)
    for p in model.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    side = export_unet_lcm_student(tmp_path / "s", model, teacher, conditional=True, steps=2)
    student, note = load_student(str(side), teacher, conditional=True)
    assert note is None and student.steps == 2
    x = torch.randn(3, 1, 8, 8)
    sig = torch.full((3,), 2.0)
    torch.testing.assert_close(student(x, 2.0, torch.tensor([0, 1, 2])), model(x, sig, torch.tensor([0, 1, 2])))
