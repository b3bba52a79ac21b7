"""SD3 / SD3.5, FLUX.1 and SANA as odebench teachers: diffusers flow transformers behind the flow velocity view.

What they share with the UNet text-to-image families (the prompt list, embeddings cached per unique prompt,
the uncond branch, per-batch condition inputs, VAE decoding, folder resolution) is odebench.teachers.
text_to_image's, used here as it is; what is theirs:
  - SD3 (StableDiffusion3Pipeline.encode_prompt): both CLIPTextModelWithProjection encoders' penultimate
    hidden states concatenated on the feature axis, zero-padded to T5's width and concatenated with T5's
    last hidden state (256 tokens; zeros when the folder has no T5) along the sequence; pooled = the two
    projected text_embeds concatenated. SD3Transformer2DModel at timestep 1000 t, skip-layer guidance off.
    CFG (imagen w, the pipeline's 7.0 by default) on velocities with the encoded empty prompt as the
    unconditional branch. FlowMatchEulerDiscreteScheduler(shift=3.0) grids for rows (none for the ODE).
  - FLUX.1 (FluxPipeline.encode_prompt): CLIPTextModel's pooled output and T5's last hidden state (512
    tokens), text ids zero; latents (B, 16, h, w) packed into 2x2 tokens (B, hw/4, 64) with image ids
    (row, column) for the transformer and unpacked after, so the ODE state, the noise and the x0 the ODE
    error compares are the unpacked latents (the pipeline's randn is drawn unpacked too). FLUX.1-dev
    (guidance_embeds) takes its guidance g as an input: Guidance form `embedded`, one pass per evaluation;
    for each g the PF-ODE is dx_t/dt = v_theta(x_t, t, c, g), the ODE of the guidance-distilled network at
    that g (its training target was the base model's CFG velocity at scale g), a different ODE for every
    g and none of them a two-branch CFG. FLUX.1-schnell has no guidance input: dx_t/dt = v_theta(x_t, t, c).
    Grids: sigmas = linspace(1, 1/K, K) with the resolution-dependent dynamic shift mu (calculate_shift of
    the token count), as FluxPipeline sets them.
  - SANA (SanaPipeline.encode_prompt): one Gemma-2 encoder; every prompt is lower-cased and prefixed with the
    pipeline's complex human instruction, encoded to (instruction tokens + 300 - 2), then the first token and
    the last 299 kept (with their attention mask, which the transformer applies in cross-attention); the empty
    negative prompt is encoded without the instruction. SanaTransformer2DModel at timestep 1000 t x
    timestep_scale, CFG (w = 4.5 by default) on velocities; a 32x AutoencoderDC; the DPM-Solver flow scheduler's
    flow_shift is the rows' shift.
Latents are the VAE's scaled ones, (z - shift_factor) * scaling_factor; decoding inverts that.
Weights from a local folder or a hub id found in $ODEBENCH_WEIGHTS or the local HF cache; nothing downloads.
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from odebench.errors import OdebenchError
from odebench.teachers.base import DECODES, FLOW_VELOCITY, SCHEDULER, TEXT, TRANSFORMER, Guidance
from odebench.teachers.family import TeacherFamily, register
from odebench.teachers.flow import FlowTeacher, dynamic_shift_mu, embedded_guidance
from odebench.teachers.network_view import CastableNetwork, LazyCastModule
from odebench.teachers.text_to_image import (MODEL_DTYPES, TextToImageTeacher, WEIGHT_NAMES, _variant,
                                             pipeline_class)

UNCOND_MODES = {"zeros": "zeros", "empty": "empty-prompt", "empty-prompt": "empty-prompt"}
OPTIONS = ("dtype", "device", "height", "width", "uncond", "max_sequence_length")  # the last: T5's length (API only)


class FlowTextToImageTeacher(CastableNetwork, FlowTeacher):
    """A diffusers flow transformer with text conditioning; subclasses give `_encode`, `uncond_zeros`
    and `_transformer_pass` (module docstring)."""

    capabilities = frozenset({FLOW_VELOCITY, SCHEDULER, TEXT, DECODES, TRANSFORMER})
    default_conditional = True
    default_samples = 64
    grid_scale = 1
    grid_count = 16
    title = "flow"
    pipeline = "DiffusionPipeline"
    default_w = 7.0
    default_uncond = "empty-prompt"

    # the prompt plumbing of the UNet text-to-image teachers, shared (not copied)
    set_prompts = TextToImageTeacher.set_prompts
    embeddings = TextToImageTeacher.embeddings
    uncond_embeddings = TextToImageTeacher.uncond_embeddings
    encode_prompts = TextToImageTeacher.encode_prompts
    condition_inputs = TextToImageTeacher.condition_inputs

    def __init__(self, transformer, text_encoders, tokenizers, vae, scheduler_config: dict[str, Any], *, name: str,
                 spec: Any, identity: dict[str, Any], height: int, width: int, device=None, uncond: str | None = None,
                 max_sequence_length: int = 256) -> None:
        super().__init__()
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.transformer = transformer.eval().requires_grad_(False)
        self.text_encoders = [te.eval().requires_grad_(False) if te is not None else None for te in text_encoders]
        self.tokenizers = list(tokenizers)
        for tok in self.tokenizers:
            if tok is not None and len(tok) <= 2:
                raise OdebenchError(f"tokenizer has only {len(tok)} tokens (its vocabulary did not load)")
        self.vae = vae.eval().requires_grad_(False) if vae is not None else None
        self.vae_fp32 = True
        self.pipeline_scheduler_config = dict(scheduler_config)
        self.name, self._spec, self.identity = name, spec, identity
        self.max_sequence_length = int(max_sequence_length)
        self.vae_scale_factor = vae_scale_factor(vae)
        self.height, self.width = int(height), int(width)
        self.shape = self.latent_shape()
        mode = UNCOND_MODES.get(uncond or self.default_uncond)
        if mode is None:
            raise OdebenchError(f"unknown uncond {uncond!r}: expected zeros or empty")
        self.default_guidance = self.make_default_guidance(mode)
        self.guidance = self.default_guidance
        self.prompts: list[str] = []
        self.num_classes = None
        self._last_batch = None
        self._embeddings: dict[str, tuple] = {}
        self.encoder_calls = 0

    # -- what a pipeline provides ------------------------------------------------------------
    def latent_shape(self) -> tuple[int, int, int]:
        f = self.vae_scale_factor
        if self.height % f or self.width % f:
            raise OdebenchError(f"--height/--width must be multiples of {f}, got {self.height}x{self.width}")
        return int(self.transformer_config.in_channels), self.height // f, self.width // f

    def make_default_guidance(self, uncond: str) -> Guidance:
        return Guidance(self.default_w, "imagen", uncond)

    def _encode(self, prompts: list[str]):
        raise NotImplementedError

    def uncond_zeros(self, batch: int):
        raise NotImplementedError

    def _transformer_pass(self, transformer, x_t, t, ehs, pooled) -> torch.Tensor:
        raise NotImplementedError

    # -- the network -------------------------------------------------------------------------
    def run_transformer(self, transformer, x_t: torch.Tensor, t: torch.Tensor, ehs, pooled) -> torch.Tensor:
        """One transformer pass on this teacher's device and dtype; v comes back float32 where x_t lives."""
        with torch.no_grad():
            out = self._transformer_pass(transformer, x_t, t, ehs, pooled)
        return out.to(x_t.device, torch.float32)

    def transformer_pass(self, transformer, x_t: torch.Tensor, t: torch.Tensor, ehs, pooled) -> torch.Tensor:
        """One differentiable pass of a student's `transformer` as this teacher calls its own (the trainers):
        v in float32 where x_t lives."""
        return self._transformer_pass(transformer, x_t, t, ehs, pooled).to(x_t.device, torch.float32)

    def _velocity(self, x_t, t, cond):
        ehs, pooled = self.condition_inputs(cond, x_t.shape[0])
        return self.run_transformer(self.transformer, x_t, t, ehs, pooled)

    def _velocity_pair(self, x_t, t, cond):
        """Both CFG branches in one transformer batch (uncond first, as the pipelines order them)."""
        b = x_t.shape[0]
        eu, pu = self.condition_inputs(None, b)
        ec, pc = self.condition_inputs(cond, b)
        out = self.run_transformer(self.transformer, x_t.repeat(2, *([1] * (x_t.dim() - 1))), t.repeat(2),
                                   torch.cat([eu.to(ec.device), ec]), torch.cat([pu.to(pc.device), pc]))
        return out[:b], out[b:]

    # -- identity ----------------------------------------------------------------------------
    @property
    def sigma_data(self) -> float:
        return 1.0  # the flow latents are scaled to unit variance (shift and scaling factors)

    # a precision view casts its transformer copy on first use (odebench.teachers.network_view)
    transformer = LazyCastModule()
    network_attr = "transformer"

    @property
    def transformer_config(self):
        """The transformer's config (a pending precision view's without casting its copy)."""
        return type(self).transformer.source(self).config

    @property
    def transformer_dtype(self) -> torch.dtype:
        return type(self).transformer.dtype(self)

    def fingerprint(self) -> str:
        blob = json.dumps({**self.identity, "pipeline": self.pipeline, "max_sequence_length": self.max_sequence_length},
                          sort_keys=True)
        return f"{self.name}-" + hashlib.sha256(blob.encode()).hexdigest()[:16]

    def spec(self) -> Any:
        return self._spec

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "height": self.height, "width": self.width, "device": str(self.device),
                "transformer_dtype": str(self.transformer_dtype).replace("torch.", ""), "pipeline": self.pipeline,
                "max_sequence_length": self.max_sequence_length, "components": self.identity}

    def with_guidance(self, guidance: Guidance) -> "FlowTextToImageTeacher":
        return TextToImageTeacher.with_guidance(self, guidance)

    # -- images ------------------------------------------------------------------------------
    def decode(self, x: torch.Tensor, batch_size: int = 4) -> np.ndarray:
        """Scaled latents -> uint8 RGB: z = x / scaling_factor + shift_factor, then the shared VAE decode."""
        shift = float(getattr(self.vae.config, "shift_factor", 0.0) or 0.0) if self.vae is not None else 0.0
        scale = float(self.vae.config.scaling_factor) if self.vae is not None else 1.0
        return TextToImageTeacher.decode(self, x.float() + shift * scale, batch_size)


