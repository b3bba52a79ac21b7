"""The teacher-family and student-kind registries: a new family and a new kind are one module each plus
their registration (here: a class and a register call inside the test), and `odebench.run` drives
them with no other change. Numbers are checked against closed forms (a single Gaussian's exact flow)."""
import math

import pytest
import torch

from odebench.errors import OdebenchError


# ---- a toy teacher family: isotropic Gaussian N(mu, s^2 I) in d dimensions, named "toy-gauss:MU:S" ----

def make_toy_family():
    from odebench.teachers.base import Teacher
    from odebench.teachers.family import TeacherFamily

    class GaussTeacher(Teacher):
        """D(x, sigma) = mu + s^2/(s^2 + sigma^2) (x - mu): the exact denoiser of N(mu, s^2 I)."""

        family = "toy-gauss"
        default_dtype = torch.float64

        def __init__(self, mu: float, s: float, d: int = 3) -> None:
            super().__init__()
            self.mu, self.s, self.name, self.shape = mu, s, f"toy-gauss:{mu:g}:{s:g}", (d,)
            self.sigma_min, self.sigma_max = 0.002, 80.0

        def _denoise(self, x, sigma, cond):
            k = (self.s ** 2 / (self.s ** 2 + sigma ** 2)).reshape(-1, 1)
            return self.mu + k * (x - self.mu)

        def fingerprint(self):
            return f"toy-gauss-{self.mu:g}-{self.s:g}-{self.shape[0]}"

        def spec(self):
            return self.name

        @property
        def sigma_data(self):
            return self.s

        def exact_endpoint(self, x, sigma):
            """The closed-form PF-ODE flow from (x, sigma) to sigma = 0 (DESIGN.md section 8)."""
            return self.mu + (x - self.mu) * self.s / math.sqrt(self.s ** 2 + sigma ** 2)

    class Quality:
        def score(self, samples, reference):
            from odebench.metrics.registry import MetricValue

            m = float(samples.mean())
            return {"toy_mean": MetricValue(m, None, False, "mean of all sample entries", samples.shape[0])}, {"toy": 1}, {}

    class ToyFamily(TeacherFamily):
        name = "toy-gauss"
        help = "a toy Gaussian family (tests)"
        default_rows = ("offset:0.25", "ref")

        def matches(self, spec):
            return isinstance(spec, str) and spec.startswith("toy-gauss:")

        def load(self, spec, **options):
            _, mu, s = spec.split(":")
            return GaussTeacher(float(mu), float(s))

        def quality(self, teacher, conditions, seed, n, *args, **kwargs):
            return Quality()

    return ToyFamily()


# ---- a toy student kind: "offset:A" = the exact flow endpoint plus A (ODE error A^2 in closed form) ----

def make_toy_kind():
    from odebench.students.base import Student
    from odebench.students.kinds import StudentKind

    class OffsetStudent(Student):
        kind = "distribution"

        def __init__(self, teacher, a: float) -> None:
            self.teacher, self.a, self.spec, self.name, self.steps = teacher, a, f"offset:{a:g}", f"offset-{a:g}", 1

        def __call__(self, x, sigma, cond):
            return self.teacher.exact_endpoint(x, float(torch.as_tensor(sigma).reshape(-1)[0])) + self.a

        def sample(self, x_start, cond, noise, steps=None):
            return self(x_start, self.teacher.sigma_max, cond)

        def nfe(self, steps=None):
            return 0

    class OffsetKind(StudentKind):
        name = "toy-offset"
        help = "offset:A (tests)"
        priority = 15

        def matches(self, spec):
            return spec.startswith("offset:")

        def load(self, spec, ctx):
            return OffsetStudent(ctx.teacher, float(spec.split(":", 1)[1])), None

    return OffsetKind()


@pytest.fixture
def toy_registries():
    from odebench.students import kinds
    from odebench.teachers import family

    fam, kind = family.register(make_toy_family()), kinds.register(make_toy_kind())
    yield fam, kind
    family.unregister(fam.name)
    kinds.unregister(kind.name)


