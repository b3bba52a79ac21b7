"""SANA on a tiny random SanaPipeline (tests/flow_tiny.py: Gemma-2, SanaTransformer2DModel, AutoencoderDC, the
DPM-Solver flow scheduler) loaded through the real path, checked against diffusers' SanaPipeline: prompt encoding
with the complex human instruction, scheduler rows = the pipeline's latents on the same noise (with and without a
learned-sigma head), the reference as the limit of Euler at first order, decoding, an end-to-end run."""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from flow_tiny import euler_convergence_ratios, build_tiny_sana  # noqa: E402
from sdxl_tiny import CAPTIONS  # noqa: E402

from odebench.teachers.base import Guidance  # noqa: E402

PX = 32  # SanaPipeline asks for multiples of 32
LENGTH = 16  # max_sequence_length the tests use (SanaPipeline's default: 300)


pytestmark = pytest.mark.usefixtures("no_network")  # conftest: a socket connect fails the test


@pytest.fixture(scope="module")
def sana_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-sana")
    return {"sana": build_tiny_sana(root / "sana"), "sana-sigma": build_tiny_sana(root / "sana-sigma", 5, learned_sigma=True)}


@pytest.fixture(scope="module")
def pipes(sana_dirs):
    from diffusers import SanaPipeline

    out = {}
    for k, v in sana_dirs.items():
        out[k] = SanaPipeline.from_pretrained(str(v), local_files_only=True)
        out[k].set_progress_bar_config(disable=True)
    return out


def _teacher(path, **kw):
    from odebench.teachers import load_teacher

    t = load_teacher(str(path), device="cpu", height=PX, width=PX, max_sequence_length=LENGTH, **kw)
    t.set_prompts(CAPTIONS)
    return t


def _noise(n, shape, seed):
    from odebench.ode.noise import NoiseBank, SampleNoise

    noise = SampleNoise(NoiseBank(seed, shape), range(n))
    return noise(0), noise


def _row(spec, teacher):
    from odebench.students.kinds import load_student

    return load_student(spec, teacher)[0]


