"""Student cards of flow teachers (odebench/students/card.py) on the tiny SD3 and FLUX.1 pipelines (tests/flow_tiny.py):
LoRAs in the peft and diffusers key layouts fused as peft merges them; a LoRA card and a full-transformer card sample
what StableDiffusion3Pipeline / FluxPipeline do with that LoRA or transformer on the same noise (1e-4); a card run
needs no other flag; one-line errors for cards that cannot run on the teacher."""
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from flow_tiny import T5_LENGTH, build_tiny_flux, build_tiny_sd3, tiny_flux_transformer, write_flow_lora  # noqa: E402
from sdxl_tiny import CAPTIONS  # noqa: E402

from odebench.errors import OdebenchError  # noqa: E402

PX = 16


pytestmark = pytest.mark.usefixtures("no_network")  # conftest: a socket connect fails the test


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow-cards")
    return {"sd3": build_tiny_sd3(root / "sd3"), "flux-dev": build_tiny_flux(root / "flux-dev")}


@pytest.fixture(scope="module")
def teachers(dirs):
    from odebench.teachers import load_teacher

    out = {}
    for k, v in dirs.items():
        out[k] = load_teacher(str(v), device="cpu", height=PX, width=PX, max_sequence_length=T5_LENGTH)
        out[k].set_prompts(CAPTIONS)
    return out


PIPELINES = {"sd3": "StableDiffusion3Pipeline", "flux-dev": "FluxPipeline"}


def write_card(path: Path, **fields) -> Path:
    card = {"format": "odebench-student-card", "version": 1, "kind": "hybrid",
            "scheduler": {"class": "FlowMatchEulerDiscreteScheduler", "steps": 3}, "ode": None, **fields}
    path.write_text(json.dumps(card))
    return path


def _noise(n, shape, seed):
    from odebench.ode.noise import NoiseBank, SampleNoise

    noise = SampleNoise(NoiseBank(seed, shape), range(n))
    return noise(0), noise


