"""Stable Diffusion XL as an odebench teacher: diffusers components behind the discrete-VP adapter.

The denoiser is the shared `DiscreteVPTeacher` (eps-prediction on the scaled-linear schedule read
from the scheduler config); this module adds SDXL's text conditioning and the VAE:
  - prompt embeddings as StableDiffusionXLPipeline.encode_prompt builds them: each CLIP encoder's
    penultimate hidden states, concatenated on the feature axis; the pooled embedding is the second
    encoder's projected `text_embeds`;
  - add_time_ids = (original H, W, crop top, left = 0, 0, target H, W) in pixels, for the output size;
  - the unconditional branch is zero embeddings (the paper; the pipeline's force_zeros_for_empty_prompt)
    or the encoded empty prompt;
  - embeddings are computed once per unique prompt and cached in memory for every student.
Weights come from a local diffusers folder or a hub id found in the local Hugging Face cache;
nothing is downloaded and no remote code runs. The ODE state stays float32 whatever the UNet dtype.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from odebench.errors import OdebenchError
from odebench.teachers.base import Guidance, check_network_dtype, network_dtype_name
from odebench.teachers.discrete import DiscreteVPTeacher
from odebench.teachers.text_condition import EncodedPrompts

SDXL_HUB_ID = "stabilityai/stable-diffusion-xl-base-1.0"
FP16_FIX_VAE = "madebyollin/sdxl-vae-fp16-fix"
MODEL_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}  # the --dtype choices
UNCOND_MODES = {"zeros": "zeros", "empty": "empty-prompt", "empty-prompt": "empty-prompt"}
_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                 "model.fp16.safetensors", "diffusion_pytorch_model.bin", "pytorch_model.bin")
# component -> files it needs (any one of a tuple)
COMPONENT_FILES = {
    "unet": ("config.json", _WEIGHT_NAMES), "text_encoder": ("config.json", _WEIGHT_NAMES),
    "text_encoder_2": ("config.json", _WEIGHT_NAMES), "vae": ("config.json", _WEIGHT_NAMES),
    "tokenizer": (("vocab.json", "tokenizer.json"),), "tokenizer_2": (("vocab.json", "tokenizer.json"),),
    "scheduler": ("scheduler_config.json",),
}


def is_sdxl_spec(spec: Any) -> bool:
    """`sdxl`, a diffusers folder with a UNet2DConditionModel, or a hub id (org/name)."""
    from odebench.weights import _is_hub_id

    if not isinstance(spec, (str, Path)):
        return False
    s = str(spec)
    if s == "sdxl":
        return True
    if s.lower().endswith(".json"):
        return False
    p = Path(s).expanduser()
    if p.is_dir():
        return (p / "model_index.json").is_file() or (p / "unet" / "config.json").is_file()
    return not p.exists() and _is_hub_id(s)


def _missing_files(root: Path) -> list[str]:
    missing = []
    for comp, needs in COMPONENT_FILES.items():
        for need in needs:
            names = need if isinstance(need, tuple) else (need,)
            if not any((root / comp / n).is_file() for n in names):
                missing.append(f"{comp}/{names[0]}")
                break
    return missing


def resolve_model_dir(spec: str | Path, what: str = "the SDXL teacher") -> Path:
    """The diffusers folder of an SDXL model: a local path, or a hub id in $ODEBENCH_WEIGHTS or the
    local Hugging Face cache (offline only); a one-line error names what is missing."""
    from odebench.weights import resolve_weights

    s = SDXL_HUB_ID if str(spec) == "sdxl" else str(spec)
    root = resolve_weights(s, what, describe="diffusers weights (model_index.json, unet/, text_encoder/, "
                           "text_encoder_2/, tokenizer/, tokenizer_2/, vae/, scheduler/)", flag="--teacher PATH")
    if not root.is_dir():
        raise OdebenchError(f"{what}: '{root}' is a file; expected a diffusers folder with unet/, text_encoder/, ...")
    missing = _missing_files(root)
    if missing:
        raise OdebenchError(f"{what} at '{root}' is incomplete: missing {', '.join(missing)}")
    return root


def _weights_file(folder: Path) -> Path:
    for name in _WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise OdebenchError(f"no weights file in {folder}")


def _variant(folder: Path) -> str | None:
    """diffusers' fp16 variant when only `*.fp16.safetensors` is present."""
    if any((folder / n).is_file() for n in _WEIGHT_NAMES if ".fp16." not in n):
        return None
    return "fp16"


