"""LoRA students through peft, shared by the text-to-image trainers (SDXL UNet, SD3 / FLUX transformers).

`add_lora`: peft adapters on the named target modules (dropout 0, gaussian A, B = 0 at start, so the student
starts as the teacher; float32 adapters even on fp16 weights, peft's autocast_adapter_dtype). `save_lora`: the
adapters alone in diffusers' layout for the network's pipeline class (`pytorch_lora_weights.safetensors`, rank
and alpha in its metadata), loadable by diffusers pipelines and by odebench's LoRA loaders.
"""
from __future__ import annotations

import torch

from odebench.errors import OdebenchError


def add_lora(network, targets, rank: int, alpha: float, seed: int = 0, require_all: bool = True, what: str = "network"):
    """`network` wrapped with peft LoRA on the modules named (or suffixed) by `targets`; with `require_all` every
    target must exist, else those that exist are used (at least one)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise OdebenchError("LoRA training needs peft: pip install 'odebench[train]'") from None
    present = {name for name, _ in network.named_modules()}
    found = [t for t in targets if any(n == t or n.endswith("." + t) for n in present)]
    missing = [t for t in targets if t not in found]
    if (require_all and missing) or not found:
        raise OdebenchError(f"the {what} has none of the LoRA target modules {', '.join(missing or targets)}")
    torch.manual_seed(seed)  # the LoRA A init, reproducibly
    return get_peft_model(network, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, init_lora_weights="gaussian",
                                              target_modules=found))


def save_lora(peft_model, folder, pipeline: str, component: str) -> None:
    """The adapters of `peft_model` (a PeftModel around the pipeline's `component`: unet or transformer) written with
    `pipeline`.save_lora_weights. alpha / rank is folded into B and alpha written as the rank: loaders that ignore
    the metadata (and assume alpha = rank) then apply the same delta."""
    import diffusers
    from peft.utils import get_peft_model_state_dict

    config = peft_model.peft_config["default"].to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    scale = float(config["lora_alpha"]) / float(config["r"])
    config["lora_alpha"] = config["r"]
    # PeftModel keys carry a "base_model.model." prefix that diffusers' loaders do not expect
    state = {k.removeprefix("base_model.model."): (v.detach().float().cpu() * (scale if ".lora_B." in k else 1.0)).contiguous()
             for k, v in get_peft_model_state_dict(peft_model).items()}
    getattr(diffusers, pipeline).save_lora_weights(str(folder), **{f"{component}_lora_layers": state,
                                                                   f"{component}_lora_adapter_metadata": config})