class SD3Teacher(FlowTextToImageTeacher):
    """StableDiffusion3Pipeline's transformer (SD3 / SD3.5)."""

    family = "sd3"
    title = "SD3"
    pipeline = "StableDiffusion3Pipeline"

    @torch.no_grad()
    def _clip(self, i: int, prompts):
        tok, te = self.tokenizers[i], self.text_encoders[i]
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        out = te(ids.to(te.device), output_hidden_states=True)
        return out.hidden_states[-2].to(self.text_encoders[0].dtype).float(), out[0].float()

    @torch.no_grad()
    def _encode(self, prompts):
        (e1, p1), (e2, p2) = self._clip(0, prompts), self._clip(1, prompts)
        t5 = self._t5(prompts)
        clip = torch.nn.functional.pad(torch.cat([e1, e2], dim=-1), (0, t5.shape[-1] - e1.shape[-1] - e2.shape[-1]))
        return torch.cat([clip, t5.to(clip.device)], dim=-2), torch.cat([p1, p2], dim=-1)

    @torch.no_grad()
    def _t5(self, prompts):
        tok, te = self.tokenizers[2], self.text_encoders[2]
        if te is None:  # text_encoder_3=None: the pipeline's zeros
            return torch.zeros(len(prompts), self.max_sequence_length, int(self.transformer_config.joint_attention_dim),
                               device=self.device)
        ids = tok(prompts, padding="max_length", max_length=self.max_sequence_length, truncation=True,
                  add_special_tokens=True, return_tensors="pt").input_ids
        return te(ids.to(te.device))[0].float()

    def uncond_zeros(self, batch):
        length = int(self.tokenizers[0].model_max_length) + self.max_sequence_length
        return (torch.zeros(batch, length, int(self.transformer_config.joint_attention_dim), device=self.device),
                torch.zeros(batch, int(self.transformer_config.pooled_projection_dim), device=self.device))

    def _transformer_pass(self, transformer, x_t, t, ehs, pooled):
        dtype = next(transformer.parameters()).dtype
        timestep = (t.double() * float(self.num_train_timesteps)).float()
        return transformer(hidden_states=x_t.to(self.device, dtype), timestep=timestep.to(self.device),
                           encoder_hidden_states=ehs.to(self.device, dtype), pooled_projections=pooled.to(self.device, dtype),
                           return_dict=False)[0]

    def set_timesteps_kwargs(self, scheduler, k):
        """StableDiffusion3Pipeline: mu from the token count only under dynamic shifting (SD3.5 configs may set it)."""
        kw: dict[str, Any] = {}
        if scheduler.config.get("use_dynamic_shifting", False) and _accepts(scheduler, "mu"):
            cfg = scheduler.config
            p = int(self.transformer_config.patch_size)
            kw["mu"] = dynamic_shift_mu((self.shape[1] // p) * (self.shape[2] // p), cfg.get("base_image_seq_len", 256),
                                        cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.16))
        return kw

    def describe(self):
        return {**super().describe(), "skip_layer_guidance": "off", "t5": self.text_encoders[2] is not None}


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, HW/4, 4C): FluxPipeline._pack_latents."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, HW/4, 4C) -> (B, C, H, W): FluxPipeline._unpack_latents on latent sizes."""
    b, _, c4 = x.shape
    return x.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c4 // 4, h, w)


