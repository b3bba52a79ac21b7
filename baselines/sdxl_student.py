"""The trainable SDXL consistency student: the paper's LCM parameterisation on a LoRA'd SDXL UNet.

f(x, sigma) = c_skip(t) x_vp + c_out(t) x0_hat, x_vp = x / sqrt(1 + sigma^2), x0_hat = x - sigma eps,
with the paper's 1-indexed integer t: a noise level sigma_{t-1} of the schedule is timestep t, the
UNet is given t and the LCM scalings are taken at t (PAPER.md; direct-cms' convention "paper" in
odebench.students.lcm_sdxl: UNet at abar index + 1, scalings at abar index + 1, c_skip on the VP
latent); sigma = 0 is t = 0, where f(x, 0) = x: the one consistency function of
odebench.students.lcm with the `paper` convention, the same the loaded student evaluates under no_grad.
"""
from __future__ import annotations

import torch
from torch import nn

from baselines.lora import add_lora, save_lora as save_lora_weights
from odebench.errors import OdebenchError
from odebench.students.lcm import PAPER, lcm_consistency
from odebench.teachers.text_condition import EncodedPrompts

# The LoRA targets of the paper's script (diffusers' SDXL LCM-LoRA script): attention projections,
# feed-forward, resnet convs and shortcuts, down/upsampler convs, the resnets' time-embedding projections.
SDXL_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                     "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")


def sdxl_lora(unet, rank: int, alpha: float, seed: int = 0):
    """peft LoRA (dropout 0, B = 0 at start: the student starts as the teacher) on the paper's targets.
    The adapter weights are float32 even on an fp16 UNet (peft's autocast_adapter_dtype)."""
    return add_lora(unet, SDXL_LORA_TARGETS, rank, alpha, seed, require_all=True, what="UNet")


class SDXLPaperLCM(nn.Module):
    """model(x, sigma, cond) -> f for VE states x (float32, any device), cond: EncodedPrompts."""

    state_dtype = torch.float32  # the ODE state; the frozen UNet weights may be fp16

    def __init__(self, unet, teacher) -> None:
        super().__init__()
        self.unet = unet
        self.log_sigmas = teacher.log_sigmas.clone()  # float64, CPU; not a buffer (DDP would broadcast it)
        self.sigma_min = float(teacher.sigma_min)
        self.prediction = teacher.prediction
        self.device = teacher.device

    def checkpoint_keys(self) -> list[str]:
        """Only the trained (LoRA) tensors go into resumable checkpoints, not the frozen UNet."""
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: EncodedPrompts) -> torch.Tensor:
        if not isinstance(cond, EncodedPrompts):
            raise OdebenchError("the SDXL student is conditioned on encoded captions (EncodedPrompts)")
        dev = self.device

        def model(x_vp, t):
            eps = self.unet(x_vp.to(dev), t.float().to(dev), encoder_hidden_states=cond.embeds.to(dev),
                            added_cond_kwargs={"text_embeds": cond.pooled.to(dev), "time_ids": cond.time_ids.to(dev)}).sample
            return eps.float().to(x_vp.device)

        return lcm_consistency(x.float(), sigma, model, self.log_sigmas, self.prediction, PAPER)


def save_lora(peft_unet, folder) -> None:
    """The LoRA alone in diffusers' layout (`pytorch_lora_weights.safetensors`, rank and alpha in its
    metadata): megabytes instead of the merged UNet's gigabytes, loadable by diffusers pipelines and by
    `odebench run --student FOLDER --student-convention paper --student-guidance W`."""
    save_lora_weights(peft_unet, folder, "StableDiffusionXLPipeline", "unet")
