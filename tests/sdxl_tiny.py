"""A tiny random SDXL (DESIGN.md section 9), saved the way the real model is laid out on disk.

UNet2DConditionModel with addition_embed_type="text_time", two tiny CLIP text encoders (the second
with a projection: its text_embeds are SDXL's pooled embedding), a byte-level BPE tokenizer built
from a vocab.json/merges.txt written here (model_max_length 77), a tiny AutoencoderKL and SDXL's
scheduler config (scaled_linear betas 0.00085..0.012, 1000 steps, epsilon). Everything is written
with save_pretrained into a diffusers-style folder, so tests load it through the same code path
as stabilityai/stable-diffusion-xl-base-1.0.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

HIDDEN = 32  # each text encoder's width; cross-attention width = 2 * HIDDEN (concatenated)
TIME_EMBED = 8  # addition_time_embed_dim; 6 add_time_ids -> 6 * 8, plus the pooled 32
LATENT = 8  # latent side (pixels = LATENT * vae_scale_factor = 16)

SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "beta_end": 0.012, "num_train_timesteps": 1000, "prediction_type": "epsilon", "steps_offset": 1,
    "timestep_spacing": "leading", "interpolation_type": "linear", "use_karras_sigmas": False,
}
CAPTIONS = ["a red fox in the snow", "a bowl of ramen", "an astronaut riding a horse", "a lighthouse at dusk"]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-character map (written out, not imported)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_tokenizer(folder: Path) -> Path:
    """A CLIP BPE tokenizer: every byte alone and word-final, a few merges, CLIP's special tokens."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges = [("a", "n"), ("t", "h"), ("i", "n"), ("o", "r"), ("th", "e</w>")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    assert len(tok) > 2, "tokenizer built with only its special tokens (transformers-5 trap)"
    tok.save_pretrained(str(folder))
    return folder


def text_config(tok):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=37, num_hidden_layers=3,
                          num_attention_heads=4, max_position_embeddings=77, projection_dim=HIDDEN,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                          hidden_act="gelu", layer_norm_eps=1e-5)


def tiny_unet(seed: int = 0, time_cond_proj_dim: int | None = None):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=LATENT, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 1),
        cross_attention_dim=2 * HIDDEN, addition_embed_type="text_time", addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=6 * TIME_EMBED + HIDDEN, norm_num_groups=4,
        time_cond_proj_dim=time_cond_proj_dim).eval()


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=4, sample_size=2 * LATENT, scaling_factor=0.13025).eval()


def build_tiny_sdxl(root: Path, seed: int = 0) -> Path:
    """Write the tiny SDXL as a diffusers folder (model_index.json and one subfolder per component)."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    root.mkdir(parents=True, exist_ok=True)
    for sub in ("tokenizer", "tokenizer_2"):
        write_tokenizer(root / sub)
    tok = CLIPTokenizer.from_pretrained(str(root / "tokenizer"))
    assert len(tok) > 2
    torch.manual_seed(seed + 1)
    CLIPTextModel(text_config(tok)).eval().save_pretrained(str(root / "text_encoder"))
    torch.manual_seed(seed + 2)
    CLIPTextModelWithProjection(text_config(tok)).eval().save_pretrained(str(root / "text_encoder_2"))
    tiny_unet(seed).save_pretrained(str(root / "unet"))
    tiny_vae(seed).save_pretrained(str(root / "vae"))
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG))
    index = {"_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True,
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "EulerDiscreteScheduler"]}
    (root / "model_index.json").write_text(json.dumps(index))
    return root


def write_lcm_lora(unet, folder: Path, seed: int = 3, rank: int = 4, layout: str = "peft", alpha: float | None = None):
    """A non-trivial fake LCM-LoRA: peft LoRA with random (init_lora_weights=False) A and B.

    layout "peft": pytorch_lora_weights.safetensors through StableDiffusionXLPipeline.save_lora_weights
    with peft keys (returns the path); "released": keys through convert_state_dict_to_diffusers, as
    direct-cms's save hook writes them; "kohya": one lcm_kohya.safetensors with kohya keys and alphas.
    The last two return (path, the UNet's state dict with the LoRA merged by peft) for comparisons;
    so does "peft-alpha": peft keys with lora_alpha = `alpha` != rank, the config in the file's metadata."""
    import copy

    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = copy.deepcopy(unet)
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights=False,
                        target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj",
                                        "ff.net.2", "conv1", "conv2", "time_emb_proj"])
    unet.add_adapter(config)
    # peft key layout throughout by default (convert_state_dict_to_diffusers renames only the attention
    # projections to the old lora.up/down names, which diffusers' own loader then drops)
    layers = get_peft_model_state_dict(unet)
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "kohya":
        from diffusers.utils import convert_state_dict_to_kohya
        from safetensors.torch import save_file

        path = folder / "lcm_kohya.safetensors"
        kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in layers.items()})
        save_file({k: v.contiguous() for k, v in kohya.items()}, str(path))
    else:
        if layout == "released":
            from diffusers.utils import convert_state_dict_to_diffusers

            layers = convert_state_dict_to_diffusers(layers)
        metadata = config.to_dict() if layout == "peft-alpha" else None
        StableDiffusionXLPipeline.save_lora_weights(str(folder), unet_lora_layers=layers, unet_lora_adapter_metadata=metadata)
        path = folder / "pytorch_lora_weights.safetensors"
        if layout == "peft":
            return path
    unet.fuse_lora()
    unet.unload_lora()
    return path, {k: v.detach().clone() for k, v in unet.state_dict().items()}


def write_lcm_sdxl_unet(folder: Path, seed: int = 5, time_cond_proj_dim: int = 16) -> Path:
    """A tiny LCM-SDXL student: a full UNet with a guidance embedding (time_cond_proj_dim)."""
    tiny_unet(seed, time_cond_proj_dim).save_pretrained(str(folder))
    return folder


def write_folder(folder: Path, how: str = "jsonl") -> Path:
    """Four images of different shapes (one smaller than the crop: upscaled) with captions."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sizes = [(24, 40), (40, 24), (16, 16), (12, 20)]  # (H, W)
    rows = []
    for i, (h, w) in enumerate(sizes):
        name = f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
        rows.append({"file_name": name, "text": CAPTIONS[i]})
        if how == "txt":
            (folder / f"img{i}.txt").write_text(CAPTIONS[i] + "\n")
    if how == "jsonl":
        (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif how == "csv":
        (folder / "metadata.csv").write_text("file_name,caption\n" + "".join(f"{r['file_name']},{r['text']}\n" for r in rows))
    return folder