def guidance_scale_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of 1000 w (LCM's guidance embedding, Luo et al. 2023; the pipelines pass
    w = guidance_scale - 1, i.e. the LCM-form weight): [sin(1000 w f_k), cos(1000 w f_k)],
    f_k = 10000^(-k/(dim/2 - 1)), zero-padded to an odd dim."""
    # float32 throughout, in the pipeline's order: sin(7000 f) is only float32-accurate to ~1e-4, and the
    # student was trained on these float32 values
    w = w.reshape(-1).float() * 1000.0
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
    emb = w[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class SDXLTeacher(DiscreteVPTeacher):
    """D(x, sigma, prompt index) of SDXL base through the discrete-schedule adapter."""

    default_conditional = True
    default_guidance = Guidance(9.0, "imagen", "zeros")  # the paper's teacher ODE
    default_samples = 64
    default_students = ("ddim:4", "ddim:8", "ref")
    paper_timestep_shift = 1.0  # ddim100 default: the released code's UNet timestep (see DiscreteVPTeacher)
    grid_scale = 1  # sample grids at the decoded size
    grid_count = 16

    def __init__(self, unet, text_encoders, tokenizers, vae, alphas_cumprod: torch.Tensor, prediction: str, *,
                 name: str, spec: Any, identity: dict[str, Any], height: int, width: int, device=None,
                 uncond: str = "zeros", vae_fp32: bool = True, schedule: dict[str, Any] | None = None) -> None:
        super().__init__(alphas_cumprod, prediction)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.unet = unet.eval().requires_grad_(False)
        self.text_encoders = [te.eval().requires_grad_(False) for te in text_encoders]
        self.tokenizers = list(tokenizers)
        for tok in self.tokenizers:
            if len(tok) <= 2:
                raise OdebenchError(f"tokenizer has only {len(tok)} tokens (its vocabulary did not load)")
        self.vae = vae.eval().requires_grad_(False) if vae is not None else None
        self.vae_fp32 = vae_fp32
        self.name = name
        self._spec = spec
        self.identity = identity
        self.schedule = schedule
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise OdebenchError(f"--height/--width must be multiples of {self.vae_scale_factor}, got {height}x{width}")
        self.height, self.width = int(height), int(width)
        self.shape = (int(unet.config.in_channels), self.height // self.vae_scale_factor, self.width // self.vae_scale_factor)
        uncond = UNCOND_MODES.get(uncond)
        if uncond is None:
            raise OdebenchError(f"unknown uncond {uncond!r}: expected zeros or empty")
        self.default_guidance = Guidance(9.0, "imagen", uncond)
        self.guidance = self.default_guidance
        self.prompts: list[str] = []
        self.num_classes = None
        self._last_batch: tuple | None = None  # (prompt indices, embeddings) of the latest batch
        self._embeddings: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # shared by with_guidance copies
        self.encoder_calls = 0  # prompts run through the text encoders (each unique prompt once)

    # -- identity ----------------------------------------------------------------------------
    @property
    def sigma_data(self) -> float:
        return 0.5  # LCM's sigma_data for SD latents

    # a precision view (with_network_dtype) casts its UNet copy on first use, so a view whose work is
    # all cached (a warm run's floor) never holds a second SDXL UNet
    _unet_pending: tuple | None = None  # (source UNet, target dtype)

    @property
    def unet(self):
        if self._unet_pending is not None:
            source, dtype = self._unet_pending
            # Module.to: diffusers' own .to() warns about casting; the cast is what is wanted here
            self._unet, self._unet_pending = torch.nn.Module.to(copy.deepcopy(source), dtype), None
        return self._unet

    @unet.setter
    def unet(self, module) -> None:
        self._unet, self._unet_pending = module, None

    @property
    def unet_dtype(self) -> torch.dtype:
        if self._unet_pending is not None:
            return self._unet_pending[1]
        return next(self.unet.parameters()).dtype

    def fingerprint(self) -> str:
        blob = json.dumps({**self.identity, "abar": hashlib.sha256(self.alphas_cumprod.numpy().tobytes()).hexdigest(),
                           "prediction": self.prediction, "add_time_ids": self.add_time_ids().tolist()}, sort_keys=True)
        return f"{self.name}-" + hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def network_dtype(self) -> str:
        return network_dtype_name(self.unet_dtype)

    def with_network_dtype(self, dtype: str) -> "SDXLTeacher":
        """A view whose UNet runs in `dtype`: a cast copy of the loaded UNet (the reference floor's
        precision part upcasts a fp16/bf16 UNet this way: the same weights in float32 arithmetic)."""
        torch_dtype = check_network_dtype(dtype)
        if torch_dtype == self.unet_dtype:
            return self
        other = copy.copy(self)
        other._unet_pending = (self.unet, torch_dtype)
        return other

    def spec(self) -> Any:
        return self._spec

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "height": self.height, "width": self.width, "device": str(self.device),
                "unet_dtype": str(self.unet_dtype).replace("torch.", ""), "vae_fp32": self.vae_fp32,
                "components": self.identity}

    def with_guidance(self, guidance: Guidance) -> "SDXLTeacher":
        if guidance.uncond == "null":  # a bare --guidance: keep this teacher's uncond branch
            guidance = Guidance(guidance.w, guidance.form, self.default_guidance.uncond)
        if guidance.uncond not in ("zeros", "empty-prompt"):
            raise OdebenchError(f"SDXL's unconditional branch is zeros or empty-prompt, not {guidance.uncond!r}")
        other = copy.copy(self)
        other.guidance = guidance
        return other

    # -- prompts -----------------------------------------------------------------------------
    def set_prompts(self, prompts) -> None:
        """The prompt list that condition indices refer to (sample i gets prompt i mod P)."""
        prompts = [str(p) for p in prompts]
        if not prompts:
            raise OdebenchError("the prompt list is empty")
        self.prompts = prompts
        self.num_classes = len(prompts)
        self._last_batch = None

    def add_time_ids(self) -> torch.Tensor:
        """SDXL micro-conditioning for the output size: original (H, W), crop (0, 0), target (H, W)."""
        return torch.tensor([self.height, self.width, 0, 0, self.height, self.width], dtype=torch.float32)

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
        self.encoder_calls += len(prompts)
        return torch.cat(embeds, dim=-1), pooled

    def embeddings(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached per unique prompt; the text encoders see each prompt once per teacher."""
        todo = sorted({p for p in prompts if p not in self._embeddings})
        if todo:
            e, p = self._encode(todo)
            for i, text in enumerate(todo):
                self._embeddings[text] = (e[i], p[i])
        return (torch.stack([self._embeddings[p][0] for p in prompts]), torch.stack([self._embeddings[p][1] for p in prompts]))

    def uncond_embeddings(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.guidance.uncond == "empty-prompt":
            return self.embeddings([""] * batch)
        width = sum(int(te.config.hidden_size) for te in self.text_encoders)
        length = int(self.tokenizers[0].model_max_length)
        return (torch.zeros(batch, length, width, device=self.device),
                torch.zeros(batch, int(self.text_encoders[-1].config.projection_dim), device=self.device))

    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeds, pooled) for `prompts`, uncached: training captions are many and seen few times each."""
        return self._encode(list(prompts))

    def condition_inputs(self, cond, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(encoder_hidden_states, text_embeds) for prompt indices `cond` or EncodedPrompts (None: the uncond branch)."""
        if cond is None:
            return self.uncond_embeddings(batch)
        if isinstance(cond, EncodedPrompts):
            return cond.embeds, cond.pooled
        if not self.prompts:
            raise OdebenchError("the SDXL teacher has no prompts (pass --prompts FILE, or 'builtin')")
        key = tuple(cond.reshape(-1).tolist())
        if self._last_batch is None or self._last_batch[0] != key:  # an ODE solve asks for the same batch every NFE
            self._last_batch = (key, self.embeddings([self.prompts[i % len(self.prompts)] for i in key]))
        return self._last_batch[1]

    # -- the network -------------------------------------------------------------------------
    def time_ids(self, cond, batch: int) -> torch.Tensor:
        """add_time_ids per item: the training image's own (EncodedPrompts), else the output size's."""
        if isinstance(cond, EncodedPrompts):
            return cond.time_ids
        return self.add_time_ids().expand(batch, -1)

    def run_unet(self, unet, x_in: torch.Tensor, t: torch.Tensor, ehs: torch.Tensor, pooled: torch.Tensor,
                 timestep_cond: torch.Tensor | None = None, time_ids: torch.Tensor | None = None) -> torch.Tensor:
        """One UNet pass on this teacher's device and dtype; the output comes back float32 where x_in lives."""
        dtype = next(unet.parameters()).dtype
        b = x_in.shape[0]
        time_ids = self.add_time_ids().expand(b, -1) if time_ids is None else time_ids
        kw = {"added_cond_kwargs": {"text_embeds": pooled.to(self.device, dtype),
                                    "time_ids": time_ids.to(self.device, dtype)}}
        if timestep_cond is not None:
            kw["timestep_cond"] = timestep_cond.to(self.device, dtype)
        with torch.no_grad():
            out = unet(x_in.to(self.device, dtype), t.to(self.device, torch.float32), encoder_hidden_states=ehs.to(self.device, dtype),
                       **kw).sample
        return out.to(x_in.device, torch.float32)

    def _model(self, x_in, t, cond):
        ehs, pooled = self.condition_inputs(cond, x_in.shape[0])
        return self.run_unet(self.unet, x_in, t, ehs, pooled, time_ids=self.time_ids(cond, x_in.shape[0]))

    def _denoise_pair(self, x, sigma, cond):
        """Both CFG branches in one UNet batch (uncond first, as the pipeline orders them)."""
        s, c_in = self._scalings(x, sigma)
        t = self.model_timestep(sigma)
        b = x.shape[0]
        eu, pu = self.condition_inputs(None, b)
        ec, pc = self.condition_inputs(cond, b)
        x_in = (x * c_in).repeat(2, *([1] * (x.dim() - 1)))
        ids = self.time_ids(cond, b)  # both branches see the item's micro-conditioning (only the text is zeroed)
        out = self.run_unet(self.unet, x_in, t.repeat(2), torch.cat([eu, ec]), torch.cat([pu, pc]), time_ids=torch.cat([ids, ids]))
        return self._to_denoised(x, s, c_in, out[:b]), self._to_denoised(x, s, c_in, out[b:])

    # -- images ------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, x: torch.Tensor, batch_size: int = 4) -> np.ndarray:
        """Scaled latents (N, 4, h, w) -> uint8 RGB (N, H, W, 3), batched, in memory. The VAE runs in
        float32 unless it is the fp16-fix VAE (SDXL's own VAE overflows in fp16)."""
        from odebench.images import to_uint8_rgb

        if self.vae is None:
            raise OdebenchError("this SDXL teacher was loaded without a VAE; images cannot be decoded")
        cfg = self.vae.config
        dtype = next(self.vae.parameters()).dtype
        outs = []
        for lo in range(0, x.shape[0], batch_size):
            z = x[lo:lo + batch_size].float()
            if getattr(cfg, "latents_mean", None) is not None and getattr(cfg, "latents_std", None) is not None:
                mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1)
                std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1)
                z = z * std / cfg.scaling_factor + mean
            else:
                z = z / cfg.scaling_factor
            img = self.vae.decode(z.to(self.device, dtype)).sample.float().cpu()
            outs.append(to_uint8_rgb(img))
        return np.concatenate(outs) if outs else np.zeros((0, self.height, self.width, 3), np.uint8)


