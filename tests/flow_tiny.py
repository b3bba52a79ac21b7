"""Tiny random SD3 and FLUX.1 pipelines (DESIGN.md section 9), saved the way the real ones are laid out.

SD3: SD3Transformer2DModel, two CLIPTextModelWithProjection encoders (CLIP BPE tokenizers written here),
T5EncoderModel with a Unigram T5 tokenizer built from a vocabulary written here, a 16-channel AutoencoderKL
with SD3's scaling and shift factors, FlowMatchEulerDiscreteScheduler(shift=3). FLUX.1: FluxTransformer2DModel
(guidance embedding on or off), CLIPTextModel + T5, the dynamic-shift scheduler config. Everything goes
through save_pretrained into diffusers folders, so tests load them through the real path.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from sdxl_tiny import write_tokenizer

CLIP = 16  # each CLIP encoder's width (SD3 concatenates two: 32 = T5's width)
T5 = 32
LATENT_CHANNELS = 16
LATENT = 8  # latent side; the VAE's factor is 2, so 16 px
T5_LENGTH = 16  # max_sequence_length the tests use (the pipelines' defaults are 256 / 512)


def write_t5_tokenizer(folder: Path) -> Path:
    """A Unigram T5 tokenizer (tokenizer.json) over letters and a few words, with T5's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(c, -1.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab += [("▁" + w, -0.5) for w in ("a", "the", "red", "fox", "in", "snow", "bowl", "of", "at")] + [("▁", -2.0)]
    tk = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    tok = T5TokenizerFast(tokenizer_object=tk, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0,
                          model_max_length=512)
    assert len(tok) > 2
    tok.save_pretrained(str(folder))
    return folder


def clip_config(tok, hidden: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=77, projection_dim=hidden,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                          hidden_act="gelu", layer_norm_eps=1e-5)


def t5_encoder(tok, seed: int):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=len(tok), d_model=T5, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0,
                                   eos_token_id=1)).eval()


def tiny_vae(seed: int, scaling: float, shift: float):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, block_out_channels=(8, 16),
                         layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, sample_size=2 * LATENT,
                         scaling_factor=scaling, shift_factor=shift, use_quant_conv=False, use_post_quant_conv=False).eval()


def tiny_sd3_transformer(seed: int = 0):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(sample_size=LATENT, patch_size=2, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
                                 num_layers=2, attention_head_dim=8, num_attention_heads=2, joint_attention_dim=T5,
                                 caption_projection_dim=16, pooled_projection_dim=2 * CLIP, pos_embed_max_size=16).eval()


def tiny_flux_transformer(seed: int = 0, guidance_embeds: bool = True):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=1, num_single_layers=1,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=T5,
                                  pooled_projection_dim=CLIP, guidance_embeds=guidance_embeds, axes_dims_rope=(4, 4, 8)).eval()


def build_tiny_sd3(root: Path, seed: int = 0, t5: bool = True) -> Path:
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5TokenizerFast

    root.mkdir(parents=True, exist_ok=True)
    for i, sub in enumerate(("", "_2")):
        write_tokenizer(root / f"tokenizer{sub}")
        tok = CLIPTokenizer.from_pretrained(str(root / f"tokenizer{sub}"))
        torch.manual_seed(seed + 1 + i)
        CLIPTextModelWithProjection(clip_config(tok, CLIP)).eval().save_pretrained(str(root / f"text_encoder{sub}"))
    index = {"_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", "SD3Transformer2DModel"],
             "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "text_encoder": ["transformers", "CLIPTextModelWithProjection"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
             "text_encoder_3": [None, None], "tokenizer_3": [None, None],
             "image_encoder": [None, None], "feature_extractor": [None, None]}
    if t5:
        write_t5_tokenizer(root / "tokenizer_3")
        t5_encoder(T5TokenizerFast.from_pretrained(str(root / "tokenizer_3")), seed + 3).save_pretrained(str(root / "text_encoder_3"))
        index.update(text_encoder_3=["transformers", "T5EncoderModel"], tokenizer_3=["transformers", "T5TokenizerFast"])
    tiny_sd3_transformer(seed).save_pretrained(str(root / "transformer"))
    tiny_vae(seed, 1.5305, 0.0609).save_pretrained(str(root / "vae"))
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}))
    (root / "model_index.json").write_text(json.dumps(index))
    return root


