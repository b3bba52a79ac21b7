"""SD3 and FLUX.1 on tiny random pipelines (tests/flow_tiny.py) loaded through the real path, checked against
diffusers' StableDiffusion3Pipeline and FluxPipeline: prompt encoding, scheduler rows = the pipeline's latents
on the same noise, the reference as the limit of Euler at first order, an end-to-end run."""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from flow_tiny import euler_convergence_ratios, T5_LENGTH, build_tiny_flux, build_tiny_sd3  # noqa: E402
from sdxl_tiny import CAPTIONS  # noqa: E402

from odebench.errors import OdebenchError  # noqa: E402
from odebench.teachers.base import Guidance  # noqa: E402

PX = 16


pytestmark = pytest.mark.usefixtures("no_network")  # conftest: a socket connect fails the test


@pytest.fixture(scope="session")
def flow_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-flow")
    return {"sd3": build_tiny_sd3(root / "sd3"), "sd3-no-t5": build_tiny_sd3(root / "sd3-no-t5", seed=4, t5=False),
            "flux-dev": build_tiny_flux(root / "flux-dev"), "flux-schnell": build_tiny_flux(root / "flux-schnell", 7, False)}


@pytest.fixture(scope="session")
def pipes(flow_dirs):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    out = {}
    for k, v in flow_dirs.items():
        cls = StableDiffusion3Pipeline if k.startswith("sd3") else FluxPipeline
        extra = {"text_encoder_3": None, "tokenizer_3": None} if k == "sd3-no-t5" else {}
        out[k] = cls.from_pretrained(str(v), local_files_only=True, **extra)
        out[k].set_progress_bar_config(disable=True)
    return out


def _teacher(path, **kw):
    from odebench.teachers import load_teacher

    t = load_teacher(str(path), device="cpu", height=PX, width=PX, max_sequence_length=T5_LENGTH, **kw)
    t.set_prompts(CAPTIONS)
    return t


@pytest.mark.parametrize("kind", ["sd3", "sd3-no-t5"])
def test_sd3_prompt_encoding_equals_encode_prompt(flow_dirs, pipes, kind):
    teacher = _teacher(flow_dirs[kind])
    pe, npe, pp, npp = pipes[kind].encode_prompt(CAPTIONS[:3], None, None, max_sequence_length=T5_LENGTH)
    e, p = teacher.embeddings(CAPTIONS[:3])
    ne, np_ = teacher.uncond_embeddings(3)
    for ours, theirs in ((e, pe), (p, pp), (ne, npe), (np_, npp)):
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs.float(), rtol=1e-5, atol=1e-5)
    assert teacher.describe()["t5"] == (kind == "sd3") and teacher.describe()["skip_layer_guidance"] == "off"