def test_a_new_family_and_kind_run_through_odebench_run(toy_registries, tmp_path, one_torch_thread):
    from odebench.bench import RunConfig, run
    from odebench.cli import _registry_help
    from odebench.ode.spec import SolverSpec

    student_help, teacher_help = _registry_help()
    assert "offset:A (tests)" in student_help and "a toy Gaussian family (tests)" in teacher_help
    spec = SolverSpec(rtol=1e-8, atol=1e-8)
    outcomes = run(RunConfig(teacher="toy-gauss:0.5:0.7", samples=32, solver=spec, floor_samples=4, curve_points=2,
                             out=tmp_path))
    by_name = {o.name: o.result for o in outcomes}
    assert list(by_name) == ["offset-0.25", "ref"]  # the family's default rows
    res = by_name["offset-0.25"]
    # the reference converges to the closed-form flow, so the student's ODE error is its offset squared
    assert res["metrics"]["ode_mse@ref"]["value"] == pytest.approx(0.25 ** 2, rel=1e-6)
    from safetensors.torch import load_file

    samples = load_file(str(tmp_path / "offset-0.25" / "per_sample.safetensors"))["samples"]
    assert res["metrics"]["toy_mean"]["value"] == pytest.approx(float(samples.double().mean()), rel=1e-6)  # stored float32; the family's quality
    assert res["extras"] == {"toy": 1} and res["teacher"]["teacher"] == "toy-gauss:0.5:0.7"
    assert res["student"]["kind"] == "distribution" and res["student"]["format"] == "toy-offset"
    assert "ode_mse@ddim100" not in res["metrics"]  # the toy family declares no paper grid
    assert by_name["ref"]["student"]["kind"] == "oracle" and by_name["ref"]["metrics"]["ode_mse@ref"]["value"] == 0.0
    # the per-sigma curve: the student applied on the reference trajectory, error again A^2
    assert all(v == pytest.approx(0.0625, rel=1e-5) for v in res["curves"]["ode_mse_vs_sigma"]["ode_mse"])


def test_unknown_specs_name_every_registered_kind_and_family(toy_registries):
    from odebench.students.kinds import kind_for_spec
    from odebench.teachers import load_teacher

    with pytest.raises(OdebenchError, match=r"unknown student 'nope'.*offset:A \(tests\)"):
        kind_for_spec("nope")
    with pytest.raises(OdebenchError, match=r"unknown teacher 'nope'.*toy Gaussian"):
        load_teacher("nope")
    with pytest.raises(OdebenchError, match="--height apply to SDXL / SD / SD3 / FLUX.1 / SANA teachers only, not 'toy-gauss:0:1'"):
        load_teacher("toy-gauss:0:1", height=64)
    # --dtype is every network teacher's precision: an analytic family's teacher says it has none
    with pytest.raises(OdebenchError, match="teacher 'toy-gauss:0:1' is analytic .*--state-dtype"):
        load_teacher("toy-gauss:0:1", dtype="fp16")


def test_capabilities_are_declared_not_probed():
    """Every built-in teacher class declares its family and protocols; the run never asks its class or name."""
    from odebench.teachers.base import DECODES, DISCRETE, SCHEDULER, TEXT, UNET
    from odebench.teachers.family import families, get_family
    from odebench.teachers.gmm import GMMTeacher
    from odebench.teachers.sdxl import SDXLTeacher
    from odebench.teachers.unet import UNetClassTeacher

    assert {f.name for f in families()} >= {"gmm", "digits", "sdxl"}
    assert GMMTeacher.capabilities == frozenset() and GMMTeacher.family == "gmm"
    assert UNetClassTeacher.capabilities == {DISCRETE, DECODES, SCHEDULER} and get_family(UNetClassTeacher.family).paper_grid.n == 100
    assert SDXLTeacher.capabilities == {DISCRETE, DECODES, TEXT, UNET, SCHEDULER}
    assert get_family("sdxl").paper_grid.unet_timesteps == "paper" and get_family("gmm").paper_grid is None


def test_forward_process_hooks_map_ve_and_native_states():
    """VE: native = x; VP: x_vp = x/sqrt(1 + sigma^2), pure noise z at sigma_max is x = z sqrt(1 + sigma_max^2),
    and add_noise / renoise are x0 + sigma z in VE coordinates (= sqrt(abar) x0 + sqrt(1 - abar) z on the VP latent)."""
    from odebench.teachers import load_teacher
    from odebench.teachers.base import VE, VP

    x, z = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    sigma = torch.tensor([0.5, 2.0, 14.0], dtype=torch.float64)
    assert torch.equal(VE.to_native(x, sigma), x)
    x_vp = VP.to_native(x, sigma)
    torch.testing.assert_close(x_vp, x / torch.sqrt(1 + sigma[:, None] ** 2))
    torch.testing.assert_close(VP.from_native(x_vp, sigma), x)
    digits = load_teacher("digits")
    start = digits.initial_state(z)
    torch.testing.assert_close(VP.to_native(start, digits.sigma_max), z)  # VP pure noise
    abar = 1 / (1 + sigma[:, None] ** 2)
    noised = digits.add_noise(x, sigma, z)
    torch.testing.assert_close(VP.to_native(noised, sigma), abar.sqrt() * x + (1 - abar).sqrt() * z)
    torch.testing.assert_close(digits.renoise(x, 2.0, z), x + 2.0 * z)
    gmm = load_teacher("gmm")
    assert torch.equal(gmm.initial_state(z), z * gmm.sigma_max)