def build_tiny_flux(root: Path, seed: int = 0, guidance_embeds: bool = True) -> Path:
    from transformers import CLIPTextModel, CLIPTokenizer, T5TokenizerFast

    root.mkdir(parents=True, exist_ok=True)
    write_tokenizer(root / "tokenizer")
    tok = CLIPTokenizer.from_pretrained(str(root / "tokenizer"))
    torch.manual_seed(seed + 1)
    CLIPTextModel(clip_config(tok, CLIP)).eval().save_pretrained(str(root / "text_encoder"))
    write_t5_tokenizer(root / "tokenizer_2")
    t5_encoder(T5TokenizerFast.from_pretrained(str(root / "tokenizer_2")), seed + 2).save_pretrained(str(root / "text_encoder_2"))
    tiny_flux_transformer(seed, guidance_embeds).save_pretrained(str(root / "transformer"))
    tiny_vae(seed, 0.3611, 0.1159).save_pretrained(str(root / "vae"))
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0,
         "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
         "max_image_seq_len": 4096}))
    index = {"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"],
             "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "text_encoder_2": ["transformers", "T5EncoderModel"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
             "image_encoder": [None, None], "feature_extractor": [None, None]}
    (root / "model_index.json").write_text(json.dumps(index))
    return root


FLOW_LORA_TEST_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "to_add_out", "ff.net.0.proj", "ff.net.2",
                          "norm1.linear", "proj_mlp"]


def write_flow_lora(transformer, folder: Path, pipeline: str, seed: int = 3, rank: int = 4, alpha: float | None = None,
                    layout: str = "peft", gain: float = 2.0):
    """A tiny random LoRA (init_lora_weights=False: A and B both random) on a flow transformer, written with the
    pipeline's save_lora_weights: layout "peft" (peft keys lora_A/B, lora_alpha = `alpha` in the file's metadata),
    "released" (the old lora.down/up names of convert_state_dict_to_diffusers, alpha = rank) or "alphas" (peft keys
    and a per-module `.alpha` tensor, no metadata, as many FLUX LoRAs ship; written with safetensors). Returns (the
    file, the transformer's state dict with the LoRA merged by peft)."""
    import copy

    import diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = copy.deepcopy(transformer)
    present = {n for n, _ in transformer.named_modules()}
    targets = [t for t in FLOW_LORA_TEST_TARGETS if any(n.endswith("." + t) for n in present)]
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights=False, target_modules=targets)
    transformer.add_adapter(config)
    with torch.no_grad():  # peft's random B is small; 2x changes the velocity visibly (20x makes the tiny network chaotic: 1e-6 input changes grow to 1e-3)
        for n, p in transformer.named_parameters():
            if "lora_B" in n:
                p.mul_(gain)
    layers = get_peft_model_state_dict(transformer)
    metadata = None
    if layout == "released":
        from diffusers.utils import convert_state_dict_to_diffusers

        layers = convert_state_dict_to_diffusers(layers)
        assert alpha is None
    else:
        metadata = config.to_dict()
        metadata = {k: (sorted(v) if isinstance(v, set) else v) for k, v in metadata.items()}
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "alphas":
        from safetensors.torch import save_file

        state = {f"transformer.{k}": v.contiguous() for k, v in layers.items()}
        for k in layers:
            if k.endswith(".lora_A.weight"):
                state[f"transformer.{k[:-len('.lora_A.weight')]}.alpha"] = torch.tensor(float(alpha or rank))
        save_file(state, str(folder / "pytorch_lora_weights.safetensors"))
    else:
        getattr(diffusers, pipeline).save_lora_weights(str(folder), transformer_lora_layers=layers,
                                                       transformer_lora_adapter_metadata=metadata)
    transformer.fuse_lora()
    transformer.unload_lora()
    return folder / "pytorch_lora_weights.safetensors", {k: v.detach().clone() for k, v in transformer.state_dict().items()}


SANA_CAPTION = 8  # Gemma-2's width = the transformer's caption_channels
SANA_LATENT_CHANNELS = 4


