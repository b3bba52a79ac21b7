"""SDXL on a tiny random SDXL (tests/sdxl_tiny.py) loaded through the real loading path, checked
against diffusers' own StableDiffusionXLPipeline, LCMScheduler and an independent re-implementation
of the paper's DDIM loop."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from sdxl_tiny import CAPTIONS, LATENT, build_tiny_sdxl, write_lcm_lora, write_lcm_sdxl_unet  # noqa: E402

from odebench.errors import OdebenchError  # noqa: E402
from odebench.teachers.base import Guidance  # noqa: E402


pytestmark = pytest.mark.usefixtures("no_network")  # conftest: a socket connect fails the test


@pytest.fixture(scope="session")
def sdxl_dir(tmp_path_factory):
    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl") / "model")


@pytest.fixture(scope="session")
def lora_dir(sdxl_dir, tmp_path_factory):
    from diffusers import UNet2DConditionModel

    folder = tmp_path_factory.mktemp("lcm-lora")
    write_lcm_lora(UNet2DConditionModel.from_pretrained(str(sdxl_dir / "unet")), folder)
    return folder


@pytest.fixture(scope="session")
def pipe(sdxl_dir):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(str(sdxl_dir), local_files_only=True)


@pytest.fixture(scope="session")
def base_teacher(sdxl_dir):
    from odebench.teachers import load_teacher

    teacher = load_teacher(str(sdxl_dir), device="cpu")
    teacher.set_prompts(CAPTIONS)
    return teacher


# ------------------------------------------------------------------------------- teacher --

def test_loads_through_the_diffusers_folder_and_hub_cache_layout(sdxl_dir, base_teacher, tmp_path, monkeypatch):
    from odebench.teachers.family import family_for_spec
    from odebench.teachers.sdxl import SDXLTeacher

    t = base_teacher
    assert isinstance(t, SDXLTeacher) and t.shape == (4, LATENT, LATENT) and (t.height, t.width) == (16, 16)
    assert t.guidance == Guidance(9.0, "imagen", "zeros") and t.prediction == "epsilon"
    assert 0.029 < t.sigma_min < 0.03 and 14.6 < t.sigma_max < 14.7
    assert all(len(tok) > 2 for tok in t.tokenizers)
    assert [family_for_spec(s).name for s in ("sdxl", str(sdxl_dir), "gmm")] == ["sdxl", "sdxl", "gmm"]
    with pytest.raises(OdebenchError, match="org/model.*nothing is downloaded"):  # a hub id that is not on this machine
        family_for_spec("org/model")
    # a hub id resolves from $ODEBENCH_WEIGHTS/<name> (as from the HF cache), never downloads
    monkeypatch.setenv("ODEBENCH_WEIGHTS", str(sdxl_dir.parent))
    from odebench.teachers import load_teacher

    other = load_teacher("someorg/model", device="cpu", dtype="bf16", height=32, width=16)
    assert other.unet_dtype == torch.bfloat16 and other.shape == (4, 16, 8)
    assert other.add_time_ids().tolist() == [32, 16, 0, 0, 32, 16]
    assert other.fingerprint() != t.fingerprint()  # the output size is part of the ODE (add_time_ids)
    other.set_prompts(CAPTIONS)
    d = other.denoise(torch.randn(2, 4, 16, 8), torch.full((2,), 2.0), torch.tensor([0, 1]))
    assert d.dtype == torch.float32 and torch.isfinite(d).all()  # bf16 UNet, float32 ODE state
    # a separate VAE (as the fp16-fix VAE) runs in the model dtype and is part of the identity
    sep = load_teacher(str(sdxl_dir), device="cpu", dtype="bf16", vae=str(sdxl_dir / "vae"))
    assert not sep.vae_fp32 and next(sep.vae.parameters()).dtype == torch.bfloat16 and "vae" in sep.identity
    assert t.vae_fp32 and next(t.vae.parameters()).dtype == torch.float32
    assert sep.decode(torch.randn(1, 4, LATENT, LATENT)).shape == (1, 16, 16, 3)


def test_precision_view_is_lazy_and_part_of_the_identity(sdxl_dir):
    """--dtype bf16: the floor's float32 view has its own identity (cache keys), and casts its UNet copy
    only when it evaluates (a warm run's cached floor never holds a second SDXL UNet)."""
    from odebench.teachers import load_teacher

    t = load_teacher(str(sdxl_dir), device="cpu", dtype="bf16")
    t.set_prompts(CAPTIONS)
    up = t.with_network_dtype("fp32")
    assert (t.network_dtype, up.network_dtype) == ("bf16", "fp32") and up.fingerprint() == t.fingerprint()
    assert up.ode_identity() == {**t.ode_identity(), "network_dtype": "fp32"}
    assert up._unet_pending is not None  # the identity needed no copy
    x, cond = torch.randn(2, *t.shape), torch.tensor([0, 1])
    d_up, d = up.denoise(x, 2.0, cond), t.denoise(x, 2.0, cond)
    assert up._unet_pending is None and up.unet_dtype == torch.float32 and t.unet_dtype == torch.bfloat16
    rel = float((d - d_up).norm() / d_up.norm())
    assert 0 < rel < 0.1, rel  # bf16 rounding, not another network


def test_missing_weights_are_one_line_errors(sdxl_dir, tmp_path, monkeypatch):
    import shutil

    from odebench.teachers import load_teacher

    monkeypatch.setenv("ODEBENCH_WEIGHTS", str(tmp_path / "empty"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(OdebenchError) as e:
        load_teacher("sdxl")
    msg = str(e.value)
    assert "stabilityai/stable-diffusion-xl-base-1.0" in msg and "nothing is downloaded" in msg and "\n" not in msg
    broken = tmp_path / "broken"
    shutil.copytree(sdxl_dir, broken)
    shutil.rmtree(broken / "text_encoder_2")
    (broken / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(OdebenchError, match=r"missing text_encoder_2/config.json, vae/diffusion_pytorch_model.safetensors$"):
        load_teacher(str(broken))
    with pytest.raises(OdebenchError, match="fp16, bf16 or fp32"):
        load_teacher(str(sdxl_dir), dtype="int8")
    with pytest.raises(OdebenchError, match="apply to SDXL / SD teachers only"):
        load_teacher("gmm", vae="x")
    with pytest.raises(OdebenchError, match="analytic"):  # --dtype is a network's precision
        load_teacher("gmm", dtype="fp16")


@pytest.mark.parametrize("uncond", ["zeros", "empty"])
def test_prompt_encoding_matches_diffusers_encode_prompt(sdxl_dir, pipe, uncond):
    from odebench.teachers import load_teacher

    teacher = load_teacher(str(sdxl_dir), device="cpu", uncond=uncond)
    teacher.set_prompts(CAPTIONS)
    prompts = [CAPTIONS[1], CAPTIONS[0], CAPTIONS[1]]
    with torch.no_grad():
        pe, ne, pp, npp = pipe.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=True,
                                             negative_prompt=None if uncond == "zeros" else "")
    ehs, pooled = teacher.condition_inputs(torch.tensor([1, 0, 5]), 3)  # index 5 = prompt 5 mod 4 = 1
    torch.testing.assert_close(ehs, pe, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pooled, pp, rtol=1e-5, atol=1e-6)
    ue, up = teacher.condition_inputs(None, 3)
    torch.testing.assert_close(ue, ne, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(up, npp, rtol=1e-5, atol=1e-6)
    if uncond == "zeros":
        assert float(ue.abs().max()) == 0.0
    else:
        assert float(ue.abs().max()) > 0.0
    # add_time_ids as the pipeline builds them for the default output size
    ids = pipe._get_add_time_ids((16, 16), (0, 0), (16, 16), torch.float32, text_encoder_projection_dim=32)
    torch.testing.assert_close(teacher.add_time_ids()[None], ids)


def test_text_encoders_run_once_per_unique_prompt(sdxl_dir):
    from odebench.teachers import load_teacher

    teacher = load_teacher(str(sdxl_dir), device="cpu")
    teacher.set_prompts(CAPTIONS)
    calls = []
    for te in teacher.text_encoders:
        te.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    x = torch.randn(6, 4, LATENT, LATENT)
    cond = torch.arange(6) % 4
    teacher.denoise(x, torch.full((6,), 3.0), cond)
    guided = teacher.with_guidance(Guidance(5.0, "lcm"))  # another view: shares the cache
    guided.denoise(x, torch.full((6,), 1.0), cond)
    guided.denoise(x[:2], torch.full((2,), 0.5), cond[:2])
    assert teacher.encoder_calls == 4 and calls == [4, 4]  # one batch of the 4 unique prompts per encoder


def test_denoiser_and_cfg_against_a_direct_unet_call(base_teacher, pipe):
    """D = x - sigma eps(x / sqrt(1 + sigma^2), t) with CFG eps_u + w (eps_c - eps_u) at an integer t."""
    teacher = base_teacher
    x = torch.randn(3, 4, LATENT, LATENT) * 2
    t = 400
    s = float(teacher.sigmas[t])
    cond = torch.tensor([0, 1, 2])
    with torch.no_grad():
        pe, ne, pp, npp = pipe.encode_prompt([CAPTIONS[i] for i in cond], device="cpu", do_classifier_free_guidance=True)
        ids = torch.tensor([[16, 16, 0, 0, 16, 16]], dtype=torch.float32).expand(3, -1)
        xin = x / math.sqrt(1 + s * s)
        eps_c = pipe.unet(xin, t, encoder_hidden_states=pe, added_cond_kwargs={"text_embeds": pp, "time_ids": ids}).sample
        eps_u = pipe.unet(xin, t, encoder_hidden_states=ne, added_cond_kwargs={"text_embeds": npp, "time_ids": ids}).sample
    sig = torch.full((3,), s)
    before = teacher.counter.passes
    got = teacher.denoise(x, sig, cond)  # w = 9 imagen, zero uncond
    assert teacher.counter.passes - before == 6  # CFG doubles the UNet passes
    torch.testing.assert_close(got, x - s * (eps_u + 9.0 * (eps_c - eps_u)), rtol=1e-4, atol=1e-4)
    unguided = teacher.with_guidance(Guidance(1.0))
    torch.testing.assert_close(unguided.denoise(x, sig, cond), x - s * eps_c, rtol=1e-4, atol=1e-4)


def test_decode_matches_the_pipeline_vae_postprocess(base_teacher, pipe):
    z = torch.randn(3, 4, LATENT, LATENT)
    imgs = base_teacher.decode(z, batch_size=2)
    with torch.no_grad():
        ref = pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample
    ref = pipe.image_processor.postprocess(ref, output_type="np")  # float [0, 1]
    assert imgs.dtype == np.uint8 and imgs.shape == (3, 16, 16, 3)
    assert np.abs(imgs.astype(float) - ref * 255).max() <= 1.0  # rounding only


# ------------------------------------------------------------------------------- prompts --

def test_prompt_files(tmp_path):
    from odebench.conditions import PromptConditions
    from odebench.prompts import BUILTIN_PROMPTS, load_prompts

    assert len(BUILTIN_PROMPTS) == 16 and len(set(BUILTIN_PROMPTS)) == 16 and load_prompts(None) == list(BUILTIN_PROMPTS)
    (tmp_path / "c.txt").write_text("a cat\n\n  a dog  \n")
    assert load_prompts(tmp_path / "c.txt") == ["a cat", "a dog"]
    (tmp_path / "c.jsonl").write_text('{"caption": "a cat", "id": 1}\n{"caption": "a dog"}\n')
    assert load_prompts(tmp_path / "c.jsonl") == ["a cat", "a dog"]
    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n{"prompt": "b", "x": 2}\n')
    assert load_prompts(tmp_path / "d.jsonl") == ["a", "b"]
    (tmp_path / "c.csv").write_text('id,prompt,other\n1,"a cat, sitting",x\n2,a dog,y\n')
    assert load_prompts(tmp_path / "c.csv") == ["a cat, sitting", "a dog"]
    assert load_prompts(tmp_path / "c.csv", "other") == ["x", "y"]
    bad = {"missing.txt": None, "e.txt": "\n\n", "b.jsonl": '{"caption": "a"}\nnot json\n', "n.jsonl": '{"foo": "a"}\n',
           "l.jsonl": '["a"]\n', "k.csv": "a,b\n1,2\n", "bin.txt": b"\xff\xfe\x00"}
    for name, content in bad.items():
        if isinstance(content, bytes):
            (tmp_path / name).write_bytes(content)
        elif content is not None:
            (tmp_path / name).write_text(content)
        with pytest.raises(OdebenchError) as e:
            load_prompts(tmp_path / name)
        assert "\n" not in str(e.value) and name in str(e.value), str(e.value)
    with pytest.raises(OdebenchError, match="no column 'nope'"):
        load_prompts(tmp_path / "c.csv", "nope")
    pc = PromptConditions(["a", "b", "c"])
    assert pc.tensor(range(5)).tolist() == [0, 1, 2, 0, 1] and pc.key(range(4)) == ["a", "b", "c", "a"]
    assert pc.describe()["num_prompts"] == 3 and pc.texts([4]) == ["b"]


# ------------------------------------------------------------------------------ students --

def _noises(n, b, seed=11):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 4, LATENT, LATENT, generator=g) for _ in range(n)]


def _patch_lcm_noise(monkeypatch, noises):
    """diffusers' LCMScheduler.step draws its re-noising with randn_tensor: hand it ours, in order."""
    import diffusers.schedulers.scheduling_lcm as sl

    queue = list(noises)
    monkeypatch.setattr(sl, "randn_tensor", lambda shape, **kw: queue.pop(0).to(kw.get("dtype") or torch.float32))
    return queue


def test_student_timesteps_match_lcmscheduler_and_the_paper():
    from diffusers import LCMScheduler

    from odebench.students.lcm_sdxl import LCM, PAPER, student_timesteps

    sch = LCMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    for k in (1, 2, 3, 4, 6, 8):
        sch.set_timesteps(k)
        assert student_timesteps(LCM, k) == sch.timesteps.tolist()
    assert student_timesteps(LCM, 4) == [999, 759, 499, 259]
    assert [student_timesteps(PAPER, k) for k in (1, 2, 4)] == [[1000], [1000, 500], [1000, 750, 500, 250]]


def test_guidance_embedding_matches_the_pipeline(pipe):
    from odebench.teachers.sdxl import guidance_scale_embedding

    w = torch.tensor([0.0, 2.5, 7.0])
    for dim in (16, 17, 256):
        torch.testing.assert_close(guidance_scale_embedding(w, dim), pipe.get_guidance_scale_embedding(w, dim), rtol=1e-5, atol=1e-5)


def test_lcm_lora_sampling_agrees_with_diffusers_lcm_pipeline(sdxl_dir, lora_dir, base_teacher, monkeypatch):
    """The same tiny SDXL, the same LCM-LoRA, the same noise: odebench's 4-step LCM sampler equals
    StableDiffusionXLPipeline with LCMScheduler (no CFG), and the scheduler's own step."""
    from diffusers import LCMScheduler, StableDiffusionXLPipeline

    from odebench.students.load import load_student

    with pytest.raises(OdebenchError, match=r"U\[3, 15\].*no single reference ODE"):
        load_student(str(lora_dir), base_teacher)
    student, note = load_student(str(lora_dir), base_teacher, allow_mismatch=True)
    assert "U[3, 15]" in note and student.timesteps() == [999, 759, 499, 259] and student.nfe() == 4
    cond = torch.tensor([0, 1])
    z = torch.randn(2, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(3))
    noises = _noises(4, 2)
    ours = student.sample(z * base_teacher.init_noise_scale(), cond, lambda j: noises[j])

    lcm_pipe = StableDiffusionXLPipeline.from_pretrained(str(sdxl_dir), local_files_only=True)
    lcm_pipe.scheduler = LCMScheduler.from_config(lcm_pipe.scheduler.config)
    lcm_pipe.load_lora_weights(str(lora_dir))
    lcm_pipe.fuse_lora()
    lcm_pipe.set_progress_bar_config(disable=True)
    _patch_lcm_noise(monkeypatch, noises[1:])
    theirs = lcm_pipe([CAPTIONS[0], CAPTIONS[1]], num_inference_steps=4, guidance_scale=1.0, latents=z.clone(),
                      output_type="latent").images
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert float((ours - theirs).abs().max()) < 1e-4 and float(ours.std()) > 0.1
    # one-step: f at t = 999 by hand, c_skip on the VP latent (LCMScheduler.step)
    ab = float(base_teacher.alphas_cumprod[999])
    with torch.no_grad():
        e, p = base_teacher.condition_inputs(cond, 2)
        eps = student.unet(z, 999, encoder_hidden_states=e, added_cond_kwargs={"text_embeds": p, "time_ids": base_teacher.add_time_ids()[None].expand(2, -1)}).sample
    c_skip, c_out = 0.25 / (9990 ** 2 + 0.25), 9990 / math.sqrt(9990 ** 2 + 0.25)
    one = student.sample(z * base_teacher.init_noise_scale(), cond, lambda j: noises[j], steps=1)
    torch.testing.assert_close(one, c_skip * z + c_out * (z - math.sqrt(1 - ab) * eps) / math.sqrt(ab), rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # the LoRA (random A and B) really changes the network; the teacher's UNet is untouched
        eps_teacher = base_teacher.unet(z, 999, encoder_hidden_states=e, added_cond_kwargs={"text_embeds": p, "time_ids": base_teacher.add_time_ids()[None].expand(2, -1)}).sample
    assert float((eps - eps_teacher).abs().max()) > 1e-2


def test_lcm_sdxl_unet_agrees_with_the_pipeline_and_embeds_w_minus_one(sdxl_dir, base_teacher, tmp_path, monkeypatch):
    from diffusers import LCMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    from odebench.students.load import load_student

    folder = write_lcm_sdxl_unet(tmp_path / "lcm-sdxl")
    # no flag: the embedded w follows the run's teacher ODE (imagen 9 -> lcm-form 8)
    assert load_student(str(folder), base_teacher)[0].embed_w == 8.0
    # --student-guidance 8 (imagen) = pipeline guidance_scale 8 = embedded lcm-form w 7; matches a w = 8 zero-uncond teacher
    teacher8 = base_teacher.with_guidance(Guidance(8.0, "imagen", "zeros"))
    student, note = load_student(str(folder), teacher8, student_guidance=Guidance(7.0, "lcm"))
    assert note is None and student.embed_w == 7.0
    with pytest.raises(OdebenchError, match="distilled for guidance"):
        load_student(str(folder), base_teacher, student_guidance=Guidance(8.0))  # the run's teacher ODE is w = 9
    cond = torch.tensor([2, 3])
    z = torch.randn(2, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(4))
    noises = _noises(3, 2, seed=5)
    ours = student.sample(z * base_teacher.init_noise_scale(), cond, lambda j: noises[j], steps=3)
    unet = UNet2DConditionModel.from_pretrained(str(folder))
    p = StableDiffusionXLPipeline.from_pretrained(str(sdxl_dir), unet=unet, local_files_only=True)
    p.scheduler = LCMScheduler.from_config(p.scheduler.config)
    p.set_progress_bar_config(disable=True)
    _patch_lcm_noise(monkeypatch, noises[1:])
    theirs = p([CAPTIONS[2], CAPTIONS[3]], num_inference_steps=3, guidance_scale=8.0, latents=z.clone(), output_type="latent").images
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", ["released", "kohya", "peft-alpha"])
def test_lora_layouts_load_every_tensor(base_teacher, tmp_path, layout):
    """direct-cms saves convert_state_dict_to_diffusers(peft state): mixed key names, and diffusers' loader
    alone drops the renamed attention LoRAs; kohya files carry alphas; peft files carry lora_alpha in their
    metadata (alpha != rank scales the update). odebench's loader must reproduce peft's own merge exactly."""
    from odebench.students.load import load_student

    ckpt = tmp_path / "checkpoint-500"
    path, merged = write_lcm_lora(base_teacher.unet, ckpt, layout=layout, alpha=8 if layout == "peft-alpha" else None)
    student, _ = load_student(str(ckpt if layout == "released" else path), base_teacher, allow_mismatch=True)
    assert student.convention.name == ("paper" if layout == "released" else "lcm")
    got = student.unet.state_dict()
    assert set(got) == set(merged)
    for k, v in merged.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=k)
    changed = [k for k, v in merged.items() if not torch.equal(v, base_teacher.unet.state_dict()[k])]
    assert any("attn1.to_q" in k for k in changed) and any("conv1" in k for k in changed)


def test_direct_cms_checkpoint_follows_the_released_convention(lora_dir, base_teacher, tmp_path):
    """checkpoint-* of layer6ai-labs/direct-cms: the UNet sees the 1-indexed t, abar is read at t-1,
    c_skip/c_out at t on the VP latent, timesteps [1000, 750, 500, 250]; trained for w = 9 imagen, zero uncond.
    Checked against a few-line re-implementation of its LCM scheduler loop."""
    import shutil

    from odebench.students.load import load_student

    ckpt = tmp_path / "run" / "checkpoint-250"
    ckpt.mkdir(parents=True)
    shutil.copy(lora_dir / "pytorch_lora_weights.safetensors", ckpt)
    student, note = load_student(str(ckpt), base_teacher)
    assert note is None and student.convention.name == "paper" and student.name == "checkpoint-250"
    assert student.trained_for["guidance"]["imagen_w"] == 9.0
    with pytest.raises(OdebenchError, match="distilled for guidance"):
        load_student(str(ckpt), base_teacher.with_guidance(Guidance(3.0)))
    cond = torch.tensor([1, 2])
    z = torch.randn(2, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(6))
    noises = _noises(4, 2, seed=7)
    ours = student.sample(z * base_teacher.init_noise_scale(), cond, lambda j: noises[j], steps=4)

    ac = base_teacher.alphas_cumprod.float()
    e, p = base_teacher.condition_inputs(cond, 2)
    ids = base_teacher.add_time_ids()[None].expand(2, -1)
    x = z.clone()
    ts = [1000, 750, 500, 250]
    for i, t in enumerate(ts):
        with torch.no_grad():
            eps = student.unet(x, t, encoder_hidden_states=e, added_cond_kwargs={"text_embeds": p, "time_ids": ids}).sample
        a = ac[t - 1]
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        c_skip, c_out = 0.25 / ((10 * t) ** 2 + 0.25), 10 * t / ((10 * t) ** 2 + 0.25) ** 0.5
        x0 = c_skip * x + c_out * x0
        x = x0 if i == len(ts) - 1 else ac[ts[i + 1] - 1].sqrt() * x0 + (1 - ac[ts[i + 1] - 1]).sqrt() * noises[i + 1]
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def test_odebench_sdxl_student_round_trip(base_teacher, tmp_path):
    """The odebench format with a UNet2DConditionModel: UNetLCM's convention (UNet at t-1, c_skip on the
    VE state at the paper's t), loaded with no flags."""
    from odebench.students.lcm_sdxl import export_sdxl_lcm_student
    from odebench.students.load import load_student

    unet = __import__("copy").deepcopy(base_teacher.unet)
    torch.manual_seed(0)
    for prm in unet.parameters():
        prm.data.add_(0.01 * torch.randn_like(prm))
    side = export_sdxl_lcm_student(tmp_path / "s", unet, base_teacher, steps=2)
    data = json.loads(side.read_text())
    assert data["architecture"]["unet_class"] == "UNet2DConditionModel" and data["architecture"]["kind"] == "unet-lcm"
    student, note = load_student(str(side), base_teacher, conditional=True)
    assert note is None and student.steps == 2 and student.timesteps() == [1000, 500]
    x = torch.randn(2, 4, LATENT, LATENT) * 3
    cond = torch.tensor([0, 3])
    t = 500
    s = float(base_teacher.sigmas[t - 1])
    e, p = base_teacher.condition_inputs(cond, 2)
    with torch.no_grad():
        eps = unet(x / math.sqrt(1 + s * s), t - 1, encoder_hidden_states=e,
                   added_cond_kwargs={"text_embeds": p, "time_ids": base_teacher.add_time_ids()[None].expand(2, -1)}).sample
    c_skip, c_out = 0.25 / ((10 * t) ** 2 + 0.25), 10 * t / ((10 * t) ** 2 + 0.25) ** 0.5
    torch.testing.assert_close(student(x, s, cond), c_skip * x + c_out * (x - s * eps), rtol=1e-4, atol=1e-4)
    with pytest.raises(OdebenchError, match="trained for guidance"):
        load_student(str(side), base_teacher.with_guidance(Guidance(2.0)), conditional=True)


# ---------------------------------------------------------------------------- references --

def test_paper_ddim100_reproduces_the_released_loop(base_teacher, pipe):
    """Paper mode: DDIM on the 1-indexed 100-point grid, imagen w = 9, zero uncond, UNet given the
    integer t while abar is read at t - 1 (the released scheduler_ddim.py), against a few-line loop."""
    from odebench.ode.paper_grid import grid_for, solve_on_grid

    teacher = base_teacher.with_timestep_shift(1)
    cond = torch.tensor([0, 2])
    z = torch.randn(2, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(8))
    before = teacher.counter.snapshot()
    ours = solve_on_grid(teacher, z * teacher.init_noise_scale(), torch.zeros(2, dtype=torch.long), grid_for(teacher, 100), cond)
    spent = teacher.counter.since(before)
    assert spent.calls == 100 and spent.passes == 400  # 100 steps x 2 samples x 2 CFG branches

    with torch.no_grad():
        pe, ne, pp, npp = pipe.encode_prompt([CAPTIONS[0], CAPTIONS[2]], device="cpu", do_classifier_free_guidance=True)
    ids = torch.tensor([[16, 16, 0, 0, 16, 16]], dtype=torch.float32).expand(4, -1)
    ac = pipe.scheduler.alphas_cumprod  # diffusers' float32 table
    ts = list(range(1000, 0, -10))
    x = z.clone()
    for i, t in enumerate(ts):
        with torch.no_grad():
            out = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([ne, pe]),
                            added_cond_kwargs={"text_embeds": torch.cat([npp, pp]), "time_ids": ids}).sample
        eps_u, eps_c = out.chunk(2)
        eps = eps_u + 9.0 * (eps_c - eps_u)
        a = ac[t - 1]
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        x = x0 if i == len(ts) - 1 else ac[ts[i + 1] - 1].sqrt() * x0 + (1 - ac[ts[i + 1] - 1]).sqrt() * eps
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=2e-4)  # measured 6e-5 on values up to 44 (float64 vs float32 abar)
    # the default grid (UNet at t - 1, consistent with sigma) is a different solve
    plain = solve_on_grid(base_teacher, z * base_teacher.init_noise_scale(), torch.zeros(2, dtype=torch.long),
                          grid_for(base_teacher, 100), cond)
    assert float((plain - ours).abs().max()) > 1e-3
    assert teacher.ode_identity()["timestep_shift"] == 1.0 and "timestep_shift" not in base_teacher.ode_identity()


