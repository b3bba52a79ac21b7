"""Stable Diffusion XL as an odebench teacher (odebench.teachers.text_to_image holds what it shares with SD).

SDXL's own parts:
  - prompt embeddings as StableDiffusionXLPipeline.encode_prompt builds them: each CLIP encoder's
    penultimate hidden states, concatenated on the feature axis; the pooled embedding is the second
    encoder's projected `text_embeds`;
  - add_time_ids = (original H, W, crop top, left = 0, 0, target H, W) in pixels, for the output size;
  - the unconditional branch is zero embeddings by default (the paper; the pipeline's
    force_zeros_for_empty_prompt) or the encoded empty prompt; the default ODE is the paper's, imagen w = 9.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from odebench.errors import OdebenchError
from odebench.teachers.family import PaperGrid, register
from odebench.teachers.text_condition import EncodedPrompts
from odebench.teachers.text_to_image import (MODEL_DTYPES, TextToImageFamily, TextToImageTeacher,  # noqa: F401 (re-exported)
                                             guidance_scale_embedding, weights_file as _weights_file)

SDXL_HUB_ID = "stabilityai/stable-diffusion-xl-base-1.0"
FP16_FIX_VAE = "madebyollin/sdxl-vae-fp16-fix"


class SDXLTeacher(TextToImageTeacher):
    """D(x, sigma, prompt index) of SDXL base through the discrete-schedule adapter."""

    family = "sdxl"
    title = "SDXL"
    pipeline = "StableDiffusionXLPipeline"
    default_w = 9.0  # the paper's teacher ODE: imagen w = 9, zero uncond
    default_uncond = "zeros"

    def conditioning_identity(self) -> dict[str, Any]:
        return {"add_time_ids": self.add_time_ids().tolist()}

    def add_time_ids(self) -> torch.Tensor:
        """SDXL micro-conditioning for the output size: original (H, W), crop (0, 0), target (H, W)."""
        return torch.tensor([self.height, self.width, 0, 0, self.height, self.width], dtype=torch.float32)

    def time_ids(self, cond, batch: int) -> torch.Tensor:
        """add_time_ids per item: the training image's own (EncodedPrompts), else the output size's."""
        if isinstance(cond, EncodedPrompts):
            return cond.time_ids
        return self.add_time_ids().expand(batch, -1)

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeds (N, 77, D1 + D2), pooled (N, P)) as encode_prompt: penultimate hidden states of both
        encoders concatenated; pooled = text_embeds of the second (projection) encoder."""
        embeds, pooled = [], None
        for tok, te in zip(self.tokenizers, self.text_encoders):
            ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids
            out = te(ids.to(te.device), output_hidden_states=True)
            embeds.append(out.hidden_states[-2].float())  # kept on the device: no copy per NFE
            if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds
                pooled = out[0].float()
        if pooled is None:
            raise OdebenchError("the second text encoder gave no pooled text_embeds (expected CLIPTextModelWithProjection)")
        return torch.cat(embeds, dim=-1), pooled

    def uncond_zeros(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        width = sum(int(te.config.hidden_size) for te in self.text_encoders)
        length = int(self.tokenizers[0].model_max_length)
        return (torch.zeros(batch, length, width, device=self.device),
                torch.zeros(batch, int(self.text_encoders[-1].config.projection_dim), device=self.device))


class SDXLFamily(TextToImageFamily):
    name = "sdxl"
    title = "SDXL"
    help = "Stable Diffusion XL: a diffusers StableDiffusionXLPipeline folder or cached hub id"
    presets = {"sdxl": f"Stable Diffusion XL base 1.0 ({SDXL_HUB_ID}) from the local HF cache; also any diffusers SDXL "
                       "folder or cached hub id"}
    preset_ids = {"sdxl": SDXL_HUB_ID}
    teacher_class = SDXLTeacher
    encoders = (("text_encoder", "CLIPTextModel"), ("text_encoder_2", "CLIPTextModelWithProjection"))
    paper_grid = PaperGrid(unet_timesteps="paper")  # the released code's UNet timestep (PAPER.md)
    default_rows = ("ddim:4", "ddim:8", "ref")


def load_sdxl_teacher(spec: str | Path = "sdxl", **options) -> SDXLTeacher:
    """An SDXL teacher from a diffusers folder or a locally cached hub id (`sdxl` = SDXL base 1.0); options as
    odebench.teachers.text_to_image.load_text_to_image_teacher (vae, dtype, device, height, width, uncond)."""
    return FAMILY.load(str(spec), **options)


FAMILY = register(SDXLFamily())