def _pipe(dirs, family, **components):
    import diffusers

    pipe = getattr(diffusers, PIPELINES[family]).from_pretrained(str(dirs[family]), local_files_only=True, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pipeline_latents(pipe, family, z, k, guidance_scale):
    from odebench.teachers.flow_pipelines import pack_latents, unpack_latents

    latents = pack_latents(z) if family == "flux-dev" else z.clone()
    out = pipe(prompt=CAPTIONS[:2], num_inference_steps=k, guidance_scale=guidance_scale, latents=latents,
               output_type="latent", max_sequence_length=T5_LENGTH, height=PX, width=PX).images
    return unpack_latents(out, *z.shape[2:]) if family == "flux-dev" else out


@pytest.mark.parametrize("family,layout", [("sd3", "peft"), ("sd3", "released"), ("flux-dev", "peft"), ("flux-dev", "released"),
                                           ("flux-dev", "alphas")])
def test_flow_lora_loads_in_every_key_layout(teachers, tmp_path, family, layout):
    """peft keys with lora_alpha != rank in the file's metadata, the old lora.down/up names, and (FLUX) per-module alpha
    tensors != rank: the fused transformer equals peft's own merge of the same LoRA and differs from the teacher's."""
    from odebench.students.kinds import load_student

    teacher = teachers[family]
    _, merged = write_flow_lora(teacher.transformer, tmp_path / "lora", PIPELINES[family],
                                alpha=None if layout == "released" else 8, layout=layout)
    student, note = load_student(str(write_card(tmp_path / "card.json", weights={"lora": "lora"})), teacher)
    assert student.format == "card" and student.kind == "hybrid" and "declares no single teacher ODE" in note
    got = student.transformer.state_dict()
    assert set(got) == set(merged)
    for k, v in merged.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert any(not torch.equal(v, teacher.transformer.state_dict()[k]) for k, v in merged.items())


@pytest.mark.parametrize("family,gs", [("sd3", 4.0), ("sd3", 1.0), ("flux-dev", 3.5)])
def test_lora_card_equals_the_pipeline_with_the_lora_fused(dirs, teachers, tmp_path, family, gs):
    """A LoRA card (scale 0.5) with the card's guidance_scale (SD3: CFG on velocities with the empty prompt; FLUX.1-dev:
    the embedded guidance input) = the pipeline after load_lora_weights + fuse_lora(lora_scale=0.5), same noise; the
    card's f(x_1, 1) is its one-step sample."""
    from odebench.students.kinds import load_student

    teacher = teachers[family]
    write_flow_lora(teacher.transformer, tmp_path / "lora", PIPELINES[family], alpha=8)
    card = write_card(tmp_path / "card.json", weights={"lora": "lora", "scale": 0.5}, guidance_scale=gs)
    student, _ = load_student(str(card), teacher)
    assert (student.cfg, student.embedded_g) == ((gs if gs > 1 else None, None) if family == "sd3" else (None, gs))
    z, noise = _noise(2, teacher.shape, 4)
    cond = torch.tensor([0, 1])
    ours = student.sample(teacher.initial_state(z), cond, noise)
    pipe = _pipe(dirs, family)
    pipe.load_lora_weights(str(tmp_path / "lora"))
    pipe.fuse_lora(lora_scale=0.5)
    theirs = _pipeline_latents(pipe, family, z, 3, gs)
    assert student.nfe() == 3 and float((ours - _pipeline_latents(_pipe(dirs, family), family, z, 3, gs)).abs().max()) > 1e-2
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    one = student.sample(z, cond, noise, steps=1)
    torch.testing.assert_close(student(z, 1.0, cond), one, rtol=1e-5, atol=1e-5)


def test_full_transformer_card_schnell_style_student_of_flux_dev(dirs, teachers, tmp_path):
    """FLUX.1-schnell as a student of FLUX.1-dev: a full transformer without the guidance input (its guidance_scale is
    ignored, as FluxPipeline ignores it), shift 1 and no dynamic shift, 2 steps = FluxPipeline with that transformer."""
    import diffusers

    from odebench.students.kinds import load_student

    teacher = teachers["flux-dev"]
    tiny_flux_transformer(seed=11, guidance_embeds=False).save_pretrained(str(tmp_path / "schnell" / "transformer"))
    card = write_card(tmp_path / "schnell.json", kind="distribution", weights={"transformer": "schnell"}, guidance_scale=0.0,
                      scheduler={"class": "FlowMatchEulerDiscreteScheduler", "steps": 2,
                                 "config": {"use_dynamic_shifting": False, "shift": 1.0}})
    student, _ = load_student(str(card), teacher)
    assert student.embedded_g is None and student.cfg is None and student.describe()["timesteps"] == [1000.0, 500.0]
    z, noise = _noise(2, teacher.shape, 6)
    ours = student.sample(z, torch.tensor([0, 1]), noise)
    transformer = diffusers.FluxTransformer2DModel.from_pretrained(str(tmp_path / "schnell" / "transformer"))
    pipe = _pipe(dirs, "flux-dev", transformer=transformer)
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, use_dynamic_shifting=False,
                                                                           shift=1.0)
    torch.testing.assert_close(ours, _pipeline_latents(pipe, "flux-dev", z, 2, 0.0), rtol=1e-4, atol=1e-4)


