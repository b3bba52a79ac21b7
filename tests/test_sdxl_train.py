"""SDXL trainers (issue 5) on the tiny random SDXL (tests/sdxl_tiny.py) and a caption folder written
here: targets against an independent re-implementation of the paper's loops on the raw diffusers
UNet, micro-conditioning against StableDiffusionXLPipeline, LoRA placement, resume, accelerate,
export through `odebench run`, and one-line data errors."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from sdxl_tiny import CAPTIONS, build_tiny_sdxl, write_folder  # noqa: E402

from odebench.errors import OdebenchError  # noqa: E402

RES = 16  # pixels; latents 4 x 8 x 8


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def sdxl_dir(tmp_path_factory):
    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl-train") / "model")


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("captions") / "data")


@pytest.fixture(scope="session")
def teacher(sdxl_dir):
    from odebench.teachers import load_teacher

    return load_teacher(str(sdxl_dir), device="cpu").with_timestep_shift(1.0)


# ---------------------------------------------------------------------------------- data --

def test_caption_folder_layouts(tmp_path):
    from baselines.caption_folder import read_caption_folder

    a = read_caption_folder(write_folder(tmp_path / "a", "jsonl"))
    b = read_caption_folder(write_folder(tmp_path / "b", "csv"))
    c = read_caption_folder(write_folder(tmp_path / "c", "txt"))
    for items in (a, b, c):
        assert [i.caption for i in items] == CAPTIONS and [i.path.name for i in items] == [f"img{k}.png" for k in range(4)]
        assert items[0].size == (24, 40) and items[3].size == (12, 20)


def test_micro_conditioning_matches_the_sdxl_pipeline(sdxl_dir):
    """add_time_ids of a random crop equal what StableDiffusionXLPipeline builds for the same original
    size, crop corner and target size; the crop is the resized image's window at that corner."""
    from diffusers import StableDiffusionXLPipeline
    from PIL import Image

    from baselines.sdxl_data import resize_and_crop

    pipe = StableDiffusionXLPipeline.from_pretrained(str(sdxl_dir), local_files_only=True)
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 40, 3), dtype=np.uint8))
    arr, ids = resize_and_crop(img, RES, 0.5, 0.99)
    resized = np.asarray(img.resize((26, 16), Image.BILINEAR))  # short side 24 -> 16, long 40 -> int(16 * 40 / 24)
    top, left = int(ids[2]), int(ids[3])
    assert (top, left) == (0, 10) and np.array_equal(arr, resized[top:top + RES, left:left + RES])
    expected = pipe._get_add_time_ids((24, 40), (top, left), (RES, RES), torch.float32,
                                      text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    assert torch.equal(ids[None], expected)


def test_sampled_batches_are_deterministic_and_shard_consistently(teacher, folder):
    from baselines.sdxl_data import SDXLCaptionData

    data = SDXLCaptionData(teacher, folder, RES)
    x1, c1 = data.sample(4, torch.Generator().manual_seed(3))
    x2, c2 = data.sample(4, torch.Generator().manual_seed(3))
    assert x1.shape == (4, 4, 8, 8) and torch.equal(x1, x2) and torch.equal(c1.time_ids, c2.time_ids)
    # a process's slice of the global batch is the same items as in the single-process batch
    xs, cs = data.sample(4, torch.Generator().manual_seed(3), slice(2, 4))
    torch.testing.assert_close(xs, x1[2:], rtol=1e-5, atol=1e-5)
    assert torch.equal(cs.time_ids, c1.time_ids[2:]) and torch.equal(cs.embeds, c1.embeds[2:])
    # latents: the VAE posterior at the crop, times the scaling factor
    assert float(x1.std()) < 5 and c1.embeds.shape == (4, 77, 64) and c1.pooled.shape == (4, 32)


# ------------------------------------------------------------------------------- targets --

def _encoded(teacher, folder, n=3, seed=5):
    from baselines.sdxl_data import SDXLCaptionData

    return SDXLCaptionData(teacher, folder, RES).sample(n, torch.Generator().manual_seed(seed))


def _paper_eps(unet, x_vp, t, cond, w=9.0):
    """The released code's guided eps: UNet at the integer t, zero text embeddings as the uncond
    branch, imagen form eps_u + w (eps_c - eps_u); the item's own add_time_ids on both branches."""
    b = x_vp.shape[0]
    with torch.no_grad():
        out = unet(torch.cat([x_vp, x_vp]), torch.full((2 * b,), float(t)),
                   encoder_hidden_states=torch.cat([torch.zeros_like(cond.embeds), cond.embeds]),
                   added_cond_kwargs={"text_embeds": torch.cat([torch.zeros_like(cond.pooled), cond.pooled]),
                                      "time_ids": torch.cat([cond.time_ids, cond.time_ids])}).sample
    eu, ec = out.chunk(2)
    return eu + w * (ec - eu)


def test_direct_target_is_the_papers_ddim_loop_to_zero(teacher, folder):
    from baselines.targets import direct_target
    from odebench.ode.paper_grid import grid_for

    x0, cond = _encoded(teacher, folder)
    grid = grid_for(teacher, 100)
    n = torch.tensor([0, 37, 99])
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    x_n = x0 + grid.sigmas[n].float().reshape(-1, 1, 1, 1) * z
    ours = direct_target(teacher, x_n, n, grid, cond, "ddim")

    ac = teacher.alphas_cumprod  # float64 table, abar_t at index t - 1
    for i, ni in enumerate(n.tolist()):
        t0 = 1000 - 10 * ni
        x = x_n[i:i + 1].double() * ac[t0 - 1].sqrt()  # VE -> VP latent at t_n
        for t in range(t0, 0, -10):
            a = ac[t - 1]
            eps = _paper_eps(teacher.unet, x.float(), t, cond[i:i + 1]).double()
            x0_hat = (x - (1 - a).sqrt() * eps) / a.sqrt()
            a_next = ac[t - 11] if t > 10 else torch.tensor(1.0, dtype=torch.float64)  # the last step returns x0
            x = a_next.sqrt() * x0_hat + (1 - a_next).sqrt() * eps
        torch.testing.assert_close(ours[i:i + 1], x.float(), rtol=1e-4, atol=2e-4)


def _student(teacher, seed=4, alpha=4):
    import copy

    from baselines.sdxl_student import SDXLPaperLCM, sdxl_lora

    unet = sdxl_lora(copy.deepcopy(teacher.unet), 4, alpha)
    torch.manual_seed(seed)
    with torch.no_grad():  # a non-trivial LoRA (B = 0 at init would make the student the teacher)
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return SDXLPaperLCM(unet, teacher).eval()


def test_cm_target_is_one_ddim_step_then_the_student(teacher, folder):
    from baselines.targets import cm_target
    from odebench.ode.paper_grid import grid_for

    x0, cond = _encoded(teacher, folder)
    model = _student(teacher)
    grid = grid_for(teacher, 100)
    n = torch.tensor([0, 50, 99])  # the last one steps to t = 0, where f is the identity
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    x_n = x0 + grid.sigmas[n].float().reshape(-1, 1, 1, 1) * z
    ours = cm_target(lambda x, i: model(x, grid.sigmas[i].float(), cond), teacher, x_n, n, grid, cond, "ddim")

    ac = teacher.alphas_cumprod
    for i, ni in enumerate(n.tolist()):
        t, t1 = 1000 - 10 * ni, 1000 - 10 * (ni + 1)
        a, a1 = ac[t - 1], (ac[t1 - 1] if t1 > 0 else torch.tensor(1.0, dtype=torch.float64))
        x = x_n[i:i + 1].double() * a.sqrt()
        eps = _paper_eps(teacher.unet, x.float(), t, cond[i:i + 1]).double()
        x1 = a1.sqrt() * (x - (1 - a).sqrt() * eps) / a.sqrt() + (1 - a1).sqrt() * eps  # VP latent at t_{n+1}
        if t1 == 0:
            expected = x1
        else:  # the student at t_{n+1}: c_skip(t) x_vp + c_out(t) x0_hat, its UNet at the integer t
            with torch.no_grad():
                e = model.unet(x1.float(), torch.tensor([float(t1)]), encoder_hidden_states=cond.embeds[i:i + 1],
                               added_cond_kwargs={"text_embeds": cond.pooled[i:i + 1], "time_ids": cond.time_ids[i:i + 1]}).sample.double()
            c_skip, c_out = 0.25 / ((10 * t1) ** 2 + 0.25), 10 * t1 / ((10 * t1) ** 2 + 0.25) ** 0.5
            expected = c_skip * x1 + c_out * (x1 - (1 - a1).sqrt() * e) / a1.sqrt()
        torch.testing.assert_close(ours[i:i + 1], expected.float(), rtol=1e-4, atol=2e-4)


def test_lora_covers_exactly_the_papers_target_modules(teacher):
    from baselines.sdxl_student import SDXL_LORA_TARGETS

    model = _student(teacher)
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A" in n}
    assert adapted and all(any(a.endswith("." + t) for t in SDXL_LORA_TARGETS) for a in adapted)
    for t in SDXL_LORA_TARGETS:  # every target kind is present in the tiny SDXL UNet
        assert any(a.endswith("." + t) for a in adapted), t
    assert not any(a.endswith(("conv_in", "conv_out", "linear_1", "linear_2")) for a in adapted)  # embeddings stay frozen
    assert all("lora_" in n for n in model.checkpoint_keys())


# ---------------------------------------------------------------------------- training --

def _cli(args):
    from typer.testing import CliRunner

    from odebench.cli import app

    return CliRunner().invoke(app, args)


def test_train_cm_and_direct_with_paper_defaults_then_run(sdxl_dir, folder, tmp_path):
    from safetensors.torch import load_file

    from baselines.sdxl_student import SDXL_LORA_TARGETS

    base = ["--teacher", str(sdxl_dir), "--data", str(folder), "--resolution", str(RES), "--steps", "2", "--batch-size", "2",
            "--lora-rank", "4", "--lr", "1e-2"]
    for target in ("cm", "direct"):
        r = _cli(["train", target, *base, "--out", str(tmp_path / target)])
        assert r.exit_code == 0, r.output
    side = json.loads((tmp_path / "direct" / "student.json").read_text())
    tr = side["training"]
    # the paper's defaults where no flag overrode them, and what ran here recorded
    assert (tr["seed"], tr["weight_decay"], tr["grid"]["N"], tr["solver"], tr["loss"], tr["grad_clip"]) == (24, 1e-2, 100, "ddim", "l2", 1.0)
    assert tr["grid"]["kind"] == "discrete-1-indexed" and tr["lora_alpha"] == 0.0 and tr["lora"]["alpha"] == 4
    assert (tr["optimizer"], tr["mixed_precision"], tr["gradient_checkpointing"]) == ("adamw", "no", False)
    assert tr["paper_defaults"]["lora_rank"] == 64 and tr["paper_defaults"]["batch_size"] == 16
    assert tr["data"]["images"] == 4 and tr["resolution"] == RES and tr["target"] == "direct"
    assert side["ode"]["ddim100_timesteps"] == "paper" and side["guidance"]["imagen_w"] == 9.0 and side["guidance"]["uncond"] == "zeros"
    assert side["parameterisation"]["unet_timestep_offset"] == 1 and side["sampler"]["schedule"] == "paper"
    # the LoRA, merged, changed only the paper's target modules
    teacher_w = load_file(str(sdxl_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    w = load_file(str(tmp_path / "cm" / "student.safetensors"))
    assert set(w) == set(teacher_w)
    assert (tmp_path / "cm" / "lora" / "pytorch_lora_weights.safetensors").is_file() and tr["lora_file"].startswith("lora/")
    changed = [k for k in w if not torch.equal(w[k], teacher_w[k].float())]
    assert changed and all(any(f".{t}." in k for t in SDXL_LORA_TARGETS) for k in changed)
    # scored with no flags but the samples: the paper-mode DDIM-100 reference, as declared
    r = _cli(["run", "--student", str(tmp_path / "cm" / "student.json"), "--samples", "2", "--curve-points", "0",
              "--floor-samples", "0", "--rtol", "1e-3", "--atol", "1e-3", "--metrics", "ode", "--device", "cpu",
              "--out", str(tmp_path / "runs"), "--name", "cm"])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "runs" / "cm" / "result.json").read_text())
    assert "released code" in res["reference"]["ddim100"]["unet_timesteps"]
    assert res["metrics"]["ode_mse@ddim100"]["value"] > 0 and not any(f.startswith("teacher-mismatch") for f in res["flags"])


def test_exported_student_is_the_trained_function(sdxl_dir, teacher, folder, tmp_path):
    """Loaded through odebench's SDXL student loader, the export computes what the training module did."""
    import copy

    from odebench.students.lcm_sdxl import PAPER, export_sdxl_lcm_student
    from odebench.students.load import load_student
    from odebench.teachers import load_teacher
    from odebench.teachers.text_condition import EncodedPrompts

    model = _student(teacher, alpha=8)  # alpha != rank: the LoRA file must carry the scale
    merged = copy.deepcopy(model.unet).merge_and_unload()
    side = export_sdxl_lcm_student(tmp_path / "s", merged, teacher, convention=PAPER, ode={"ddim100_timesteps": "paper"})
    run_teacher = load_teacher(str(sdxl_dir), device="cpu")
    run_teacher.set_prompts(CAPTIONS)
    student, note = load_student(str(side), run_teacher, conditional=True)
    assert note is None
    cond_idx = torch.tensor([0, 2])  # the run conditions on prompt indices at the output size's add_time_ids
    e, p = run_teacher.condition_inputs(cond_idx, 2)
    cond = EncodedPrompts(e, p, run_teacher.add_time_ids().expand(2, -1).clone())
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * 3
    sigma = teacher.sigmas[499].float().expand(2)
    with torch.no_grad():
        trained = model(x, sigma, cond)
    torch.testing.assert_close(student(x, sigma, cond_idx), trained, rtol=1e-4, atol=1e-4)
    # the LoRA alone, in diffusers' layout, through the external-student loader in the paper's convention
    from baselines.sdxl_student import save_lora
    from odebench.teachers.base import Guidance

    save_lora(model.unet, tmp_path / "lora")
    lora, note = load_student(str(tmp_path / "lora"), run_teacher, student_convention="paper", student_guidance=Guidance(9.0))
    assert note is None
    torch.testing.assert_close(lora(x, sigma, cond_idx), trained, rtol=1e-4, atol=1e-4)


def test_resume_equals_uninterrupted_and_accelerate_equals_plain(sdxl_dir, folder, tmp_path, monkeypatch):
    from baselines.distill import DistillConfig
    from baselines.sdxl_train import SDXLOptions
    from baselines.train import train_student

    opts = SDXLOptions(data=folder, resolution=RES)
    kw = dict(target="cm", batch_size=2, lr=1e-2, lora_rank=4, grid=100, seed=24, checkpoint_every=1)
    train_student(DistillConfig(steps=3, **kw), str(sdxl_dir), tmp_path / "a", sdxl=opts)
    train_student(DistillConfig(steps=1, **kw), str(sdxl_dir), tmp_path / "b", sdxl=opts)
    ckpt = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert ckpt["model"] and all("lora_" in k for k in ckpt["model"])  # only the LoRA, not the frozen UNet
    train_student(DistillConfig(steps=3, **kw), str(sdxl_dir), tmp_path / "b", resume=True, sdxl=opts)
    a = (tmp_path / "a" / "student.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "student.safetensors").read_bytes()
    # gradient checkpointing recomputes the same activations: the same student
    from safetensors.torch import load_file

    train_student(DistillConfig(steps=3, **kw), str(sdxl_dir), tmp_path / "gc",
                  sdxl=SDXLOptions(data=folder, resolution=RES, gradient_checkpointing=True))
    assert json.loads((tmp_path / "gc" / "student.json").read_text())["training"]["gradient_checkpointing"] is True
    wa, wg = load_file(str(tmp_path / "a" / "student.safetensors")), load_file(str(tmp_path / "gc" / "student.safetensors"))
    assert max(float((wa[k] - wg[k]).abs().max()) for k in wa) < 1e-6
    with pytest.raises(OdebenchError, match="flags differ"):
        train_student(DistillConfig(steps=3, **{**kw, "lr": 1e-3}), str(sdxl_dir), tmp_path / "b", resume=True, sdxl=opts)
    # the same run under accelerate (one CPU process, as `accelerate launch` with one process sets up)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    train_student(DistillConfig(steps=3, **kw), str(sdxl_dir), tmp_path / "c", sdxl=opts)
    side = json.loads((tmp_path / "c" / "student.json").read_text())
    assert side["training"]["runtime"]["kind"] == "accelerate"
    assert a == (tmp_path / "c" / "student.safetensors").read_bytes()


def test_optimizer_choice(monkeypatch):
    import types

    import baselines.optim as optim

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(optim, "bitsandbytes_available", lambda: False)
    assert optim.resolve_optimizer("auto", cuda) == "adamw" and optim.resolve_optimizer("auto", cpu) == "adamw"
    with pytest.raises(OdebenchError, match="bitsandbytes"):
        optim.resolve_optimizer("adamw8bit", cuda)
    with pytest.raises(OdebenchError, match="CUDA"):
        optim.resolve_optimizer("adamw8bit", cpu)
    monkeypatch.setattr(optim, "bitsandbytes_available", lambda: True)
    assert optim.resolve_optimizer("auto", cuda) == "adamw8bit" and optim.resolve_optimizer("auto", cpu) == "adamw"

    class AdamW8bit(torch.optim.AdamW):
        pass

    monkeypatch.setitem(sys.modules, "bitsandbytes", types.SimpleNamespace(optim=types.SimpleNamespace(AdamW8bit=AdamW8bit)))
    p = torch.nn.Parameter(torch.zeros(2))
    opt = optim.make_optimizer("adamw8bit", [p], 1e-4, 1e-2)
    assert type(opt) is AdamW8bit and opt.defaults["weight_decay"] == 1e-2
    assert type(optim.make_optimizer("adamw", [p], 1e-4, 0.0)) is torch.optim.AdamW


def test_bad_data_and_flags_are_one_line_cli_errors(sdxl_dir, folder, tmp_path):
    from PIL import Image

    empty = tmp_path / "empty"
    empty.mkdir()
    nocap = tmp_path / "nocap"
    nocap.mkdir()
    Image.new("RGB", (8, 8)).save(nocap / "a.png")
    (nocap / "captions.txt").write_text("a caption\n")
    broken = write_folder(tmp_path / "broken", "txt")
    (broken / "img1.png").write_bytes(b"not a png")
    missing = write_folder(tmp_path / "missing", "jsonl")
    (missing / "img2.png").unlink()
    base = ["train", "cm", "--teacher", str(sdxl_dir), "--resolution", str(RES), "--steps", "1", "--batch-size", "2"]
    cases = [(["--data", str(empty)], "no images"), (["--data", str(nocap)], "a.txt beside it, or a metadata.jsonl); captions.txt is not read"),
             (["--data", str(broken)], "img1.png: not a readable image"), (["--data", str(missing)], "img2.png not found"),
             (["--data", str(tmp_path / "nowhere")], "not a directory"), ([], "needs --data"),
             (["--data", str(folder), "--mixed-precision", "fp16", "--device", "cpu"], "needs a CUDA device"),
             (["--data", str(folder), "--optimizer", "sgd"], "unknown optimiser")]
    for extra, needle in cases:
        r = _cli([*base, *extra, "--out", str(tmp_path / "o")])
        assert r.exit_code == 2 and needle in r.output, (extra, r.output)
        assert r.output.strip().count("\n") == 0 or r.output.strip().splitlines()[-1].startswith("error:"), r.output
    r = _cli(["train", "cm", "--teacher", "gmm", "--data", str(folder), "--steps", "1"])
    assert r.exit_code == 2 and "apply to SDXL teachers only" in r.output


def test_run_uses_the_ddim100_timesteps_the_student_declares(sdxl_dir):
    """A trained SDXL student's sidecar names the discretised ODE it was distilled on; `--ddim100-timesteps
    auto` follows it (else the teacher's default), an explicit flag wins."""
    from types import SimpleNamespace as S

    from odebench.bench import RunConfig, _ddim100_teacher
    from odebench.teachers import load_teacher

    t = load_teacher(str(sdxl_dir), device="cpu")
    sigma = S(trained_for={"ode": {"ddim100_timesteps": "sigma"}})
    paper = S(trained_for={"ode": {"ddim100_timesteps": "paper"}})
    assert "consistent with sigma" in _ddim100_teacher(t, RunConfig(), [sigma])[1]
    assert _ddim100_teacher(t, RunConfig(), [sigma])[0].timestep_shift == 0.0
    assert _ddim100_teacher(t, RunConfig(), [S(trained_for=None)])[0].timestep_shift == 1.0  # SDXL default: paper
    assert _ddim100_teacher(t, RunConfig(), [paper, sigma])[0].timestep_shift == 1.0  # disagreeing: the default
    assert _ddim100_teacher(t, RunConfig(ddim100_timesteps="sigma"), [paper])[0].timestep_shift == 0.0