def test_sana_is_its_own_family_with_the_pipelines_conventions(sana_dirs):
    from odebench.teachers.family import family_for_spec

    t = _teacher(sana_dirs["sana"])
    assert family_for_spec(str(sana_dirs["sana"])).name == "sana" and type(t).__name__ == "SanaTeacher"
    assert t.shape == (4, PX // 2, PX // 2)  # AutoencoderDC's factor (2 here: two levels; 32 in SANA)
    assert t.guidance == Guidance(4.5, "imagen", "empty-prompt")  # SanaPipeline's guidance_scale, CFG on velocities
    cfg = t.scheduler_config()
    assert cfg["flow_shift"] == cfg["shift"] == 3.0 and cfg["prediction_type"] == "flow_prediction"
    assert t.describe()["vae"] == "AutoencoderDC" and t.describe()["complex_human_instruction"]


def test_sana_prompt_encoding_equals_encode_prompt(sana_dirs, pipes):
    """The instruction-prefixed prompts, the first + last L-1 token selection and the masks; the negative prompt
    without the instruction. The instruction is longer than L here, so the selection matters."""
    teacher = _teacher(sana_dirs["sana"])
    chi = list(teacher.complex_human_instruction)
    pe, pm, ne, nm = pipes["sana"].encode_prompt(CAPTIONS[:3], True, max_sequence_length=LENGTH, complex_human_instruction=chi)
    e, m = teacher.embeddings(CAPTIONS[:3])
    ue, um = teacher.uncond_embeddings(3)
    for ours, theirs in ((e, pe.float()), (m, pm), (ue, ne.float()), (um, nm)):
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert pe.shape[1] == LENGTH and not torch.allclose(e[0], ue[0])
    # without the instruction the encoding differs: the test would catch a teacher that dropped it
    plain, _, _, _ = pipes["sana"].encode_prompt(CAPTIONS[:3], False, max_sequence_length=LENGTH)
    assert not torch.allclose(plain.float(), e, atol=1e-3)
    # the pipeline lower-cases and strips (clean_caption off)
    pe, pm, _, _ = pipes["sana"].encode_prompt(["  A Red FOX "], False, max_sequence_length=LENGTH, complex_human_instruction=chi)
    e, m = teacher.embeddings(["  A Red FOX "])
    torch.testing.assert_close(e, pe.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["sana", "sana-sigma"])
@pytest.mark.parametrize("k,w", [(1, 1.0), (4, 4.5)])
def test_sana_rows_equal_the_pipeline(sana_dirs, pipes, kind, k, w):
    """DPMSolverMultistepScheduler:K (SANA's own sampler, flow sigmas, flow_shift 3) on the teacher = SanaPipeline's
    latents on the same noise, CFG with the empty negative prompt; a learned-sigma head keeps the first half."""
    teacher = _teacher(sana_dirs[kind]).with_guidance(Guidance(w))
    z, noise = _noise(2, teacher.shape, k)
    ours = _row(f"DPMSolverMultistepScheduler:{k}", teacher).sample(teacher.initial_state(z), torch.tensor([0, 1]), noise)
    theirs = pipes[kind](prompt=CAPTIONS[:2], num_inference_steps=k, guidance_scale=w, latents=z.clone(), output_type="latent",
                         max_sequence_length=LENGTH, height=PX, width=PX, use_resolution_binning=False).images
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_sana_flow_euler_row_equals_the_pipeline_with_that_scheduler(sana_dirs, pipes):
    """flow-euler:K takes the teacher's shift from flow_shift: SanaPipeline with FlowMatchEulerDiscreteScheduler(shift 3)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SanaPipeline

    teacher = _teacher(sana_dirs["sana"]).with_guidance(Guidance(2.0))
    z, noise = _noise(2, teacher.shape, 3)
    ours = _row("flow-euler:3", teacher).sample(teacher.initial_state(z), torch.tensor([0, 1]), noise)
    p = pipes["sana"]
    euler = SanaPipeline(tokenizer=p.tokenizer, text_encoder=p.text_encoder, vae=p.vae, transformer=p.transformer,
                         scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    euler.set_progress_bar_config(disable=True)
    theirs = euler(prompt=CAPTIONS[:2], num_inference_steps=3, guidance_scale=2.0, latents=z.clone(), output_type="latent",
                   max_sequence_length=LENGTH, height=PX, width=PX, use_resolution_binning=False).images
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_sana_reference_is_the_limit_of_euler_at_first_order(sana_dirs):
    teacher = _teacher(sana_dirs["sana"]).with_guidance(Guidance(2.0))
    errs, ratios = euler_convergence_ratios(teacher)
    assert all(1.6 < r < 2.6 for r in ratios), (errs, ratios)


def test_sana_decode_equals_the_pipeline(sana_dirs, pipes):
    """Scaled DC-AE latents -> images as SanaPipeline decodes them (latents / scaling_factor)."""
    teacher = _teacher(sana_dirs["sana"])
    x = torch.randn(2, *teacher.shape, generator=torch.Generator().manual_seed(0))
    ours = teacher.decode(x)
    vae = pipes["sana"].vae
    with torch.no_grad():
        img = vae.decode(x / vae.config.scaling_factor, return_dict=False)[0]
    theirs = pipes["sana"].image_processor.postprocess(img, output_type="np")
    assert ours.shape == (2, PX, PX, 3) and ours.dtype.name == "uint8"
    assert abs(ours.astype(float) / 255 - theirs).max() < 1.5 / 255


def test_odebench_run_on_tiny_sana_end_to_end(sana_dirs, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from odebench.cli import app

    monkeypatch.setenv("ODEBENCH_WEIGHTS", str(tmp_path / "no-weights"))
    (tmp_path / "captions.txt").write_text("\n".join(CAPTIONS[:2]) + "\n")
    res = CliRunner().invoke(app, [
        "run", "--teacher", str(sana_dirs["sana"]), "--prompts", str(tmp_path / "captions.txt"), "--samples", "2",
        "--height", str(PX), "--width", str(PX), "--student", "DPMSolverMultistepScheduler:4", "--student", "flow-euler:2",
        "--student", "ref", "--curve-points", "2", "--curve-samples", "2", "--floor-samples", "2", "--rtol", "1e-3",
        "--atol", "1e-3", "--device", "cpu", "--metrics", "none", "--out", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "runs" / "flow-euler-2" / "result.json").read_text())
    t = r["teacher"]
    assert t["shape"] == [4, 16, 16] and "rectified flow" in t["process"] and t["grid"]["shift"] == 3.0
    assert r["teacher"]["guidance"]["imagen_w"] == 4.5
    assert (tmp_path / "runs" / "flow-euler-2" / "samples.png").is_file()
    dpm = json.loads((tmp_path / "runs" / "DPMSolverMultistepScheduler-4" / "result.json").read_text())
    assert dpm["metrics"]["ode_mse@ref"]["value"] > 0
