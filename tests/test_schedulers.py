"""Scheduler rows (`ClassName:K`): odebench's samples equal the diffusers pipeline's on the same noise, on a
tiny SDXL and a tiny SD 2.x (v-prediction) pipeline; stochastic steps draw each sample's own streams."""
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from sd_tiny import build_tiny_sd  # noqa: E402
from sdxl_tiny import CAPTIONS, LATENT, build_tiny_sdxl  # noqa: E402

from odebench.errors import OdebenchError  # noqa: E402


pytestmark = pytest.mark.usefixtures("no_network")  # conftest: a socket connect fails the test


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from odebench.teachers import load_teacher

    root = tmp_path_factory.mktemp("tiny-pipes")
    out = {}
    for name, folder, cls in (("sdxl", build_tiny_sdxl(root / "sdxl"), StableDiffusionXLPipeline),
                              ("sd21v", build_tiny_sd(root / "sd21v", "sd21v"), StableDiffusionPipeline)):
        teacher = load_teacher(str(folder), device="cpu")
        teacher.set_prompts(CAPTIONS)
        pipe = cls.from_pretrained(str(folder), local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        out[name] = (teacher, pipe, dict(pipe.scheduler.config))  # the folder's config, before tests swap schedulers
    return out


# (class, K, row options, the pipeline's eta)
CASES = [
    ("LCMScheduler", 4, "", 0.0),
    ("TCDScheduler", 4, "", 0.0),
    ("TCDScheduler", 4, "gamma=0.3", 0.3),
    ("DDIMScheduler", 4, "", 0.0),
    ("EulerDiscreteScheduler", 4, "timestep_spacing=trailing", 0.0),
    ("DPMSolverMultistepScheduler", 5, "", 0.0),
    ("UniPCMultistepScheduler", 5, "", 0.0),
    ("EulerAncestralDiscreteScheduler", 3, "", 0.0),
]


@pytest.mark.parametrize("family", ["sdxl", "sd21v"])
@pytest.mark.parametrize("cls,k,options,eta", CASES, ids=[f"{c[0]}-{c[2] or 'default'}" for c in CASES])
def test_scheduler_row_equals_the_pipeline(pipelines, monkeypatch, family, cls, k, options, eta):
    import diffusers

    from odebench.ode.noise import NoiseBank, SampleNoise
    from odebench.students.kinds import load_student

    teacher, pipe, folder_config = pipelines[family]
    row, note = load_student(f"{cls}:{k}" + (f"?{options}" if options else ""), teacher)
    assert note is None and row.kind == "solver" and row.nfe() == k
    noise = SampleNoise(NoiseBank(7, teacher.shape), range(3, 5))
    before = teacher.counter.snapshot()
    ours = row.sample(teacher.initial_state(noise(0)), torch.tensor([0, 1]), noise)
    assert teacher.counter.since(before).passes == 2 * 2 * k  # CFG: two UNet passes per sample and step

    # the pipeline: the same scheduler from the folder's config, the same latents, and its step noise handed
    # out from the same per-sample streams (stream i + 1 at step i)
    overrides = dict(o.split("=") for o in options.split("&") if o and not o.startswith("gamma"))
    pipe.scheduler = getattr(diffusers, cls).from_config(folder_config, **overrides)
    module = sys.modules[type(pipe.scheduler).__module__]
    streams = iter(range(1, 100))
    monkeypatch.setattr(module, "randn_tensor", lambda shape, **kw: noise(next(streams)).to(kw.get("dtype") or torch.float32),
                        raising=False)  # UniPC draws no noise and imports no randn_tensor
    theirs = pipe([CAPTIONS[0], CAPTIONS[1]], num_inference_steps=k, guidance_scale=teacher.guidance.imagen_w,
                  latents=noise(0).clone(), output_type="latent", eta=eta).images
    assert float(ours.std()) > 0.1
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_stochastic_rows_are_deterministic_and_batch_size_invariant(pipelines):
    from odebench.ode.noise import NoiseBank, SampleNoise
    from odebench.students.kinds import load_student

    teacher = pipelines["sd21v"][0]
    bank = NoiseBank(3, teacher.shape)
    for spec in ("euler-a:3", "TCDScheduler:3?gamma=0.5", "DDIMScheduler:3?eta=1.0"):
        row, _ = load_student(spec, teacher)
        cond = torch.tensor([0, 1, 2])
        full = row.sample(torch.zeros(3, *teacher.shape), cond, SampleNoise(bank, range(3)))
        again = row.sample(torch.zeros(3, *teacher.shape), cond, SampleNoise(bank, range(3)))
        alone = row.sample(torch.zeros(1, *teacher.shape), cond[1:2], SampleNoise(bank, range(1, 2)))
        assert torch.equal(full, again)
        torch.testing.assert_close(full[1:2], alone, rtol=1e-4, atol=1e-4)  # UNet batch round-off only
        other = row.sample(torch.zeros(3, *teacher.shape), cond, SampleNoise(NoiseBank(4, teacher.shape), range(3)))
        assert float((other - full).abs().max()) > 1e-2


def test_zero_snr_ddim_row_starts_from_pure_noise_exactly(tmp_path):
    """Zero terminal SNR, v-prediction, a UNet that outputs exactly 0: diffusers' DDIM at t = 999 has abar = 0,
    so x0 = sqrt(abar) x_t - sqrt(1 - abar) v = 0 exactly (set_alpha_to_one: the step lands on x0), while the
    reference (the exact N(0, I) flow) ends at z/sqrt(1 + sigma_min^2): the row's ODE error is
    mean(z^2)/(1 + sigma_min^2)."""
    from odebench.bench import RunConfig, run
    from odebench.ode.noise import NoiseBank
    from odebench.ode.spec import SolverSpec

    folder = build_tiny_sd(tmp_path / "zsnr", "zsnr", zero_unet=True)
    out = run(RunConfig(teacher=str(folder), students=("DDIMScheduler:1?set_alpha_to_one=true", "ref"), samples=4, floor_samples=0,
                        curve_points=0, metrics="ode", solver=SolverSpec(rtol=1e-5, atol=1e-5), out=tmp_path / "runs",
                        teacher_options={"device": "cpu"}))
    row = out[0].result
    z = NoiseBank(0, (4, LATENT, LATENT)).draw(range(4))
    s_min = row["teacher"]["sigma_min"]
    # no per-sigma error curve (scheduler rows have no consistency function); the spectral diagnostics are there
    assert row["student"]["timesteps"] == [999.0] and set(row["curves"]) == {"spectrum"}
    assert row["metrics"]["ode_mse@ref"]["value"] == pytest.approx(float(z.pow(2).mean()) / (1 + s_min ** 2), rel=1e-4)
    assert math.isclose(row["teacher"]["sigma_max"], 4096.0, rel_tol=1e-6)


def test_scheduler_rows_on_digits_and_bad_specs(tmp_path):
    from odebench.bench import RunConfig, run
    from odebench.students.kinds import load_student
    from odebench.teachers import load_teacher

    out = run(RunConfig(teacher="digits", students=("dpmpp2m:3", "UniPCMultistepScheduler:3"), samples=8, floor_samples=0,
                        curve_points=0, out=tmp_path))
    for o in out:
        r = o.result
        assert r["student"]["kind"] == "solver" and r["student"]["format"] == "scheduler" and r["nfe"]["student_per_sample"] == 3
        assert r["nfe"]["student_teacher_passes"] == 3 * 2 * 8 and 0 < r["metrics"]["ode_mse@ref"]["value"] < 1
    gmm, digits = load_teacher("gmm"), load_teacher("digits")
    for spec, msg in [("dpmpp2m:3", "discrete-schedule teachers"), ("FooScheduler:3", "not a diffusers scheduler"),
                      ("EulerDiscreteScheduler:3?nope=1", "has no option 'nope'"), ("unipc:0", "positive integer"),
                      ("FlowMatchEulerDiscreteScheduler:3", "not a discrete-VP scheduler"),
                      ("LCMScheduler:3?timesteps=[999,499]", "2 explicit timesteps but K = 3")]:
        with pytest.raises(OdebenchError, match=msg):
            load_student(spec, gmm if msg == "discrete-schedule teachers" else digits)
