"""TrigFlow (sCM) students of a flow teacher, sampled by diffusers' SCMScheduler (odebench/students/trigflow.py): the
map between TrigFlow time s and the teacher's t checked on closed forms (a student that is the exact flow map of one
Gaussian must reproduce it at one and two steps, for SANA-Sprint's data scaling a = sigma_d and sCM's a = 1), and the
card sampler against SanaSprintPipeline's own formulas on the analytic flow teacher."""
import json
import math

import pytest
import torch

from odebench.errors import OdebenchError

MU = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
S = 0.3


def phi(x_t, t):
    """The exact flow map of N(mu, S^2 I) from (x_t, t) to t = 0: x_t = (1 - t) mu + sqrt((1 - t)^2 S^2 + t^2) z."""
    return MU + S * (x_t - (1 - t) * MU) / math.sqrt((1 - t) ** 2 * S ** 2 + t ** 2)


def flow_map_network(x_t, t):
    """A perfect consistency student in the flow parameterisation: the 'velocity' u with x_t - t u = phi(x_t, t)."""
    tt = t.double()[:, None]
    return ((x_t.double() - torch.stack([phi(x_t[i:i + 1].double(), float(tt[i]))[0] for i in range(x_t.shape[0])])) / tt).float()


def bank(n, seed=0):
    from odebench.ode.noise import NoiseBank, SampleNoise

    return SampleNoise(NoiseBank(seed, (3,)), range(n))


def scm(times):
    from odebench.students.scheduler import SchedulerSpec

    return SchedulerSpec.build("SCMScheduler", None, {"timesteps": times}, "test")


@pytest.mark.parametrize("sigma_d,a", [(0.5, 0.5), (0.5, 1.0), (1.0, 1.0)])
def test_exact_flow_map_student_is_reproduced_through_the_trigflow_map(sigma_d, a):
    """One SCM step from s = pi/2 gives phi(z, 1) = mu + S z; two steps (s_1 = 1.1) re-noise in TrigFlow,
    x_{s_1} = cos(s_1) a x0 + sin(s_1) sigma_d z_1, which is the flow state at sigma_EDM = (sigma_d / a) tan(s_1) =
    t/(1 - t), x_t = (1 - t) x_{s_1} / (a cos(s_1)): the student must then return phi there."""
    from diffusers.utils.torch_utils import randn_tensor

    from odebench.students.trigflow import TrigFlow, sample_trigflow

    trig = TrigFlow(sigma_d, a)
    noise = bank(6, 3)
    z = noise(0).double()
    one = sample_trigflow(trig, scm([math.pi / 2, 0.0]), trig.network(flow_map_network), noise, z)
    torch.testing.assert_close(one.double(), MU + S * z, rtol=2e-6, atol=2e-6)

    s1 = 1.1
    two = sample_trigflow(trig, scm([math.pi / 2, s1, 0.0]), trig.network(flow_map_network), noise, z)
    z1 = randn_tensor(z.shape, generator=noise.generators(1), dtype=torch.float32).double()  # SCMScheduler's draw, step 0
    s1 = float(torch.tensor(s1, dtype=torch.float32))  # the scheduler's float32 time
    x_s1 = math.cos(s1) * a * (MU + S * z) + math.sin(s1) * sigma_d * z1
    sigma = sigma_d / a * math.tan(s1)
    t1 = sigma / (1 + sigma)
    expected = phi((1 - t1) * x_s1 / (a * math.cos(s1)), t1)
    torch.testing.assert_close(two.double(), expected, rtol=2e-5, atol=2e-5)
    assert float((two.double() - (MU + S * z)).abs().max()) > 0.05  # the second step moved it: the map is exercised
    assert abs(float(trig.flow_time(torch.tensor(s1, dtype=torch.float64))) - t1) < 1e-12