def test_flux_prompt_encoding_equals_encode_prompt(flow_dirs, pipes):
    teacher = _teacher(flow_dirs["flux-dev"])
    pe, pp, text_ids = pipes["flux-dev"].encode_prompt(CAPTIONS[:3], max_sequence_length=T5_LENGTH)
    e, p = teacher.embeddings(CAPTIONS[:3])
    torch.testing.assert_close(e, pe.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(p, pp.float(), rtol=1e-5, atol=1e-5)
    assert not text_ids.any()  # the text ids odebench passes: zeros


def _row(spec, teacher):
    from odebench.students.kinds import load_student

    return load_student(spec, teacher)[0]


def _noise(n, shape, seed):
    """The run's noise for n samples (stream 0 is z), as bench hands it to students."""
    from odebench.ode.noise import NoiseBank, SampleNoise

    noise = SampleNoise(NoiseBank(seed, shape), range(n))
    return noise(0), noise


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("w", [1.0, 4.0])
def test_sd3_rows_equal_the_pipeline(flow_dirs, pipes, k, w):
    """FlowMatchEulerDiscreteScheduler:K on the SD3 teacher = StableDiffusion3Pipeline's latents on the same noise
    (shift 3 grid, CFG on velocities with the empty prompt)."""
    teacher = _teacher(flow_dirs["sd3"]).with_guidance(Guidance(w))
    z, noise = _noise(2, teacher.shape, k)
    ours = _row(f"FlowMatchEulerDiscreteScheduler:{k}", teacher).sample(teacher.initial_state(z), torch.tensor([0, 1]), noise)
    theirs = pipes["sd3"](prompt=CAPTIONS[:2], num_inference_steps=k, guidance_scale=w, latents=z.clone(), output_type="latent",
                          max_sequence_length=T5_LENGTH, height=PX, width=PX).images
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind,g", [("flux-dev", 3.5), ("flux-dev", 1.5), ("flux-schnell", None)])
def test_flux_rows_equal_the_pipeline(flow_dirs, pipes, kind, g):
    """FLUX: packed latents, embedded guidance g, sigmas linspace(1, 1/K, K) with the dynamic shift mu."""
    from odebench.teachers.flow_pipelines import pack_latents, unpack_latents

    teacher = _teacher(flow_dirs[kind])
    if g is not None:
        teacher = teacher.with_guidance(Guidance(g))  # a bare --guidance G: the embedded input
        assert teacher.guidance == Guidance(g, "embedded", "none") and not teacher.guidance.needs_uncond
    z, noise = _noise(2, teacher.shape, 5)
    for k in (1, 3):
        row = _row(f"FlowMatchEulerDiscreteScheduler:{k}", teacher)
        ours = row.sample(teacher.initial_state(z), torch.tensor([0, 1]), noise)
        theirs = pipes[kind](prompt=CAPTIONS[:2], num_inference_steps=k, guidance_scale=g or 0.0, latents=pack_latents(z),
                             output_type="latent", max_sequence_length=T5_LENGTH, height=PX, width=PX).images
        torch.testing.assert_close(ours, unpack_latents(theirs, *teacher.shape[1:]), rtol=1e-4, atol=1e-4)
    assert "mu" in row.describe()["pipeline_set_timesteps"] and teacher.describe()["grid"]["mu"] > 0


def test_flux_guidance_is_an_input_not_cfg(flow_dirs):
    dev, schnell = _teacher(flow_dirs["flux-dev"]), _teacher(flow_dirs["flux-schnell"])
    assert dev.guidance.embedded and "embedded" in dev.describe()["pf_ode"]
    x = torch.randn(1, *dev.shape)
    before = dev.counter.snapshot()
    d1 = dev.with_guidance(Guidance(1.0)).denoise(x, 0.5, torch.tensor([0]))
    d4 = dev.with_guidance(Guidance(4.0)).denoise(x, 0.5, torch.tensor([0]))
    assert dev.counter.since(before).passes == 2 and not torch.allclose(d1, d4)  # one pass each; g changes the ODE
    with pytest.raises(OdebenchError, match="embedded input"):
        dev.with_guidance(Guidance(3.0, "lcm"))
    assert not schnell.guidance.embedded and not schnell.guidance.needs_uncond
    with pytest.raises(OdebenchError, match="no guidance input"):
        schnell.with_guidance(Guidance(3.0, "embedded", "none"))


@pytest.mark.parametrize("kind", ["sd3", "flux-dev"])
def test_network_dtype_view_is_lazy_and_part_of_the_identity(flow_dirs, kind):
    """--dtype bf16 on a flow transformer: the floor's float32 view has its own identity (cache keys) and the
    teacher's fingerprint (students still match); it casts its transformer copy only when it evaluates."""
    t = _teacher(flow_dirs[kind], dtype="bf16")
    assert t.network_dtype == "bf16" and next(t.transformer.parameters()).dtype == torch.bfloat16
    up = t.with_network_dtype("fp32")
    assert up.network_dtype == "fp32" and up.fingerprint() == t.fingerprint() == _teacher(flow_dirs[kind]).fingerprint()
    assert up.ode_identity() == {**t.ode_identity(), "network_dtype": "fp32"}
    assert up.shape == t.shape and up.guidance == t.guidance and up._transformer_pending is not None  # no copy yet
    x, cond = torch.randn(2, *t.shape, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1])
    d_up, d = up.denoise(x, 0.5, cond), t.denoise(x, 0.5, cond)
    assert up._transformer_pending is None and next(up.transformer.parameters()).dtype == torch.float32
    assert next(t.transformer.parameters()).dtype == torch.bfloat16
    rel = float((d - d_up).norm() / d_up.norm())
    assert 0 < rel < 0.1, rel  # bf16 arithmetic on the same (bf16-loaded) weights, not another network