def load_sdxl_teacher(spec: str | Path = "sdxl", *, vae: str | Path | None = None, dtype: str = "fp32",
                      device: str | None = None, height: int | None = None, width: int | None = None,
                      uncond: str = "zeros", load_vae: bool = True) -> SDXLTeacher:
    """An SDXL teacher from a diffusers folder or a locally cached hub id (`sdxl` = SDXL base 1.0).

    dtype: the UNet's (fp16 | bf16 | fp32; the ODE state stays float32); vae: a separate VAE folder or
    hub id (the fp16-fix VAE runs in `dtype`; otherwise the VAE decodes in float32); height/width:
    output size in pixels (default: the UNet's sample size x the VAE factor, 1024 for SDXL).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from odebench.fileio import read_json_object
    from odebench.teachers.unet import alphas_cumprod_from_schedule
    from odebench.weights import file_sha256, resolve_weights

    if dtype not in MODEL_DTYPES:
        raise OdebenchError(f"unknown model dtype {dtype!r}: expected fp16, bf16 or fp32")
    torch_dtype = MODEL_DTYPES[dtype]
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OdebenchError("--device cuda was asked for, but torch sees no CUDA device")
    root = resolve_model_dir(spec)
    sched = read_json_object(root / "scheduler" / "scheduler_config.json", "scheduler config")
    schedule = {"kind": "discrete-vp", "beta_schedule": sched.get("beta_schedule", "scaled_linear"),
                "beta_start": float(sched.get("beta_start", 0.00085)), "beta_end": float(sched.get("beta_end", 0.012)),
                "num_train_timesteps": int(sched.get("num_train_timesteps", 1000))}
    prediction = sched.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction"):
        raise OdebenchError(f"{root}: prediction_type {prediction!r} is not supported (epsilon or v_prediction)")
    try:
        common = {"local_files_only": True}
        unet = UNet2DConditionModel.from_pretrained(str(root), subfolder="unet", torch_dtype=torch_dtype,
                                                    variant=_variant(root / "unet"), **common)
        te_dtype = torch.float32 if (dev.type == "cpu" and torch_dtype == torch.float16) else torch_dtype
        te1 = CLIPTextModel.from_pretrained(str(root), subfolder="text_encoder", dtype=te_dtype,
                                            variant=_variant(root / "text_encoder"), **common)
        te2 = CLIPTextModelWithProjection.from_pretrained(str(root), subfolder="text_encoder_2", dtype=te_dtype,
                                                          variant=_variant(root / "text_encoder_2"), **common)
        tok1 = CLIPTokenizer.from_pretrained(str(root), subfolder="tokenizer", **common)
        tok2 = CLIPTokenizer.from_pretrained(str(root), subfolder="tokenizer_2", **common)
        vae_model, vae_fp32, vae_id = None, True, None
        if load_vae:
            if vae is not None:
                vae_root = resolve_weights(str(vae), "the SDXL VAE", describe="a diffusers AutoencoderKL folder", flag="--vae PATH")
                vae_model = AutoencoderKL.from_pretrained(str(vae_root), torch_dtype=torch_dtype, **common)
                vae_fp32 = torch_dtype == torch.float32
                vae_id = f"{vae} ({_weights_file(vae_root).name} sha256:{file_sha256(_weights_file(vae_root))[:12]})"
            else:
                vae_model = AutoencoderKL.from_pretrained(str(root), subfolder="vae", torch_dtype=torch.float32,
                                                          variant=_variant(root / "vae"), **common)
    except OdebenchError:
        raise
    except Exception as e:  # corrupt or mismatched files: one line, the component named by diffusers
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OdebenchError(f"cannot load the SDXL teacher from '{root}': {msg[:300]}") from None
    identity = {"source": str(spec)}
    for comp in ("unet", "text_encoder", "text_encoder_2"):
        w = _weights_file(root / comp)
        identity[comp] = f"{w.name} sha256:{file_sha256(w)[:16]}"
    for comp in ("tokenizer", "tokenizer_2"):
        files = sorted(p for p in (root / comp).iterdir() if p.is_file())
        identity[comp] = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()[:16]
    if vae_id:
        identity["vae"] = vae_id
    unet = unet.to(dev)
    te1, te2 = te1.to(dev), te2.to(dev)
    if vae_model is not None:
        vae_model = vae_model.to(dev)
    factor = 2 ** (len(vae_model.config.block_out_channels) - 1) if vae_model is not None else 8
    default_px = int(unet.config.sample_size) * factor
    name = "sdxl" if str(spec) in ("sdxl", SDXL_HUB_ID) else Path(str(spec).rstrip("/")).name
    return SDXLTeacher(unet, [te1, te2], [tok1, tok2], vae_model, alphas_cumprod_from_schedule(schedule), prediction,
                       name=name, spec=str(spec), identity={k: v for k, v in identity.items() if k != "source"},
                       height=height or default_px, width=width or default_px, device=dev, uncond=uncond,
                       vae_fp32=vae_fp32, schedule=schedule)
