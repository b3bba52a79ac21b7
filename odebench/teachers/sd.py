"""Stable Diffusion 1.x / 2.x as odebench teachers (what they share with SDXL is in odebench.teachers.text_to_image).

One CLIP text encoder: the prompt embedding is its last hidden state (after the final layer norm, with
the attention mask when the encoder's config asks for one), as StableDiffusionPipeline.encode_prompt
builds it; no pooled embedding, no micro-conditioning. The prediction type comes from the scheduler
config: epsilon (SD 1.x, SD 2.x-base), v_prediction (SD 2.x 768-v) or sample; zero-terminal-SNR schedules
(`rescale_betas_zero_snr`) are handled by the discrete adapter (odebench.teachers.discrete). The default
teacher ODE is the pipeline's: imagen w = 7.5 with the empty prompt as the unconditional branch.
"""
from __future__ import annotations

import torch

from odebench.teachers.family import PaperGrid, register
from odebench.teachers.text_to_image import TextToImageFamily, TextToImageTeacher


class SDTeacher(TextToImageTeacher):
    """D(x, sigma, prompt index) of a StableDiffusionPipeline's UNet through the discrete-schedule adapter."""

    family = "sd"
    title = "SD"
    pipeline = "StableDiffusionPipeline"

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, None]:
        tok, te = self.tokenizers[0], self.text_encoders[0]
        inputs = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        mask = inputs.attention_mask.to(te.device) if getattr(te.config, "use_attention_mask", False) else None
        return te(inputs.input_ids.to(te.device), attention_mask=mask)[0].float(), None

    def uncond_zeros(self, batch: int) -> tuple[torch.Tensor, None]:
        length, width = int(self.tokenizers[0].model_max_length), int(self.text_encoders[0].config.hidden_size)
        return torch.zeros(batch, length, width, device=self.device), None


class SDFamily(TextToImageFamily):
    name = "sd"
    title = "SD"
    help = "Stable Diffusion 1.x / 2.x: a diffusers StableDiffusionPipeline folder or cached hub id (eps or v-prediction)"
    preset_ids = {"sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5", "sd21": "stabilityai/stable-diffusion-2-1",
                  "sd21-base": "stabilityai/stable-diffusion-2-1-base"}
    presets = {"sd15": "Stable Diffusion 1.5 (eps) from the local HF cache",
               "sd21": "Stable Diffusion 2.1 768-v (v-prediction) from the local HF cache",
               "sd21-base": "Stable Diffusion 2.1-base 512 (eps) from the local HF cache"}
    teacher_class = SDTeacher
    encoders = (("text_encoder", "CLIPTextModel"),)
    paper_grid = PaperGrid()
    default_rows = ("ddim:4", "ddim:8", "ref")


FAMILY = register(SDFamily())