def test_bf16_run_on_tiny_sd3_reports_the_precision_floor(flow_dirs, tmp_path):
    """A bf16 SD3 run: the drift-precision probe, the tolerance raise and the floor's precision part run on the
    transformer's float32 view; the result records the network dtype and both floor parts."""
    from odebench.bench import RunConfig, run
    from odebench.ode.spec import SolverSpec

    out = run(RunConfig(teacher=str(flow_dirs["sd3"]), students=("flow-euler:2",), samples=2, floor_samples=2, curve_points=0,
                        metrics="none", solver=SolverSpec(rtol=1e-3, atol=1e-3), out=tmp_path / "runs", use_cache=False,
                        teacher_options={"device": "cpu", "height": PX, "width": PX, "max_sequence_length": T5_LENGTH,
                                         "dtype": "bf16"}))
    ref = out[0].result["reference"]
    assert ref["network_dtype"] == "bf16" and ref["drift_precision"] > 1e-3  # bf16 rounds at ~4e-3
    parts = ref["floor"]["parts"]
    assert parts["precision"]["up"] == "network fp32, state float32" and parts["precision"]["ode_mse"] > 0
    assert ref["floor"]["ode_mse"] == pytest.approx(parts["solver"]["ode_mse"] + parts["precision"]["ode_mse"])
    # the tiny random transformer's bf16 noise (delta ~3e-2) is above what 1e-3 asks for: raised, with a flag
    assert ref["solver"]["rtol"] > ref["requested_solver"]["rtol"] == 1e-3
    assert any(f.startswith("reference-tolerance-raised: ") for f in out[0].result["flags"])
    assert "network bf16" in out[0].result["metrics"]["ode_mse@ref"]["identity"]


def test_sd3_reference_is_the_limit_of_euler_at_first_order(flow_dirs):
    """Shift-free FlowMatchEuler (last level t = 1/1000 = t_min) approaches the reference with the error halving as
    K doubles; the reference starts at t = 1 from the noise itself."""
    teacher = _teacher(flow_dirs["sd3"]).with_guidance(Guidance(2.0))
    errs, ratios = euler_convergence_ratios(teacher)
    assert all(1.6 < r < 2.6 for r in ratios), (errs, ratios)


def test_odebench_run_on_tiny_sd3_end_to_end(flow_dirs, tmp_path, monkeypatch):
    """`odebench run --teacher SD3-FOLDER` with rows and ref; the result records the flow ODE and the grid."""
    from typer.testing import CliRunner

    from odebench.cli import app

    monkeypatch.setenv("ODEBENCH_WEIGHTS", str(tmp_path / "no-weights"))
    (tmp_path / "captions.txt").write_text("\n".join(CAPTIONS[:2]) + "\n")
    res = CliRunner().invoke(app, [
        "run", "--teacher", str(flow_dirs["sd3"]), "--prompts", str(tmp_path / "captions.txt"), "--samples", "2",
        "--height", str(PX), "--width", str(PX), "--guidance", "3", "--student", "flow-euler:2",
        "--student", "flow-heun:2", "--student", "ref", "--curve-points", "2", "--curve-samples", "2",
        "--floor-samples", "2", "--rtol", "1e-3", "--atol", "1e-3", "--device", "cpu", "--metrics", "none",
        "--out", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "runs" / "flow-euler-2" / "result.json").read_text())
    t = r["teacher"]
    assert t["shape"] == [16, 8, 8] and t["sigma_max"] == 1.0 and "rectified flow" in t["process"]
    assert t["grid"]["shift"] == 3.0 and t["flow"]["t_min"] == 0.001
    # diffusers shifts twice at K = 2: [1, shift(linspace(1, shift(1/1000), 2)[1])] (the pipeline's grid, tested above)
    assert r["student"]["timesteps"] == [1000.0, pytest.approx(1000 * 3 * 0.002994 / (1 + 2 * 0.002994), rel=1e-3)]
    assert r["nfe"]["student_teacher_passes"] == 2 * 2 * 2
    assert (tmp_path / "runs" / "flow-euler-2" / "samples.png").is_file()
    heun = json.loads((tmp_path / "runs" / "flow-heun-2" / "result.json").read_text())
    assert heun["nfe"]["student_per_sample"] == 3