def write_gemma_tokenizer(folder: Path) -> Path:
    """A Unigram Gemma tokenizer (tokenizer.json) over letters, digits, punctuation and a few words, with Gemma's
    special tokens (<pad> 0, <eos> 1, <bos> 2, <unk> 3) and <bos> prepended as GemmaTokenizerFast does."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import GemmaTokenizerFast

    vocab = [("<pad>", 0.0), ("<eos>", 0.0), ("<bos>", 0.0), ("<unk>", 0.0)]
    vocab += [(c, -1.0) for c in string.ascii_letters + string.digits + string.punctuation]
    vocab += [("▁" + w, -0.5) for w in ("a", "the", "red", "fox", "in", "snow", "bowl", "of", "at", "prompt")] + [("▁", -2.0)]
    tk = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 2)])
    tok = GemmaTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                             pad_token="<pad>", model_max_length=8192)
    assert len(tok) > 2 and tok("a").input_ids[0] == 2
    tok.save_pretrained(str(folder))
    return folder


def tiny_sana_transformer(seed: int = 0, learned_sigma: bool = False):
    from diffusers import SanaTransformer2DModel

    torch.manual_seed(seed)
    return SanaTransformer2DModel(patch_size=1, in_channels=SANA_LATENT_CHANNELS,
                                  out_channels=2 * SANA_LATENT_CHANNELS if learned_sigma else SANA_LATENT_CHANNELS,
                                  num_layers=1, num_attention_heads=2, attention_head_dim=4, num_cross_attention_heads=2,
                                  cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=SANA_CAPTION,
                                  sample_size=LATENT).eval()


def tiny_dc_ae(seed: int = 0):
    from diffusers import AutoencoderDC

    torch.manual_seed(seed)
    return AutoencoderDC(in_channels=3, latent_channels=SANA_LATENT_CHANNELS, attention_head_dim=2,
                         encoder_block_types=("ResBlock", "EfficientViTBlock"), decoder_block_types=("ResBlock", "EfficientViTBlock"),
                         encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                         encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
                         encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1), downsample_block_type="conv",
                         upsample_block_type="interpolate", decoder_norm_types="rms_norm", decoder_act_fns="silu",
                         scaling_factor=0.41407).eval()


def build_tiny_sana(root: Path, seed: int = 0, learned_sigma: bool = False) -> Path:
    """SanaPipeline's layout: Gemma2Model + GemmaTokenizerFast, SanaTransformer2DModel, AutoencoderDC (factor 2 here,
    32 in SANA), DPMSolverMultistepScheduler with flow sigmas and flow_shift 3 (SANA's 1024 px config)."""
    from transformers import Gemma2Config, Gemma2Model, GemmaTokenizerFast

    root.mkdir(parents=True, exist_ok=True)
    write_gemma_tokenizer(root / "tokenizer")
    tok = GemmaTokenizerFast.from_pretrained(str(root / "tokenizer"))
    torch.manual_seed(seed + 1)
    Gemma2Model(Gemma2Config(vocab_size=len(tok), hidden_size=SANA_CAPTION, intermediate_size=16, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=2, head_dim=4, max_position_embeddings=4096,
                             pad_token_id=0, bos_token_id=2, eos_token_id=1)).eval().save_pretrained(str(root / "text_encoder"))
    tiny_sana_transformer(seed, learned_sigma).save_pretrained(str(root / "transformer"))
    tiny_dc_ae(seed).save_pretrained(str(root / "vae"))
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "DPMSolverMultistepScheduler", "num_train_timesteps": 1000, "flow_shift": 3.0,
         "use_flow_sigmas": True, "prediction_type": "flow_prediction", "solver_order": 2,
         "algorithm_type": "dpmsolver++", "final_sigmas_type": "zero", "beta_schedule": "linear",
         "beta_start": 0.0001, "beta_end": 0.02}))
    (root / "model_index.json").write_text(json.dumps(
        {"_class_name": "SanaPipeline", "transformer": ["diffusers", "SanaTransformer2DModel"],
         "vae": ["diffusers", "AutoencoderDC"], "scheduler": ["diffusers", "DPMSolverMultistepScheduler"],
         "text_encoder": ["transformers", "Gemma2Model"], "tokenizer": ["transformers", "GemmaTokenizerFast"]}))
    return root


def euler_convergence_ratios(teacher, cond: int = 2, ks=(16, 32, 64)) -> tuple[list[float], list[float]]:
    """Shift-free FlowMatchEuler at K, 2K, 4K against a tight reference from the same noise: (RMS errors,
    successive ratios). First order halves the error as K doubles, so each ratio is ~2."""
    from odebench.ode.noise import NoiseBank, SampleNoise
    from odebench.ode.reference import solve_reference
    from odebench.ode.spec import SolverSpec
    from odebench.students.kinds import load_student

    noise = SampleNoise(NoiseBank(1, teacher.shape), range(1))
    z, c = noise(0), torch.tensor([cond])
    ref = solve_reference(teacher, teacher.initial_state(z), c, SolverSpec(rtol=1e-6, atol=1e-6, dtype="float32")).x0
    errs = [float((load_student(f"flow-euler:{k}?shift=1.0", teacher)[0].sample(z, c, noise) - ref).pow(2).mean().sqrt())
            for k in ks]
    return errs, [a / b for a, b in zip(errs, errs[1:])]