def test_reference_solve_counts_unet_passes(base_teacher):
    from odebench.ode.reference import solve_reference
    from odebench.ode.spec import SolverSpec

    teacher = base_teacher.with_guidance(Guidance(3.0))
    z = torch.randn(2, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(9))
    before = teacher.counter.snapshot()
    sol = solve_reference(teacher, z * teacher.init_noise_scale(), torch.tensor([0, 1]),
                          SolverSpec(rtol=1e-3, atol=1e-3, dtype="float32"))
    spent = teacher.counter.since(before)
    assert sol.x0.dtype == torch.float32 and torch.isfinite(sol.x0).all()
    assert spent.calls == sol.nfe and spent.passes == 2 * 2 * sol.nfe  # CFG doubles the UNet passes


# ------------------------------------------------------------------------------ the run --

def test_odebench_run_on_tiny_sdxl_end_to_end(sdxl_dir, lora_dir, tmp_path, monkeypatch):
    """`odebench run --teacher DIR --student LORA --student checkpoint-* --prompts FILE ...` through the
    CLI: shared reference, paper-mode DDIM-100, decoded images, the four image metrics on tiny
    backbones loaded from --*-weights files, the LCM-LoRA flagged as having no matching reference."""
    import shutil

    from typer.testing import CliRunner

    from odebench.cli import app
    from tiny_backbones import write_tiny_aesthetic, write_tiny_clip, write_tiny_dinov2, write_tiny_inception

    monkeypatch.setenv("ODEBENCH_WEIGHTS", str(tmp_path / "no-weights"))
    write_tiny_inception(tmp_path / "inception.pt")
    write_tiny_dinov2(tmp_path / "dinov2")
    _, clip_path = write_tiny_clip(tmp_path)
    write_tiny_aesthetic(tmp_path / "aesthetic.pth")
    ckpt = tmp_path / "paper" / "checkpoint-100"
    ckpt.mkdir(parents=True)
    shutil.copy(lora_dir / "pytorch_lora_weights.safetensors", ckpt)
    (tmp_path / "captions.txt").write_text("\n".join(CAPTIONS[:3]) + "\n")
    common = ["run", "--teacher", str(sdxl_dir), "--prompts", str(tmp_path / "captions.txt"), "--samples", "4",
              "--curve-points", "2", "--curve-samples", "2", "--floor-samples", "2", "--ref-batch", "4",
              "--rtol", "1e-3", "--atol", "1e-3", "--device", "cpu", "--fd-bootstrap", "0", "--dtype", "fp32", "--out", str(tmp_path / "runs")]
    runner = CliRunner()
    res = runner.invoke(app, [*common, "--student", str(lora_dir), "--student", str(ckpt), "--student", "ddim:2",
                              "--allow-mismatch", "--fid-weights", str(tmp_path / "inception.pt"),
                              "--dinov2-weights", str(tmp_path / "dinov2"), "--clip-weights", str(clip_path),
                              "--clip-arch", "odebench-tiny-clip", "--aesthetic-weights", str(tmp_path / "aesthetic.pth"),
                              "--cmmd-weights", str(clip_path), "--cmmd-arch", "odebench-tiny-clip"])
    assert res.exit_code == 0, res.output
    runs = tmp_path / "runs"
    lora = json.loads((runs / lora_dir.name / "result.json").read_text())
    paper = json.loads((runs / "checkpoint-100" / "result.json").read_text())
    ddim = json.loads((runs / "ddim-2" / "result.json").read_text())
    for r in (lora, paper, ddim):
        assert {"ode_mse@ref", "ode_mse@ddim100", "fid@teacher", "fd_dinov2@teacher", "clip_score", "aesthetic",
                "cmmd@teacher", "density_inception@teacher", "coverage_dinov2@teacher"} <= set(r["metrics"])
        assert r["conditioning"]["mode"] == "prompt" and r["conditioning"]["num_prompts"] == 3
        assert "released code" in r["reference"]["ddim100"]["unet_timesteps"]
        assert r["extras"]["skipped_metrics"] == {}
    assert any(f.startswith("teacher-mismatch") and "U[3, 15]" in f for f in lora["flags"])
    assert not any(f.startswith("teacher-mismatch") for f in paper["flags"])
    assert paper["student"]["timesteps"] == [1000, 750, 500, 250] and lora["student"]["timesteps"] == [999, 759, 499, 259]
    assert ddim["nfe"]["student_teacher_passes"] == 2 * 2 * 4  # 2 steps, CFG, 4 samples
    assert 0.0 < lora["metrics"]["ode_mse@ref"]["value"] and lora["teacher"]["guidance"]["imagen_w"] == 9.0
    assert (runs / "ddim-2" / "samples.png").is_file()
    # auto metrics without weights: skipped, each with its reason, and the run still succeeds
    res = runner.invoke(app, [*common, "--student", "ddim:1", "--name", "auto"])
    assert res.exit_code == 0, res.output
    auto = json.loads((runs / "auto" / "result.json").read_text())
    assert set(auto["extras"]["skipped_metrics"]) == {"fid", "fd_dinov2", "clip_score", "aesthetic", "cmmd"}
    assert "skipped fid" in res.output and "fid@teacher" not in auto["metrics"]
    # an explicit selection is required: missing weights are a one-line error
    res = runner.invoke(app, [*common, "--student", "ddim:1", "--name", "x", "--metrics", "fid"])
    assert res.exit_code == 2 and "inception-2015-12-05.pt" in res.output
    res = runner.invoke(app, [*common, "--student", "ddim:1", "--name", "x", "--metrics", "fidd"])
    assert res.exit_code == 2 and "unknown metric" in res.output
    res = runner.invoke(app, ["run", "--teacher", "gmm", "--prompts", str(tmp_path / "captions.txt"), "--samples", "4"])
    assert res.exit_code == 2 and "text-conditioned" in res.output


def test_uncached_hub_student_is_a_one_line_error(base_teacher, lora_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    from odebench.students.load import load_student

    monkeypatch.setenv("ODEBENCH_WEIGHTS", str(tmp_path))
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(OdebenchError) as e:
        load_student("latent-consistency/lcm-lora-sdxl", base_teacher)
    assert "latent-consistency/lcm-lora-sdxl" in str(e.value) and "nothing is downloaded" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(OdebenchError, match="unknown student convention"):
        load_student(str(lora_dir), base_teacher, student_convention="nope")
    # a declared convention and guidance make the LCM-LoRA comparable with the run's ODE
    student, note = load_student(str(lora_dir), base_teacher, student_guidance=Guidance(8.0, "lcm"), student_convention="lcm")
    assert note is None and student.trained_for["guidance"]["imagen_w"] == 9.0
