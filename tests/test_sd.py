"""The SD 1.x / 2.x family on tiny random pipelines (tests/sd_tiny.py) loaded through the real path, checked
against diffusers' StableDiffusionPipeline and closed forms (a zero-output network)."""
import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from sd_tiny import build_tiny_sd  # noqa: E402
from sdxl_tiny import CAPTIONS, LATENT  # noqa: E402

from odebench.errors import OdebenchError  # noqa: E402
from odebench.teachers.base import Guidance  # noqa: E402


pytestmark = pytest.mark.usefixtures("no_network")  # conftest: a socket connect fails the test


@pytest.fixture(scope="session")
def sd_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-sd")
    return {kind: build_tiny_sd(root / kind, kind) for kind in ("sd15", "sd21v", "zsnr")}


@pytest.fixture(scope="session")
def pipes(sd_dirs):
    from diffusers import StableDiffusionPipeline

    return {k: StableDiffusionPipeline.from_pretrained(str(v), local_files_only=True) for k, v in sd_dirs.items()}


def _teacher(path, **kw):
    from odebench.teachers import load_teacher

    t = load_teacher(str(path), device="cpu", **kw)
    t.set_prompts(CAPTIONS)
    return t


def test_family_loads_folders_hub_ids_and_presets(sd_dirs, tmp_path, monkeypatch):
    from odebench.teachers.family import family_for_spec
    from odebench.teachers.sd import SDTeacher

    assert [family_for_spec(str(d)).name for d in sd_dirs.values()] == ["sd", "sd", "sd"]
    eps, v, z = (_teacher(sd_dirs[k]) for k in ("sd15", "sd21v", "zsnr"))
    assert isinstance(eps, SDTeacher) and eps.prediction == "epsilon" and v.prediction == "v_prediction"
    assert eps.guidance == Guidance(7.5, "imagen", "empty-prompt")  # the pipeline's default CFG
    assert eps.shape == (4, LATENT, LATENT) and (eps.height, eps.width) == (16, 16)
    assert 14.6 < v.sigma_max < 14.7 and not v.zero_terminal_snr
    # zero terminal SNR: abar_T = 0 is held at 2^-24 (sigma_max = 4096), recorded in the ODE identity
    assert z.zero_terminal_snr and z.sigma_max == pytest.approx(math.sqrt((1 - 2 ** -24) / 2 ** -24))
    assert "zero_terminal_snr" in z.ode_identity() and z.fingerprint() != v.fingerprint()
    assert z.schedule["rescale_betas_zero_snr"] is True
    # presets and hub ids resolve from $ODEBENCH_WEIGHTS/<name> (as from the HF cache), never download
    (tmp_path / "stable-diffusion-v1-5").symlink_to(sd_dirs["sd15"])
    monkeypatch.setenv("ODEBENCH_WEIGHTS", str(tmp_path))
    from odebench.teachers import load_teacher

    preset = load_teacher("sd15", device="cpu", height=32, width=16, dtype="bf16")
    assert preset.name == "sd15" and preset.shape == (4, 16, 8) and preset.unet_dtype == torch.bfloat16
    with pytest.raises(OdebenchError, match="stabilityai/stable-diffusion-2-1.*nothing is downloaded"):
        load_teacher("sd21")
    with pytest.raises(OdebenchError, match="SD's unconditional branch is zeros or empty-prompt"):
        eps.with_guidance(Guidance(2.0, "imagen", "nonsense"))


@pytest.mark.parametrize("kind", ["sd15", "sd21v"])
@pytest.mark.parametrize("uncond", ["empty", "zeros"])
def test_prompt_encoding_matches_stable_diffusion_encode_prompt(sd_dirs, pipes, kind, uncond):
    teacher = _teacher(sd_dirs[kind], uncond=uncond)
    with torch.no_grad():
        pe, ne = pipes[kind].encode_prompt([CAPTIONS[1], CAPTIONS[0], CAPTIONS[1]], "cpu", 1, True)
    ehs, pooled = teacher.condition_inputs(torch.tensor([1, 0, 5]), 3)  # index 5 = prompt 5 mod 4 = 1
    assert pooled is None  # SD has no pooled embedding and no micro-conditioning
    torch.testing.assert_close(ehs, pe, rtol=1e-5, atol=1e-6)
    ue, _ = teacher.condition_inputs(None, 3)
    if uncond == "empty":
        torch.testing.assert_close(ue, ne, rtol=1e-5, atol=1e-6)
    else:
        assert float(ue.abs().max()) == 0.0 and ue.shape == ne.shape