def test_flow_card_run_needs_no_other_flag(dirs, tmp_path):
    """`odebench run --student card.json` on a flow card: the teacher beside the card, its ODE, its kind; the flow
    consistency function gives the per-t error curve; the hybrid student's ODE error is flagged descriptive."""
    from typer.testing import CliRunner

    from odebench.cli import app
    from odebench.teachers import load_teacher

    shutil.copytree(dirs["sd3"], tmp_path / "teacher")
    t = load_teacher(str(tmp_path / "teacher"), device="cpu")
    write_flow_lora(t.transformer, tmp_path / "lora", "StableDiffusion3Pipeline")
    card = write_card(tmp_path / "hyper.json", teacher="teacher", weights={"lora": "lora", "scale": 0.125}, name="hyper-like",
                      guidance_scale=3.0, ode={"guidance": {"w": 3.0, "form": "imagen", "uncond": "empty-prompt"}},
                      scheduler={"class": "FlowMatchEulerDiscreteScheduler", "steps": 2})
    res = CliRunner().invoke(app, ["run", "--student", str(card), "--samples", "2", "--floor-samples", "0", "--curve-points", "2",
                                   "--curve-samples", "2", "--rtol", "1e-3", "--atol", "1e-3", "--metrics", "ode",
                                   "--device", "cpu", "--out", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "runs" / "hyper-like" / "result.json").read_text())
    assert r["teacher"]["origin"] == f"card {card}" and r["teacher"]["guidance"]["imagen_w"] == 3.0
    assert r["student"]["kind"] == "hybrid" and r["student"]["format"] == "card" and r["student"]["cfg"] == 3.0
    assert r["nfe"]["student_per_sample"] == 2 and r["curves"]["ode_mse_vs_sigma"]["n"] == 2
    assert any(f.startswith("descriptive-ode-error") for f in r["flags"])


def test_bad_flow_cards_are_one_line_errors(dirs, teachers, tmp_path):
    from odebench.students.kinds import load_student
    from odebench.teachers import load_teacher

    sd3 = teachers["sd3"]
    (tmp_path / "unet").mkdir()
    cases = [(sd3, {"weights": {"unet": "unet"}}, "full unet student cannot run"),
             (sd3, {"scheduler": {"class": "DDIMScheduler", "steps": 2}}, "cannot integrate a velocity field"),
             (sd3, {"scheduler": {"class": "SCMScheduler", "steps": 2}}, "takes TrigFlow's F"),
             (sd3, {"weights": {"transformer": str(dirs["sd3"] / "vae")}}, "not a flow transformer"),
             (sd3, {"weights": {"transformer": str(dirs["flux-dev"])}}, "cannot run on the SD3Transformer2DModel"),
             (sd3, {"weights": {"lora": str(dirs["sd3"] / "transformer" / "config.json")}}, "only .safetensors"),
             (sd3, {"parameterisation": {"kind": "trigflow", "sigma_data": -1}}, "\"parameterisation\" must be"),
             (load_teacher("gmm-flow"), {"weights": None, "guidance_scale": 2.0}, "guidance_scale\" does not apply"),
             (load_teacher("gmm-flow"), {"weights": {"lora": "x"}}, "an analytic flow teacher"),
             (load_teacher("gmm-flow"), {"weights": None, "parameterisation": {"kind": "trigflow"}}, "sampled by SCMScheduler")]
    # SD3's pipeline refuses a LoRA file with per-module alphas (keys without "lora"); so does the card
    write_flow_lora(sd3.transformer, tmp_path / "alphas", "StableDiffusion3Pipeline", alpha=8, layout="alphas")
    cases.append((sd3, {"weights": {"lora": "alphas"}}, "are not LoRA weights"))
    for teacher, fields, msg in cases:
        with pytest.raises(OdebenchError, match=msg):
            load_student(str(write_card(tmp_path / "bad.json", **fields)), teacher)


@pytest.mark.parametrize("k", [1, 3])
def test_flow_card_on_the_analytic_teacher_is_the_row(tmp_path, k):
    """A card with "weights": null on gmm-flow samples the teacher's own velocity: the FlowMatchEuler card equals the
    flow-euler:K row on the same noise."""
    from odebench.students.kinds import load_student
    from odebench.teachers import load_teacher

    teacher = load_teacher("gmm-flow")
    card, _ = load_student(str(write_card(tmp_path / "c.json", weights=None,
                                          scheduler={"class": "FlowMatchEulerDiscreteScheduler", "steps": k})), teacher)
    row, _ = load_student(f"flow-euler:{k}", teacher)
    z, noise = _noise(8, teacher.shape, 2)
    torch.testing.assert_close(card.sample(z, None, noise), row.sample(z, None, noise))
    assert card.nfe() == row.nfe() == k