def latent_image_ids(h2: int, w2: int) -> torch.Tensor:
    """(h2 w2, 3) ids (0, row, column) of the packed tokens: FluxPipeline._prepare_latent_image_ids."""
    ids = torch.zeros(h2, w2, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(h2)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(w2)[None, :]
    return ids.reshape(h2 * w2, 3)


class FluxTeacher(FlowTextToImageTeacher):
    """FluxPipeline's transformer (FLUX.1-dev with its guidance input, FLUX.1-schnell without)."""

    family = "flux"
    title = "FLUX.1"
    pipeline = "FluxPipeline"
    default_w = 3.5  # FluxPipeline's guidance_scale default (FLUX.1-dev: the embedded g)

    @property
    def guidance_embeds(self) -> bool:
        return bool(self.transformer_config.guidance_embeds)

    def latent_shape(self):
        f = self.vae_scale_factor * 2  # packing needs latent sides divisible by 2
        if self.height % f or self.width % f:
            raise OdebenchError(f"--height/--width must be multiples of {f} for FLUX.1, got {self.height}x{self.width}")
        return int(self.transformer_config.in_channels) // 4, 2 * (self.height // f), 2 * (self.width // f)

    def make_default_guidance(self, uncond):
        if self.guidance_embeds:
            return Guidance(self.default_w, "embedded", "none")
        return Guidance(1.0, "imagen", uncond)  # schnell: no guidance; --guidance W > 1 is two-branch CFG

    def with_guidance(self, guidance):
        if self.guidance_embeds:
            other = copy.copy(self)
            other.guidance = embedded_guidance(guidance, self.default_guidance)
            return other
        if guidance.embedded:
            raise OdebenchError(f"{self.name} has no guidance input (guidance_embeds is off); --guidance W is two-branch CFG")
        return TextToImageTeacher.with_guidance(self, guidance)

    @torch.no_grad()
    def _encode(self, prompts):
        tok, te = self.tokenizers[0], self.text_encoders[0]
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        pooled = te(ids.to(te.device), output_hidden_states=False).pooler_output.float()
        tok2, te2 = self.tokenizers[1], self.text_encoders[1]
        ids2 = tok2(prompts, padding="max_length", max_length=self.max_sequence_length, truncation=True, return_tensors="pt").input_ids
        return te2(ids2.to(te2.device), output_hidden_states=False)[0].float(), pooled

    def uncond_zeros(self, batch):
        return (torch.zeros(batch, self.max_sequence_length, int(self.transformer_config.joint_attention_dim), device=self.device),
                torch.zeros(batch, int(self.transformer_config.pooled_projection_dim), device=self.device))

    def _transformer_pass(self, transformer, x_t, t, ehs, pooled):
        dtype = next(transformer.parameters()).dtype
        b, _, h, w = x_t.shape
        guidance = None
        if transformer.config.guidance_embeds:
            guidance = torch.full((b,), float(self.guidance.w if self.guidance.embedded else 1.0), device=self.device,
                                  dtype=torch.float32)
        out = transformer(hidden_states=pack_latents(x_t).to(self.device, dtype), timestep=t.float().to(self.device),
                          guidance=guidance, pooled_projections=pooled.to(self.device, dtype),
                          encoder_hidden_states=ehs.to(self.device, dtype),
                          txt_ids=torch.zeros(ehs.shape[1], 3, device=self.device, dtype=dtype),
                          img_ids=latent_image_ids(h // 2, w // 2).to(self.device, dtype), return_dict=False)[0]
        return unpack_latents(out, h, w)

    def image_seq_len(self) -> int:
        return (self.shape[1] // 2) * (self.shape[2] // 2)

    def set_timesteps_kwargs(self, scheduler, k):
        """FluxPipeline: sigmas = linspace(1, 1/k, k) (none for use_flow_sigmas schedulers) and mu from the
        packed token count; a scheduler whose set_timesteps takes neither keeps its own config's grid."""
        cfg = scheduler.config
        kw: dict[str, Any] = {}
        if _accepts(scheduler, "sigmas") and not cfg.get("use_flow_sigmas", False):
            kw["sigmas"] = np.linspace(1.0, 1 / k, k)
        if _accepts(scheduler, "mu") and cfg.get("use_dynamic_shifting", False):
            kw["mu"] = self.dynamic_mu(cfg)
        return kw

    def dynamic_mu(self, cfg=None) -> float:
        cfg = cfg or self.pipeline_scheduler_config
        return dynamic_shift_mu(self.image_seq_len(), cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                                cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))

    def grid_identity(self):
        g = super().grid_identity()
        if g["use_dynamic_shifting"]:
            g["mu"] = self.dynamic_mu()
            g["dynamic_shift"] = f"exp(mu) = {np.exp(g['mu']):.4f} for {self.image_seq_len()} image tokens"
        return g

    def describe(self):
        pf = ("dx_t/dt = v(x_t, t, c, g): the guidance-distilled network at embedded g (each g its own ODE, one pass)"
              if self.guidance_embeds else "dx_t/dt = v(x_t, t, c) (no guidance input)")
        return {**super().describe(), "guidance_embeds": self.guidance_embeds, "pf_ode": pf}


SANA_CHI = (  # SanaPipeline.__call__'s default complex_human_instruction (prefixed to every prompt, not to the negative)
    "Given a user prompt, generate an 'Enhanced prompt' that provides detailed visual descriptions suitable for image generation. Evaluate the level of detail in the user prompt:",
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and spatial relationships to create vivid and concrete scenes.",
    "- If the prompt is already detailed, refine and enhance the existing details slightly without overcomplicating.",
    "Here are examples of how to transform or refine prompts:",
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, sleeping peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.",
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass skyscrapers.",
    "Please generate only the enhanced description for the prompt below and avoid including any additional commentary or evaluations:",
    "User Prompt: ",
)


class SanaTeacher(FlowTextToImageTeacher):
    """SanaPipeline's linear-attention transformer (SANA): one Gemma-2 encoder whose prompts carry the complex
    human instruction, a 32x deep-compression autoencoder (AutoencoderDC), a DPM-Solver flow scheduler with
    flow_shift. The `pooled` slot of the shared prompt plumbing holds the prompt's attention mask (SANA has no
    pooled embedding; its transformer masks padding in cross-attention)."""

    family = "sana"
    title = "SANA"
    pipeline = "SanaPipeline"
    default_w = 4.5  # SanaPipeline's guidance_scale: CFG on velocities, v_u + w (v_c - v_u)
    complex_human_instruction: tuple[str, ...] = SANA_CHI

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._uncond_cache: dict[str, tuple] = {}

    @torch.no_grad()
    def _gemma(self, prompts: list[str], instruction: bool):
        """SanaPipeline._get_gemma_prompt_embeds (clean_caption off: lower-cased and stripped), then encode_prompt's
        selection of the first token and the last max_sequence_length - 1 (the instruction drops out)."""
        tok, te = self.tokenizers[0], self.text_encoders[0]
        tok.padding_side = "right"
        prompts = [p.lower().strip() for p in prompts]
        length = self.max_sequence_length
        if instruction:
            chi = "\n".join(self.complex_human_instruction)
            prompts = [chi + p for p in prompts]
            length = len(tok.encode(chi)) + self.max_sequence_length - 2
        inputs = tok(prompts, padding="max_length", max_length=length, truncation=True, add_special_tokens=True,
                     return_tensors="pt")
        mask = inputs.attention_mask.to(te.device)
        embeds = te(inputs.input_ids.to(te.device), attention_mask=mask)[0].float()
        if instruction:
            select = [0] + list(range(-self.max_sequence_length + 1, 0))
            embeds, mask = embeds[:, select], mask[:, select]
        return embeds, mask

    def _encode(self, prompts):
        return self._gemma(list(prompts), instruction=True)

    def uncond_embeddings(self, batch: int):
        """The empty negative prompt as SanaPipeline encodes it: without the instruction (cached once)."""
        if self.guidance.uncond != "empty-prompt":
            return self.uncond_zeros(batch)
        if "" not in self._uncond_cache:
            self._uncond_cache[""] = self._gemma([""], instruction=False)
        e, m = self._uncond_cache[""]
        return e.expand(batch, *e.shape[1:]), m.expand(batch, *m.shape[1:])

    def uncond_zeros(self, batch):
        width = int(self.transformer_config.caption_channels)
        return (torch.zeros(batch, self.max_sequence_length, width, device=self.device),
                torch.ones(batch, self.max_sequence_length, dtype=torch.long, device=self.device))

    def _transformer_pass(self, transformer, x_t, t, ehs, mask):
        cfg = transformer.config
        dtype = next(transformer.parameters()).dtype
        # SanaPipeline: timestep = 1000 t x the transformer's timestep_scale
        timestep = (t.double() * float(self.num_train_timesteps) * float(cfg.get("timestep_scale", 1.0))).float()
        out = transformer(x_t.to(self.device, dtype), encoder_hidden_states=ehs.to(self.device, dtype),
                          encoder_attention_mask=mask.to(self.device), timestep=timestep.to(self.device), return_dict=False)[0]
        if int(cfg.out_channels) // 2 == int(cfg.in_channels):  # a learned-sigma head: the first half is v
            out = out.chunk(2, dim=1)[0]
        return out

    def describe(self):
        return {**super().describe(), "complex_human_instruction": len(self.complex_human_instruction) > 0,
                "vae": type(self.vae).__name__ if self.vae is not None else None}


def vae_scale_factor(vae) -> int:
    """Pixels per latent: 2^(levels - 1) of AutoencoderKL's block_out_channels or AutoencoderDC's encoder blocks."""
    if vae is None:
        return 8
    levels = getattr(vae.config, "encoder_block_out_channels", None) or vae.config.block_out_channels
    return 2 ** (len(levels) - 1)


def _accepts(scheduler, name: str) -> bool:
    return name in inspect.signature(scheduler.set_timesteps).parameters


# -- loading -------------------------------------------------------------------------------------

def _has_weights(folder: Path) -> bool:
    return any((folder / n).is_file() for n in WEIGHT_NAMES) or any(folder.glob("*.safetensors.index.json"))


def _component_identity(folder: Path) -> str:
    """sha256 over the weight files of a component (one file or an index and its shards)."""
    from odebench.weights import file_sha256

    files = sorted(p for p in folder.iterdir() if p.is_file() and (p.suffix in (".safetensors", ".bin") or p.name.endswith(".index.json")))
    return hashlib.sha256("".join(f"{p.name}:{file_sha256(p)}" for p in files).encode()).hexdigest()[:16]


def _tokenizer_identity(folder: Path) -> str:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    return hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()[:16]


def load_flow_teacher(cls: type[FlowTextToImageTeacher], spec: str, encoders: tuple[tuple[str, str, str, bool], ...], *,
                      dtype: str = "fp32", device: str | None = None, height: int | None = None, width: int | None = None,
                      uncond: str | None = None, max_sequence_length: int = 256, load_vae: bool = True,
                      name: str | None = None) -> FlowTextToImageTeacher:
    """A `cls` teacher from a diffusers folder or cached hub id. encoders: (text encoder subfolder, transformers
    class, tokenizer class, optional) in the pipeline's order; an optional one may be absent (SD3 without T5)."""
    import diffusers
    import transformers

    from odebench.fileio import read_json_object
    from odebench.weights import resolve_weights

    what = f"the {cls.title} teacher"
    if dtype not in MODEL_DTYPES:
        raise OdebenchError(f"unknown model dtype {dtype!r}: expected fp16, bf16 or fp32")
    torch_dtype = MODEL_DTYPES[dtype]
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OdebenchError("--device cuda was asked for, but torch sees no CUDA device")
    root = resolve_weights(spec, what, describe="a diffusers pipeline folder (model_index.json, transformer/, text_encoder*/, "
                           "tokenizer*/, vae/, scheduler/)", flag="--teacher PATH")
    if not root.is_dir():
        raise OdebenchError(f"{what}: '{root}' is a file; expected a diffusers folder")
    missing = [f"{c}/" for c in ("transformer", "vae") if not ((root / c / "config.json").is_file() and _has_weights(root / c))]
    missing += [] if (root / "scheduler" / "scheduler_config.json").is_file() else ["scheduler/scheduler_config.json"]
    for sub, _, _, optional in encoders:
        tok = sub.replace("text_encoder", "tokenizer")
        if not optional and not ((root / sub / "config.json").is_file() and _has_weights(root / sub)):
            missing.append(f"{sub}/")
        if not optional and not any((root / tok / n).is_file() for n in ("vocab.json", "tokenizer.json", "spiece.model")):
            missing.append(f"{tok}/")
    if missing:
        raise OdebenchError(f"{what} at '{root}' is incomplete: missing {', '.join(missing)}")
    sched = read_json_object(root / "scheduler" / "scheduler_config.json", "scheduler config")
    if sched.get("_class_name") not in ("FlowMatchEulerDiscreteScheduler", None) and not sched.get("use_flow_sigmas"):
        raise OdebenchError(f"{root}: scheduler {sched.get('_class_name')!r} is not a flow-matching scheduler")
    common = {"local_files_only": True}
    te_dtype = torch.float32 if (dev.type == "cpu" and torch_dtype == torch.float16) else torch_dtype
    try:
        transformer_cls = getattr(diffusers, read_json_object(root / "transformer" / "config.json", "transformer config")["_class_name"])
        transformer = transformer_cls.from_pretrained(str(root), subfolder="transformer", torch_dtype=torch_dtype,
                                                      variant=_variant(root / "transformer"), **common)
        text_encoders, tokenizers = [], []
        for sub, te_cls, tok_cls, optional in encoders:
            tok_dir = sub.replace("text_encoder", "tokenizer")
            if optional and not (root / sub / "config.json").is_file():
                text_encoders.append(None)
                tokenizers.append(None)
                continue
            text_encoders.append(getattr(transformers, te_cls).from_pretrained(str(root), subfolder=sub, dtype=te_dtype,
                                                                              variant=_variant(root / sub), **common).to(dev))
            tokenizers.append(getattr(transformers, tok_cls).from_pretrained(str(root), subfolder=tok_dir, **common))
        # AutoencoderKL (SD3, FLUX.1) or AutoencoderDC (SANA's deep-compression autoencoder), as the folder says
        vae_cls = getattr(diffusers, read_json_object(root / "vae" / "config.json", "VAE config").get("_class_name", "AutoencoderKL"))
        vae = vae_cls.from_pretrained(str(root), subfolder="vae", torch_dtype=torch.float32,
                                      variant=_variant(root / "vae"), **common).to(dev) if load_vae else None
    except OdebenchError:
        raise
    except Exception as e:  # corrupt or mismatched files: one line, the component named by the library
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OdebenchError(f"cannot load {what} from '{root}': {msg[:300]}") from None
    identity = {"transformer": _component_identity(root / "transformer")}
    for (sub, _, _, _), te in zip(encoders, text_encoders):
        if te is not None:
            identity[sub] = _component_identity(root / sub)
            identity[sub.replace("text_encoder", "tokenizer")] = _tokenizer_identity(root / sub.replace("text_encoder", "tokenizer"))
    factor = vae_scale_factor(vae)
    default_px = int(transformer.config.get("sample_size", 128)) * factor  # FLUX's config has none: 1024 px
    return cls(transformer.to(dev), text_encoders, tokenizers, vae, sched, name=name or Path(str(spec).rstrip("/")).name,
               spec=str(spec), identity=identity, height=height or default_px, width=width or default_px, device=dev,
               uncond=uncond, max_sequence_length=max_sequence_length)


class FlowPipelineFamily(TeacherFamily):
    options = OPTIONS
    teacher_class: type[FlowTextToImageTeacher] = FlowTextToImageTeacher
    encoders: tuple = ()
    preset_ids: dict[str, str] = {}
    max_sequence_length = 256
    default_rows = ("flow-euler:4", "flow-euler:8", "ref")

    def matches(self, spec) -> bool:
        if isinstance(spec, (str, Path)) and str(spec) in self.preset_ids:
            return True
        return pipeline_class(spec) == self.teacher_class.pipeline

    def load(self, spec, **options):
        s = str(spec)
        names = {hub: name for name, hub in self.preset_ids.items()}
        options.setdefault("max_sequence_length", self.max_sequence_length)
        return load_flow_teacher(self.teacher_class, self.preset_ids.get(s, s), self.encoders,
                                 name=s if s in self.preset_ids else names.get(s), **options)

    def quality(self, teacher, conditions, seed, n, selection="auto", weights=None, device=None, fd_bootstrap=10):
        from odebench.quality import ImageQuality

        return ImageQuality(teacher, conditions, n, selection, weights, device, fd_bootstrap)


class SD3Family(FlowPipelineFamily):
    name = "sd3"
    title = "SD3"
    help = "Stable Diffusion 3 / 3.5 (rectified flow): a diffusers StableDiffusion3Pipeline folder or cached hub id"
    preset_ids = {"sd3-medium": "stabilityai/stable-diffusion-3-medium-diffusers",
                  "sd35-medium": "stabilityai/stable-diffusion-3.5-medium", "sd35-large": "stabilityai/stable-diffusion-3.5-large"}
    presets = {"sd3-medium": "Stable Diffusion 3 medium from the local HF cache",
               "sd35-medium": "Stable Diffusion 3.5 medium from the local HF cache",
               "sd35-large": "Stable Diffusion 3.5 large from the local HF cache"}
    teacher_class = SD3Teacher
    encoders = (("text_encoder", "CLIPTextModelWithProjection", "CLIPTokenizer", False),
                ("text_encoder_2", "CLIPTextModelWithProjection", "CLIPTokenizer", False),
                ("text_encoder_3", "T5EncoderModel", "T5TokenizerFast", True))


class FluxFamily(FlowPipelineFamily):
    name = "flux"
    title = "FLUX.1"
    help = "FLUX.1 dev / schnell (rectified flow, packed latents): a diffusers FluxPipeline folder or cached hub id"
    preset_ids = {"flux-dev": "black-forest-labs/FLUX.1-dev", "flux-schnell": "black-forest-labs/FLUX.1-schnell"}
    presets = {"flux-dev": "FLUX.1-dev (embedded guidance) from the local HF cache",
               "flux-schnell": "FLUX.1-schnell from the local HF cache"}
    teacher_class = FluxTeacher
    encoders = (("text_encoder", "CLIPTextModel", "CLIPTokenizer", False),
                ("text_encoder_2", "T5EncoderModel", "T5TokenizerFast", False))
    max_sequence_length = 512


class SanaFamily(FlowPipelineFamily):
    name = "sana"
    title = "SANA"
    help = "SANA (rectified flow, Gemma-2 text encoder, DC-AE): a diffusers SanaPipeline folder or cached hub id"
    preset_ids = {"sana-1600m": "Efficient-Large-Model/Sana_1600M_1024px_diffusers",
                  "sana-600m": "Efficient-Large-Model/Sana_600M_1024px_diffusers"}
    presets = {"sana-1600m": "SANA 1600M at 1024 px from the local HF cache",
               "sana-600m": "SANA 600M at 1024 px from the local HF cache"}
    teacher_class = SanaTeacher
    encoders = (("text_encoder", "Gemma2Model", "GemmaTokenizerFast", False),)
    max_sequence_length = 300  # SanaPipeline's default


SD3 = register(SD3Family())
FLUX = register(FluxFamily())
SANA = register(SanaFamily())
