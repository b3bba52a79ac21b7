"""Tiny random Stable Diffusion 1.x / 2.x pipelines (DESIGN.md section 9), saved the way the real models
are laid out on disk: UNet2DConditionModel without added conditioning (cross-attention on one CLIP
encoder's hidden states), one tiny CLIP text encoder and tokenizer (tests/sdxl_tiny.py builds them), a tiny
AutoencoderKL, and the scheduler config of SD 1.5 (eps, PNDM) or SD 2.1 768-v (v-prediction, DDIM), or
a zero-terminal-SNR v-prediction schedule. `zero_unet` makes the UNet's output exactly zero (conv_out
weights and bias zeroed): with v-prediction the teacher is then the exact denoiser of N(0, I) data.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from sdxl_tiny import HIDDEN, LATENT, text_config, tiny_vae, write_tokenizer

SD15_SCHEDULER = {  # runwayml/stable-diffusion-v1-5's scheduler_config.json
    "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "trained_betas": None, "prediction_type": "epsilon", "timestep_spacing": "leading",
}
SD21V_SCHEDULER = {  # stabilityai/stable-diffusion-2-1's scheduler_config.json
    "_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None, "timestep_spacing": "leading",
}
ZSNR_SCHEDULER = {**SD21V_SCHEDULER, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "steps_offset": 0}
SCHEDULERS = {"sd15": SD15_SCHEDULER, "sd21v": SD21V_SCHEDULER, "zsnr": ZSNR_SCHEDULER}


def tiny_sd_unet(seed: int = 0, time_cond_proj_dim: int | None = None):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=LATENT, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), cross_attention_dim=HIDDEN, norm_num_groups=4,
        time_cond_proj_dim=time_cond_proj_dim).eval()


def build_tiny_sd(root: Path, kind: str = "sd15", seed: int = 0, zero_unet: bool = False) -> Path:
    """Write a tiny StableDiffusionPipeline folder; kind sd15 (eps) | sd21v (v-prediction) | zsnr."""
    from transformers import CLIPTextModel, CLIPTokenizer

    root.mkdir(parents=True, exist_ok=True)
    write_tokenizer(root / "tokenizer")
    tok = CLIPTokenizer.from_pretrained(str(root / "tokenizer"))
    assert len(tok) > 2
    torch.manual_seed(seed + 1)
    CLIPTextModel(text_config(tok)).eval().save_pretrained(str(root / "text_encoder"))
    unet = tiny_sd_unet(seed)
    if zero_unet:
        with torch.no_grad():
            unet.conv_out.weight.zero_()
            unet.conv_out.bias.zero_()
    unet.save_pretrained(str(root / "unet"))
    vae = tiny_vae(seed)
    vae.register_to_config(scaling_factor=0.18215)  # SD 1.x / 2.x's latent scale
    vae.save_pretrained(str(root / "vae"))
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULERS[kind]))
    index = {"_class_name": "StableDiffusionPipeline", "requires_safety_checker": False,
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", SCHEDULERS[kind]["_class_name"]], "safety_checker": [None, None],
             "feature_extractor": [None, None]}
    (root / "model_index.json").write_text(json.dumps(index))
    return root