def test_v_prediction_denoiser_against_a_direct_unet_call(sd_dirs, pipes):
    """x0 = sqrt(abar) x_t - sqrt(1 - abar) v(x_t, t) at an integer t, CFG v_u + w (v_c - v_u) (diffusers' algebra)."""
    teacher = _teacher(sd_dirs["sd21v"])
    pipe = pipes["sd21v"]
    x = torch.randn(3, 4, LATENT, LATENT) * 2
    t = 600
    s = float(teacher.sigmas[t])
    cond = torch.tensor([0, 1, 2])
    with torch.no_grad():
        pe, ne = pipe.encode_prompt([CAPTIONS[i] for i in cond], "cpu", 1, True)
        a = pipe.scheduler.alphas_cumprod[t].double()
        x_t = x / math.sqrt(1 + s * s)
        v_c = pipe.unet(x_t, t, encoder_hidden_states=pe).sample
        v_u = pipe.unet(x_t, t, encoder_hidden_states=ne).sample
    v = v_u + 7.5 * (v_c - v_u)
    expect = a.sqrt() * x_t - (1 - a).sqrt() * v
    torch.testing.assert_close(teacher.denoise(x, torch.full((3,), s), cond), expect.float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prediction,kind", [("v_prediction", "sd21v"), ("v_prediction", "zsnr"), ("epsilon", "sd15"),
                                             ("sample", "sd21v")])
