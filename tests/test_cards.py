"""Student cards (odebench/students/card.py) on tiny SDXL and SD 1.x pipelines: LoRAs in the diffusers, peft and
kohya key layouts, full UNets, any scheduler; samples equal the diffusers pipeline's on the same noise; a card
run needs no other flag; distribution / hybrid students carry their kind into results and reports."""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from sd_tiny import build_tiny_sd  # noqa: E402
from sdxl_tiny import CAPTIONS, build_tiny_sdxl, write_lcm_lora, write_lcm_sdxl_unet  # noqa: E402

from odebench.errors import OdebenchError  # noqa: E402


pytestmark = pytest.mark.usefixtures("no_network")  # conftest: a socket connect fails the test


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("card-pipes")
    return {"sdxl": build_tiny_sdxl(root / "sdxl"), "sd15": build_tiny_sd(root / "sd15", "sd15")}


@pytest.fixture(scope="module")
def teachers(folders):
    from odebench.teachers import load_teacher

    out = {}
    for k, v in folders.items():
        out[k] = load_teacher(str(v), device="cpu")
        out[k].set_prompts(CAPTIONS)
    return out


def write_card(path: Path, **fields) -> Path:
    card = {"format": "odebench-student-card", "version": 1, "kind": "trajectory",
            "scheduler": {"class": "LCMScheduler", "steps": 4}, **fields}
    path.write_text(json.dumps(card))
    return path


@pytest.mark.parametrize("family", ["sdxl", "sd15"])
@pytest.mark.parametrize("layout", ["peft-alpha", "released", "kohya"])
def test_card_lora_loads_in_every_key_layout(teachers, tmp_path, family, layout):
    """peft keys (lora_A/B, alpha in the metadata), diffusers keys (lora.down/up, as direct-cms writes them) and
    kohya keys (lora_unet_..., alphas): the fused UNet equals peft's own merge of the same LoRA."""
    from odebench.students.kinds import load_student

    teacher = teachers[family]
    path, merged = write_lcm_lora(teacher.unet, tmp_path / "lora", layout=layout, alpha=8 if layout == "peft-alpha" else None)
    # a relative path is relative to the card: the folder beside it, or the kohya file in it
    rel = f"lora/{path.name}" if layout == "kohya" else "lora"
    card = write_card(tmp_path / "card.json", weights={"lora": rel}, ode={"guidance": teacher.guidance.to_dict()})
    student, note = load_student(str(card), teacher)
    assert note is None and student.format == "card" and student.kind == "trajectory"
    got = student.unet.state_dict()
    assert set(got) == set(merged)
    for k, v in merged.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert any(not torch.equal(v, teacher.unet.state_dict()[k]) for k, v in merged.items())


