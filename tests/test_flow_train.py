"""Trainers on flow-transformer teachers (baselines/flow_train.py) on the tiny SD3 and FLUX.1 pipelines
(tests/flow_tiny.py) and a caption folder written here: the distillation grid is the teacher's own sampler grid
(diffusers' FlowMatchEulerDiscreteScheduler), CM and Direct CM targets against a re-implementation on the raw
diffusers transformer with StableDiffusion3Pipeline's uncond embeddings, LoRA placement, and a trained student that
loads flag-free in `odebench run` and computes what was trained."""
import copy
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from flow_tiny import T5_LENGTH, build_tiny_flux, build_tiny_sd3  # noqa: E402
from sdxl_tiny import write_folder  # noqa: E402

from odebench.teachers.text_condition import EncodedPrompts  # noqa: E402

RES = 16  # pixels; latents 16 x 8 x 8
N = 10


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow-train")
    return {"sd3": build_tiny_sd3(root / "sd3"), "flux": build_tiny_flux(root / "flux"), "data": write_folder(root / "data")}


@pytest.fixture(scope="module")
def sd3(dirs):
    from odebench.teachers import load_teacher

    return load_teacher(str(dirs["sd3"]), device="cpu", height=RES, width=RES, max_sequence_length=T5_LENGTH)


def _batch(teacher, folder, n=3, seed=5):
    from baselines.sdxl_data import SDXLCaptionData

    return SDXLCaptionData(teacher, folder, RES, micro_conditioning=False).sample(n, torch.Generator().manual_seed(seed))