def test_zero_output_network_has_closed_form_references(tmp_path, prediction, kind):
    """A UNet whose output is exactly 0. v-prediction: D = c_in^2 x = x/(1 + sigma^2), the exact denoiser of
    N(0, I) data, whose PF-ODE flow is x(sigma) = x(sigma_0) sqrt(1 + sigma^2)/sqrt(1 + sigma_0^2). From
    x(sigma_max) = z sqrt(1 + sigma_max^2) the reference ends at D(x(sigma_min), sigma_min) = z/sqrt(1 + sigma_min^2)
    and ddim:1 is D(x(sigma_max), sigma_max) = z/sqrt(1 + sigma_max^2) (= sqrt(abar_T) z; 2^-12 z at zero terminal
    SNR). epsilon: D = x, dx/dsigma = 0, both return x(sigma_max). sample: D = 0, both return 0."""
    from odebench.ode.reference import solve_reference
    from odebench.ode.spec import SolverSpec
    from odebench.students.solvers import SolverStudent

    root = build_tiny_sd(tmp_path / "zero", kind, zero_unet=True)
    cfg = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({**cfg, "prediction_type": prediction}))
    teacher = _teacher(root)
    z = torch.randn(3, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(0))
    x_start = teacher.initial_state(z)
    cond = torch.tensor([0, 1, 2])
    ref = solve_reference(teacher, x_start, cond, SolverSpec(rtol=1e-5, atol=1e-5, dtype="float32")).x0
    one = SolverStudent(teacher, "ddim", 1).sample(x_start, cond, None)
    s_min, s_max = teacher.sigma_min, teacher.sigma_max
    if prediction == "v_prediction":
        torch.testing.assert_close(ref, z / math.sqrt(1 + s_min ** 2), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(one, z / math.sqrt(1 + s_max ** 2), rtol=1e-5, atol=1e-6)
        abar_t = 2 ** -24 if kind == "zsnr" else float(teacher.alphas_cumprod[-1])
        torch.testing.assert_close(one, z * math.sqrt(abar_t), rtol=1e-5, atol=1e-6)
    elif prediction == "epsilon":
        # the reference's output is torchdiffeq's step polynomial evaluated at its end: float32 round-off only
        torch.testing.assert_close(ref, x_start, rtol=1e-5, atol=1e-5)
        assert torch.equal(one, x_start)
    else:
        assert float(ref.abs().max()) == 0.0 and float(one.abs().max()) == 0.0


@pytest.mark.slow
def test_reference_is_the_limit_of_ddim_at_first_order(sd_dirs):
    """DDIM on the 1-indexed N-point grid (N = 250, 500, 1000) approaches the converged reference with the
    error halving as N doubles (first order), on the random v-prediction pipeline."""
    from odebench.ode.paper_grid import grid_for, solve_on_grid
    from odebench.ode.reference import solve_reference
    from odebench.ode.spec import SolverSpec

    teacher = _teacher(sd_dirs["sd21v"]).with_guidance(Guidance(1.0, "imagen", "empty-prompt"))
    z = torch.randn(1, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(1))
    x_start, cond = teacher.initial_state(z), torch.tensor([2])
    ref = solve_reference(teacher, x_start, cond, SolverSpec(rtol=1e-5, atol=1e-5, dtype="float32")).x0
    errs = [float((solve_on_grid(teacher, x_start, torch.zeros(1, dtype=torch.long), grid_for(teacher, n), cond) - ref)
                  .pow(2).mean().sqrt()) for n in (250, 500, 1000)]
    ratios = [errs[0] / errs[1], errs[1] / errs[2]]
    assert all(1.6 < r < 2.6 for r in ratios), (errs, ratios)  # measured 2.04 and 2.20
    assert errs[2] < 2e-3 * float(ref.pow(2).mean().sqrt())


def test_odebench_run_on_tiny_sd_end_to_end(sd_dirs, tmp_path, monkeypatch):
    """`odebench run --teacher SD-FOLDER` with --height/--width, --dtype, --prompts, guidance and image metrics."""
    from typer.testing import CliRunner

    from odebench.cli import app
    from tiny_backbones import write_tiny_clip, write_tiny_inception

    monkeypatch.setenv("ODEBENCH_WEIGHTS", str(tmp_path / "no-weights"))
    write_tiny_inception(tmp_path / "inception.pt")
    _, clip_path = write_tiny_clip(tmp_path)
    (tmp_path / "captions.txt").write_text("\n".join(CAPTIONS[:2]) + "\n")
    res = CliRunner().invoke(app, [
        "run", "--teacher", str(sd_dirs["sd21v"]), "--prompts", str(tmp_path / "captions.txt"), "--samples", "3",
        "--height", "24", "--width", "16", "--dtype", "fp32", "--guidance", "3", "--uncond-embeddings", "zeros",
        "--student", "ddim:2", "--student", "ref", "--curve-points", "2", "--curve-samples", "2", "--floor-samples", "2",
        "--rtol", "1e-3", "--atol", "1e-3", "--device", "cpu", "--fd-bootstrap", "0", "--metrics", "fid,clip_score",
        "--fid-weights", str(tmp_path / "inception.pt"), "--clip-weights", str(clip_path), "--clip-arch", "odebench-tiny-clip",
        "--out", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "runs" / "ddim-2" / "result.json").read_text())
    t = r["teacher"]
    assert t["spec"] == str(sd_dirs["sd21v"]) and t["prediction"] == "v_prediction" and t["shape"] == [4, 12, 8]
    assert (t["height"], t["width"]) == (24, 16) and t["guidance"] == {"w": 3.0, "form": "imagen", "uncond": "zeros", "imagen_w": 3.0}
    assert {"ode_mse@ref", "ode_mse@ddim100", "fid@teacher", "clip_score"} <= set(r["metrics"])
    assert "consistent with sigma" in r["reference"]["ddim100"]["unet_timesteps"]  # SD's paper grid default
    assert r["nfe"]["student_teacher_passes"] == 2 * 2 * 3 and r["conditioning"]["num_prompts"] == 2
    assert (tmp_path / "runs" / "ddim-2" / "samples.png").is_file()