def _patched_pipeline_run(monkeypatch, pipe, scheduler, noise, k, **kw):
    import sys as _sys

    pipe.scheduler = scheduler
    module = _sys.modules[type(scheduler).__module__]
    streams = iter(range(1, 100))
    monkeypatch.setattr(module, "randn_tensor", lambda shape, **a: noise(next(streams)).to(a.get("dtype") or torch.float32),
                        raising=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe([CAPTIONS[0], CAPTIONS[1]], num_inference_steps=k, latents=noise(0).clone(), output_type="latent", **kw).images


@pytest.mark.parametrize("family", ["sdxl", "sd15"])
def test_tcd_lora_card_equals_the_pipeline(folders, teachers, tmp_path, monkeypatch, family):
    """A TCD card (gamma 0.3, hybrid) with a LoRA: the pipeline with the LoRA fused, TCDScheduler, eta = 0.3,
    no CFG, on the same noise."""
    import diffusers

    from odebench.ode.noise import NoiseBank, SampleNoise
    from odebench.students.kinds import load_student

    teacher = teachers[family]
    write_lcm_lora(teacher.unet, tmp_path / "lora")
    card = write_card(tmp_path / "tcd.json", kind="hybrid", weights={"lora": "lora"}, ode=None,
                      scheduler={"class": "TCDScheduler", "steps": 3, "options": {"gamma": 0.3}})
    student, note = load_student(str(card), teacher)  # hybrid: an undeclared ODE is a note, not an error
    assert "declares no single teacher ODE" in note and student.kind == "hybrid" and student.nfe() == 3
    noise = SampleNoise(NoiseBank(5, teacher.shape), range(2))
    ours = student.sample(torch.zeros(2, *teacher.shape), torch.tensor([0, 1]), noise)
    cls = getattr(diffusers, teacher.pipeline)
    pipe = cls.from_pretrained(str(folders[family]), local_files_only=True)
    pipe.load_lora_weights(str(tmp_path / "lora"))
    pipe.fuse_lora()
    theirs = _patched_pipeline_run(monkeypatch, pipe, diffusers.TCDScheduler.from_config(pipe.scheduler.config), noise, 3,
                                   guidance_scale=1.0, eta=0.3)
    assert float(ours.std()) > 0.1
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_lcm_unet_card_embeds_guidance_and_has_the_lcm_consistency_function(folders, teachers, tmp_path, monkeypatch):
    """A full LCM UNet with a guidance embedding (LCM-SDXL): the card's guidance_scale 8 is embedded (w - 1 = 7),
    as the pipeline does, which then runs no CFG; f(x, sigma_max) equals the one-step sample."""
    import diffusers

    from odebench.ode.noise import NoiseBank, SampleNoise
    from odebench.students.kinds import load_student
    from odebench.teachers.base import Guidance

    teacher = teachers["sdxl"].with_guidance(Guidance(8.0, "imagen", "zeros"))
    write_lcm_sdxl_unet(tmp_path / "lcm-unet")
    card = write_card(tmp_path / "lcm.json", weights={"unet": "lcm-unet"}, guidance_scale=8.0,
                      ode={"guidance": {"w": 8.0, "form": "imagen", "uncond": "zeros"}})
    student, note = load_student(str(card), teacher)
    assert note is None and student.embed_w == 7.0 and student.cfg is None and student.curve
    noise = SampleNoise(NoiseBank(2, teacher.shape), range(2))
    cond = torch.tensor([0, 1])  # the pipeline's prompts below: CAPTIONS[0], CAPTIONS[1]
    ours = student.sample(torch.zeros(2, *teacher.shape), cond, noise)
    unet = diffusers.UNet2DConditionModel.from_pretrained(str(tmp_path / "lcm-unet"))
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(str(folders["sdxl"]), unet=unet, local_files_only=True)
    theirs = _patched_pipeline_run(monkeypatch, pipe, diffusers.LCMScheduler.from_config(pipe.scheduler.config), noise, 4,
                                   guidance_scale=8.0)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    # the consistency function: LCMScheduler's one-step denoised output at t = 999 (sigma_max)
    x_start = teacher.initial_state(noise(0))
    one = student.sample(x_start, cond, noise, steps=1)
    torch.testing.assert_close(student(x_start, teacher.sigma_max, cond), one, rtol=1e-4, atol=1e-4)


def test_card_run_needs_no_other_flag_and_reports_the_kind(folders, tmp_path):
    """`odebench run --student card.json`: the card names its teacher (relative to the card) and its ODE; a
    distribution student's result and report say its ODE error is descriptive."""
    import shutil

    from typer.testing import CliRunner

    from odebench.cli import app

    shutil.copytree(folders["sd15"], tmp_path / "teacher")
    card = write_card(tmp_path / "dmd.json", kind="distribution", teacher="teacher", weights=None, name="dmd-like",
                      scheduler={"class": "LCMScheduler", "timesteps": [999, 749, 499, 249]},
                      ode={"guidance": {"w": 3.0, "form": "imagen", "uncond": "empty-prompt"}})
    runner = CliRunner()
    res = runner.invoke(app, ["run", "--student", str(card), "--samples", "2", "--floor-samples", "0", "--curve-points", "2",
                              "--curve-samples", "2", "--rtol", "1e-3", "--atol", "1e-3", "--metrics", "ode",
                              "--device", "cpu", "--out", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "runs" / "dmd-like" / "result.json").read_text())
    assert r["teacher"]["origin"] == f"card {card}" and r["teacher"]["guidance"]["imagen_w"] == 3.0
    assert r["student"]["kind"] == "distribution" and r["student"]["format"] == "card"
    assert r["student"]["timesteps"] == [999.0, 749.0, 499.0, 249.0] and r["nfe"]["student_per_sample"] == 4
    assert any(f.startswith("descriptive-ode-error") for f in r["flags"]) and not any(f.startswith("teacher-mismatch") for f in r["flags"])
    assert r["curves"]["ode_mse_vs_sigma"]["n"] == 2  # LCMScheduler: the LCM consistency function
    rep = runner.invoke(app, ["report", "--runs-dir", str(tmp_path / "runs"), "-f", "json"])
    assert rep.exit_code == 0, rep.output
    data = json.loads(rep.output)
    assert data["runs"][0]["kind"] == "distribution" and "ODE error is descriptive" in data["notes"][0]


def test_bad_cards_are_one_line_errors(teachers, tmp_path):
    from odebench.students.kinds import load_student

    teacher = teachers["sd15"]
    cases = [({"kind": "adversarial"}, "\"kind\" must be one of"), ({"extra": 1}, "unknown field"),
             ({"weights": {"lora": "a", "unet": "b"}}, "\"weights\" must be"),
             ({"scheduler": {"steps": 4}}, "\"scheduler\" must be"),
             ({"scheduler": {"class": "LCMScheduler", "steps": 4, "options": {"nope": 1}}}, "has no option 'nope'"),
             ({"ode": None}, "declares no single teacher ODE.*--allow-mismatch"),
             ({"weights": {"lora": "missing-lora.safetensors"}, "ode": {"guidance": teacher.guidance.to_dict()}}, "weights 'missing-lora.safetensors' not found")]
    for fields, msg in cases:
        card = write_card(tmp_path / "bad.json", **fields)
        with pytest.raises(OdebenchError, match=msg):
            load_student(str(card), teacher)
    gmm_card = write_card(tmp_path / "ok.json", ode={"guidance": teacher.guidance.to_dict()})
    from odebench.teachers import load_teacher

    with pytest.raises(OdebenchError, match="text-to-image UNet teacher"):
        load_student(str(gmm_card), load_teacher("gmm"))
