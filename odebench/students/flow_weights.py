"""A flow student's network for a flow-transformer teacher (the TRANSFORMER capability: SD3 / SD3.5, FLUX.1):
a LoRA fused into a copy of the teacher's transformer, or a full transformer folder.

LoRA files are read by diffusers' LoRA loader of the teacher's pipeline class (StableDiffusion3Pipeline /
FluxPipeline `lora_state_dict`: diffusers and peft key layouts, the adapter's lora_alpha from the file's
metadata; for FLUX also the kohya / xlabs layouts diffusers converts), then loaded into the transformer
with `load_lora_adapter` and fused at the card's scale (what `pipe.load_lora_weights(...); pipe.fuse_lora(
lora_scale=scale)` does). Only .safetensors files are read.
"""
from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path

from odebench.errors import OdebenchError
from odebench.students.lcm_sdxl import LORA_FILES, _lora_file

TRANSFORMER_CLASSES = ("SD3Transformer2DModel", "FluxTransformer2DModel")


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)[:300]


def lora_transformer(teacher, path: Path, weight_name: str | None = None, scale: float = 1.0):
    """(a copy of the teacher's transformer with the LoRA fused in at `scale`, the LoRA file)."""
    import diffusers

    weights = (path / weight_name if weight_name else _lora_file(path)) if path.is_dir() else path
    if weights is None or not weights.is_file():
        raise OdebenchError(f"{path}: no {weight_name or ' or '.join(LORA_FILES)} found")
    if weights.suffix != ".safetensors":
        raise OdebenchError(f"{weights}: only .safetensors LoRA files are loaded (a .bin file may hold pickled code)")
    transformer = copy.deepcopy(teacher.transformer)
    loader = getattr(diffusers, teacher.pipeline)
    try:
        from diffusers.utils import convert_unet_state_dict_to_peft
        from peft.utils import get_peft_model_state_dict

        # FluxPipeline's loader pops per-module alphas out of the state dict: ask for them back
        extra = {"return_alphas": True} if "return_alphas" in inspect.signature(loader.lora_state_dict).parameters else {}
        out = loader.lora_state_dict(str(weights.parent), weight_name=weights.name, local_files_only=True,
                                     use_safetensors=True, return_lora_metadata=True, **extra)
        state, metadata = out[0], out[-1]
        alphas = out[1] if extra else None
        odd = [k for k in state if k.startswith("transformer.") and "lora" not in k]
        if odd:  # e.g. per-module alphas, which StableDiffusion3Pipeline refuses too: never drop a scale silently
            raise OdebenchError(f"{weights}: {len(odd)} transformer keys are not LoRA weights (e.g. {odd[0]}); "
                                f"{teacher.pipeline}'s LoRA loader does not read them")
        sub = {k[len("transformer."):]: v for k, v in state.items() if k.startswith("transformer.") and "lora" in k}
        if not sub:
            raise OdebenchError(f"{weights}: no transformer LoRA weights in the file (keys start with 'transformer.')")
        # one key layout (peft's lora_A/B): diffusers converts only when the first key is in the old lora.down/up one
        peft_sd = convert_unet_state_dict_to_peft(sub)
        kw = {"metadata": metadata} if metadata else {"network_alphas": alphas or None}
        transformer.load_lora_adapter({f"transformer.{k}": v for k, v in peft_sd.items()}, prefix="transformer",
                                      adapter_name="student", **kw)
        loaded = len(get_peft_model_state_dict(transformer, adapter_name="student"))
        if loaded != len(peft_sd):
            raise OdebenchError(f"{weights}: only {loaded} of {len(peft_sd)} LoRA tensors fit the teacher's transformer")
        transformer.fuse_lora(lora_scale=float(scale))
        transformer.unload_lora()
    except OdebenchError:
        raise
    except Exception as e:
        raise OdebenchError(f"cannot load the LoRA {weights} onto the teacher's transformer: {_first_line(e)}") from None
    return transformer.eval().requires_grad_(False), weights


def load_transformer(teacher, folder: Path, where: str):
    """A full transformer folder (or a pipeline folder's transformer/), in the teacher's dtype and on its device."""
    import diffusers

    if (folder / "transformer" / "config.json").is_file():
        folder = folder / "transformer"
    try:
        name = json.loads((folder / "config.json").read_text()).get("_class_name")
    except (OSError, ValueError):
        raise OdebenchError(f"{where}: {folder} has no readable config.json (expected a transformer folder)") from None
    if name not in TRANSFORMER_CLASSES:
        raise OdebenchError(f"{where}: {folder} holds a {name!r}, not a flow transformer ({', '.join(TRANSFORMER_CLASSES)})")
    if name != type(teacher.transformer).__name__:
        raise OdebenchError(f"{where}: a {name} student cannot run on the {type(teacher.transformer).__name__} teacher's pipeline")
    try:
        transformer = getattr(diffusers, name).from_pretrained(str(folder), torch_dtype=teacher.transformer_dtype,
                                                               local_files_only=True, use_safetensors=True)
    except Exception as e:
        raise OdebenchError(f"{where}: cannot load the transformer {folder}: {_first_line(e)}") from None
    return transformer.to(teacher.device).eval().requires_grad_(False), folder