def _sana_sprint_loop(teacher, noise, steps, sigma_d=0.5):
    """SanaSprintPipeline.__call__'s denoising loop (diffusers 0.3x), its transformer replaced by the analytic teacher's
    velocity at flow timestep 1000 t: written from the pipeline, not from odebench's derivation."""
    from diffusers import SCMScheduler

    sched = SCMScheduler(sigma_data=sigma_d)
    sched.set_timesteps(steps, max_timesteps=1.57080, intermediate_timesteps=1.3 if steps == 2 else None)
    latents = noise(0).float() * sigma_d
    for i, t in enumerate(sched.timesteps[:-1]):
        timestep = t.expand(latents.shape[0])
        latents_model_input = latents / sigma_d
        scm_timestep = torch.sin(timestep) / (torch.cos(timestep) + torch.sin(timestep))
        e = scm_timestep.view(-1, 1)
        latent_model_input = latents_model_input * torch.sqrt(e ** 2 + (1 - e) ** 2)
        noise_pred = teacher.model_output(latent_model_input, scm_timestep.double() * 1000).float()
        noise_pred = ((1 - 2 * e) * latent_model_input + (1 - 2 * e + 2 * e ** 2) * noise_pred) / torch.sqrt(e ** 2 + (1 - e) ** 2)
        noise_pred = noise_pred * sigma_d
        latents, denoised = sched.step(noise_pred, t, latents, generator=noise.generators(i + 1), return_dict=False)
    return denoised / sigma_d


def _card(path, **fields):
    card = {"format": "odebench-student-card", "version": 1, "kind": "hybrid", "weights": None,
            "scheduler": {"class": "SCMScheduler", "steps": 2}, "parameterisation": {"kind": "trigflow", "sigma_data": 0.5},
            "ode": None, **fields}
    path.write_text(json.dumps(card))
    return path


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_trigflow_card_equals_sana_sprints_loop_on_the_analytic_teacher(tmp_path, steps):
    """A SANA-Sprint-style card (weights null: the teacher's own velocity, sigma_d = 0.5 = data scale) on gmm64-flow
    equals SanaSprintPipeline's loop on the same noise streams; its f(x, t) is x - t v."""
    from odebench.students.kinds import load_student
    from odebench.teachers import load_teacher

    teacher = load_teacher("gmm-flow")
    student, note = load_student(str(_card(tmp_path / "sprint.json", scheduler={"class": "SCMScheduler", "steps": steps})), teacher)
    assert "declares no single teacher ODE" in note and student.nfe() == steps and student.curve
    from odebench.ode.noise import NoiseBank, SampleNoise

    noise = SampleNoise(NoiseBank(1, teacher.shape), range(8))
    ours = student.sample(noise(0), None, noise)
    torch.testing.assert_close(ours, _sana_sprint_loop(teacher, noise, steps), rtol=1e-5, atol=1e-5)
    x = noise(3)
    torch.testing.assert_close(student(x, 0.4, None), x - 0.4 * teacher.model_output(x, 400.0), rtol=1e-6, atol=1e-6)
    d = student.describe()["parameterisation"]
    assert d["kind"] == "trigflow" and "0.5 sin(s)" in d["time_map"]


def test_trigflow_card_run_and_errors(tmp_path):
    from typer.testing import CliRunner

    from odebench.cli import app
    from odebench.students.kinds import load_student
    from odebench.teachers import load_teacher

    card = _card(tmp_path / "sprint.json", name="sprint-like", scheduler={"class": "SCMScheduler", "timesteps": [1.5708, 1.0, 0.0]})
    res = CliRunner().invoke(app, ["run", "--teacher", "gmm-flow", "--student", str(card), "--student", "ref", "--samples", "16",
                                   "--floor-samples", "4", "--curve-points", "2", "--curve-samples", "4",
                                   "--out", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "runs" / "sprint-like" / "result.json").read_text())
    assert r["nfe"]["student_per_sample"] == 2 and r["student"]["timesteps"] == pytest.approx([1.5708, 1.0, 0.0])
    assert r["metrics"]["ode_mse@ref"]["value"] > 0 and any(f.startswith("descriptive-ode-error") for f in r["flags"])
    gmm = load_teacher("gmm-flow")
    for fields, msg in [({"scheduler": {"class": "SCMScheduler", "timesteps": [1.5, 1.6, 0.0]}}, "must descend"),
                        ({"scheduler": {"class": "SCMScheduler", "steps": 3, "timesteps": [1.5, 0.0]}}, "are 1 steps"),
                        ({"scheduler": {"class": "FlowMatchEulerDiscreteScheduler", "steps": 2}}, "sampled by SCMScheduler")]:
        with pytest.raises(OdebenchError, match=msg):
            load_student(str(_card(tmp_path / "bad.json", **fields)), gmm)
    with pytest.raises(OdebenchError, match="none of them"):  # a VE mixture has no velocity a TrigFlow card could map
        load_student(str(_card(tmp_path / "bad.json")), load_teacher("gmm"))
