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
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise OdebenchError("SDXL LoRA training needs peft: pip install 'odebench[train]'") from None
    present = {name for name, _ in unet.named_modules()}
    missing = [t for t in SDXL_LORA_TARGETS if not any(n == t or n.endswith("." + t) for n in present)]
    if missing:
        raise OdebenchError(f"the UNet has none of the LoRA target modules {', '.join(missing)} (not an SDXL UNet?)")
    torch.manual_seed(seed)  # the LoRA A init, reproducibly
    return get_peft_model(unet, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, init_lora_weights="gaussian",
                                           target_modules=list(SDXL_LORA_TARGETS)))


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
    from diffusers import StableDiffusionXLPipeline
    from peft.utils import get_peft_model_state_dict

    config = peft_unet.peft_config["default"].to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    # alpha / rank is folded into B and alpha written as the rank: loaders that ignore the metadata
    # (and assume alpha = rank) then apply the same delta
    scale = float(config["lora_alpha"]) / float(config["r"])
    config["lora_alpha"] = config["r"]
    # PeftModel keys carry a "base_model.model." prefix that diffusers' UNet loader does not expect
    state = {k.removeprefix("base_model.model."): (v.detach().float().cpu() * (scale if ".lora_B." in k else 1.0)).contiguous()
             for k, v in get_peft_model_state_dict(peft_unet).items()}
    StableDiffusionXLPipeline.save_lora_weights(str(folder), unet_lora_layers=state, unet_lora_adapter_metadata=config)
