"""SDXL on a tiny random SDXL (tests/sdxl_tiny.py) loaded through the real loading path, checked
against diffusers' own StableDiffusionXLPipeline, LCMScheduler and an independent re-implementation
of the paper's DDIM loop."""
import json
import math
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from sdxl_tiny import CAPTIONS, LATENT, build_tiny_sdxl, write_lcm_lora, write_lcm_sdxl_unet  # noqa: E402

from odebench.errors import OdebenchError  # noqa: E402
from odebench.teachers.base import Guidance  # noqa: E402


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    torch.set_num_threads(1)


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
    from odebench.teachers.sdxl import SDXLTeacher, is_sdxl_spec

    t = base_teacher
    assert isinstance(t, SDXLTeacher) and t.shape == (4, LATENT, LATENT) and (t.height, t.width) == (16, 16)
    assert t.guidance == Guidance(9.0, "imagen", "zeros") and t.prediction == "epsilon"
    assert 0.029 < t.sigma_min < 0.03 and 14.6 < t.sigma_max < 14.7
    assert all(len(tok) > 2 for tok in t.tokenizers)
    assert is_sdxl_spec("sdxl") and is_sdxl_spec(str(sdxl_dir)) and is_sdxl_spec("org/model") and not is_sdxl_spec("gmm")
    # a hub id resolves from $ODEBENCH_WEIGHTS/<name> (as from the HF cache), never downloads
    monkeypatch.setenv("ODEBENCH_WEIGHTS", str(sdxl_dir.parent))
    from odebench.teachers import load_teacher

    other = load_teacher("someorg/model", device="cpu", dtype="bf16", height=32, width=16)
    assert other.unet_dtype == torch.bfloat16 and other.shape == (4, 16, 8)
    assert other.add_time_ids().tolist() == [32, 16, 0, 0, 32, 16]
    assert other.fingerprint() != t.fingerprint()  # the output size is part of the ODE (add_time_ids)


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
    with pytest.raises(OdebenchError, match="SDXL teachers only"):
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