def test_distillation_grid_is_the_teachers_own_sampler_grid(sd3, dirs):
    """N levels of the pipeline's FlowMatchEulerDiscreteScheduler (SD3: shift 3; FLUX: sigmas linspace(1, 1/N) with the
    dynamic mu at the training resolution), then t = 0: diffusers' own sigmas."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    from odebench.ode.paper_grid import grid_for
    from odebench.teachers import load_teacher

    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(str(dirs["sd3"]), subfolder="scheduler")
    sched.set_timesteps(N)
    grid = grid_for(sd3, N)
    assert grid.kind == "flow-sampler" and grid.n == N and float(grid.sigmas[-1]) == 0.0 and float(grid.sigmas[0]) == 1.0
    torch.testing.assert_close(grid.sigmas, sched.sigmas.double())
    flux = load_teacher(str(dirs["flux"]), device="cpu", height=RES, width=RES, max_sequence_length=T5_LENGTH)
    pipe = FluxPipeline.from_pretrained(str(dirs["flux"]), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    seen = []
    step = pipe.scheduler.step
    pipe.scheduler.step = lambda *a, **k: (seen.append(pipe.scheduler.sigmas.clone()), step(*a, **k))[1]
    pipe(prompt="a fox", num_inference_steps=N, height=RES, width=RES, max_sequence_length=T5_LENGTH, output_type="latent")
    torch.testing.assert_close(grid_for(flux, N).sigmas, seen[0].double())


def _guided_v(transformer, x, t, ehs, pooled, uncond, w=7.0):
    """SD3's CFG velocity on the raw transformer: the pipeline's order (uncond first), imagen w on velocities."""
    b = x.shape[0]
    ue, up = uncond
    with torch.no_grad():
        out = transformer(hidden_states=torch.cat([x, x]), timestep=torch.full((2 * b,), 1000.0 * t),
                          encoder_hidden_states=torch.cat([ue, ehs]), pooled_projections=torch.cat([up, pooled])).sample
    vu, vc = out.chunk(2)
    return vu + w * (vc - vu)


def _pipeline_uncond(dirs, b):
    """The empty prompt through StableDiffusion3Pipeline.encode_prompt (the uncond branch, not odebench's encoder)."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(str(dirs["sd3"]), local_files_only=True)
    pe, _, pp, _ = pipe.encode_prompt([""] * b, None, None, do_classifier_free_guidance=False, max_sequence_length=T5_LENGTH)
    return pe, pp


def _grid_sigmas(dirs):
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(str(dirs["sd3"]), subfolder="scheduler")
    sched.set_timesteps(N)
    return [float(s) for s in sched.sigmas]


def _student(teacher, seed=4):
    from baselines.flow_student import FlowConsistency, flow_lora

    net = flow_lora(copy.deepcopy(teacher.transformer).requires_grad_(True), 4, 4)
    torch.manual_seed(seed)
    with torch.no_grad():  # a non-trivial LoRA (B = 0 at init would make the student the teacher)
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return FlowConsistency(net, teacher).eval()


def test_direct_target_is_euler_in_t_on_the_raw_transformer(sd3, dirs):
    from baselines.targets import direct_target
    from odebench.ode.paper_grid import grid_for

    x0, cond = _batch(sd3, dirs["data"])
    assert cond.time_ids is None and x0.shape == (3, 16, 8, 8)
    grid = grid_for(sd3, N)
    n = torch.tensor([0, 4, 9])
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    t = grid.sigmas[n].float().reshape(-1, 1, 1, 1)
    x_n = (1 - t) * x0 + t * z
    torch.testing.assert_close(sd3.add_noise(x0, grid.sigmas[n], z), x_n)
    ours = direct_target(sd3, x_n, n, grid, cond, "ddim")

    sig = _grid_sigmas(dirs)
    uncond = _pipeline_uncond(dirs, 1)
    for i, ni in enumerate(n.tolist()):
        x = x_n[i:i + 1]
        for m in range(ni, N):
            x = x + (sig[m + 1] - sig[m]) * _guided_v(sd3.transformer, x, sig[m], cond.embeds[i:i + 1], cond.pooled[i:i + 1], uncond)
        torch.testing.assert_close(ours[i:i + 1], x, rtol=1e-4, atol=1e-4)


def test_cm_target_is_one_euler_step_then_the_students_flow_map(sd3, dirs):
    from baselines.targets import cm_target
    from odebench.ode.paper_grid import grid_for

    x0, cond = _batch(sd3, dirs["data"], seed=6)
    model = _student(sd3)
    grid = grid_for(sd3, N)
    n = torch.tensor([0, 5, 9])  # the last one steps to t = 0, where f is the identity
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    t = grid.sigmas[n].float().reshape(-1, 1, 1, 1)
    x_n = (1 - t) * x0 + t * z
    ours = cm_target(lambda x, i: model(x, grid.sigmas[i].float(), cond), sd3, x_n, n, grid, cond, "euler")

    sig = _grid_sigmas(dirs)
    uncond = _pipeline_uncond(dirs, 1)
    for i, ni in enumerate(n.tolist()):
        e, p = cond.embeds[i:i + 1], cond.pooled[i:i + 1]
        x1 = x_n[i:i + 1] + (sig[ni + 1] - sig[ni]) * _guided_v(sd3.transformer, x_n[i:i + 1], sig[ni], e, p, uncond)
        t1 = sig[ni + 1]
        with torch.no_grad():  # the student's own transformer (LoRA active), no CFG: f = x - t v
            v = model.transformer(hidden_states=x1, timestep=torch.tensor([1000.0 * t1]), encoder_hidden_states=e,
                                  pooled_projections=p).sample
        torch.testing.assert_close(ours[i:i + 1], x1 - t1 * v, rtol=1e-4, atol=1e-4)
    assert float(ours.std()) > 0.1


def test_lora_targets_named_like_the_unets(sd3, dirs):
    """Attention (both streams), feed-forward, adaLN modulation linears and the timestep MLP get LoRA; the patch, text
    and pooled embedders and the final projection stay frozen; only LoRA tensors are checkpointed."""
    from baselines.flow_student import flow_lora_targets
    from odebench.teachers import load_teacher

    model = _student(sd3)
    adapted = {n.rsplit(".lora_A", 1)[0].removeprefix("transformer.base_model.model.")
               for n, _ in model.named_parameters() if ".lora_A" in n}
    assert adapted == set(flow_lora_targets(sd3.transformer))
    for kind in ("attn.to_q", "attn.add_k_proj", "attn.to_out.0", "attn.to_add_out", "ff.net.0.proj", "ff_context.net.2",
                 "norm1.linear", "norm1_context.linear", "timestep_embedder.linear_1"):
        assert any(a.endswith(kind) for a in adapted), kind
    for frozen in ("pos_embed.proj", "context_embedder", "time_text_embed.text_embedder.linear_1", "norm_out.linear", "proj_out"):
        assert frozen not in adapted
    assert model.checkpoint_keys() and all("lora_" in k for k in model.checkpoint_keys())
    flux = load_teacher(str(dirs["flux"]), device="cpu", height=RES, width=RES, max_sequence_length=T5_LENGTH)
    names = set(flow_lora_targets(flux.transformer))
    assert "single_transformer_blocks.0.proj_out" in names and "single_transformer_blocks.0.proj_mlp" in names
    assert "proj_out" not in names and "time_text_embed.guidance_embedder.linear_1" not in names


def _cli(args):
    from typer.testing import CliRunner

    from odebench.cli import app

    return CliRunner().invoke(app, args)


@pytest.mark.parametrize("family,target", [("sd3", "cm"), ("flux", "direct")])
def test_trained_flow_student_loads_flag_free_and_is_the_trained_function(dirs, tmp_path, family, target):
    """`odebench train cm|direct --teacher FOLDER --data FOLDER` writes OUT/lora/ and the card OUT/student.json; `odebench
    run --student OUT/student.json` needs no other flag; the card's f(x_t, t) equals the trained module (rebuilt from
    the resumable checkpoint's LoRA tensors, not from the exported file)."""
    from baselines.flow_student import FlowConsistency, flow_lora
    from odebench.students.kinds import declared_ode, load_student
    from odebench.teachers import load_teacher

    out = tmp_path / "student"
    r = _cli(["train", target, "--teacher", str(dirs[family]), "--data", str(dirs["data"]), "--resolution", str(RES),
              "--steps", "2", "--batch-size", "2", "--lora-rank", "4", "--lr", "1e-2", "--grid", str(N), "--out", str(out)])
    assert r.exit_code == 0, r.output
    card = json.loads((out / "student.json").read_text())
    assert card["format"] == "odebench-student-card" and card["kind"] == "trajectory" and card["weights"] == {"lora": "lora"}
    tr = card["training"]
    assert tr["grid"]["kind"] == "flow-sampler" and tr["grid"]["N"] == N and tr["target"] == target and tr["seed"] == 24
    assert tr["lora"]["rank"] == 4 and (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert card["guidance_scale"] == (3.5 if family == "flux" else 1.0)
    assert card["ode"]["guidance"]["form"] == ("embedded" if family == "flux" else "imagen")

    if family == "sd3":  # the tiny random FLUX's reference alone takes ~20 s on a CPU: its run is the SD3 one's
        res = _cli(["run", "--student", str(out / "student.json"), "--samples", "2", "--floor-samples", "0", "--curve-points", "2",
                    "--curve-samples", "2", "--rtol", "1e-3", "--atol", "1e-3", "--metrics", "ode", "--device", "cpu",
                    "--out", str(tmp_path / "runs")])
        assert res.exit_code == 0, res.output
        result = json.loads((tmp_path / "runs" / "student" / "result.json").read_text())
        assert result["student"]["kind"] == "trajectory"
        assert not any(f.startswith(("teacher-mismatch", "descriptive")) for f in result["flags"])
        assert result["metrics"]["ode_mse@ref"]["value"] > 0 and result["curves"]["ode_mse_vs_sigma"]["n"] == 2

    declared = declared_ode([str(out / "student.json")])
    teacher = load_teacher(declared.teacher, declared.guidance, device="cpu")
    teacher.set_prompts(["a red fox in the snow", "a bowl of ramen"])
    student, note = load_student(str(out / "student.json"), teacher)
    assert note is None
    trained = FlowConsistency(flow_lora(copy.deepcopy(teacher.transformer), 4, 4), teacher)
    state = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    assert set(state) == set(trained.checkpoint_keys())
    trained.load_state_dict(state, strict=False)
    cond_idx = torch.tensor([0, 1])
    e, p = teacher.condition_inputs(cond_idx, 2)
    x = torch.randn(2, *teacher.shape, generator=torch.Generator().manual_seed(3))
    for t in (1.0, 0.6, 0.1):
        with torch.no_grad():
            want = trained(x, torch.full((2,), t), EncodedPrompts(e, p))
        torch.testing.assert_close(student(x, t, cond_idx), want, rtol=1e-4, atol=1e-4)
    assert float((student(x, 0.6, cond_idx) - (x - 0.6 * teacher.model_output(x, 600.0, cond_idx))).abs().max()) > 1e-4
