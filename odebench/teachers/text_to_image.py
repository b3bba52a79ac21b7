"""What every diffusers text-to-image UNet teacher shares (SD 1.x/2.x, SDXL): the pipeline folder,
prompts and their cached embeddings, the CFG uncond branch, the UNet call, the VAE decode, and loading.

A family subclasses `TextToImageTeacher` with its prompt encoding (`_encode`, `uncond_zeros`) and, for
SDXL, its micro-conditioning (`time_ids`); the denoiser is the shared discrete-VP adapter
(odebench.teachers.discrete) with the prediction type and training schedule read from the folder's
scheduler config. Weights come from a local diffusers folder or a hub id found in $ODEBENCH_WEIGHTS or the
local Hugging Face cache; nothing is downloaded and no remote code runs. The ODE state stays float32
whatever the UNet dtype.
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
from odebench.teachers.base import DECODES, DISCRETE, SCHEDULER, TEXT, UNET, Guidance
from odebench.teachers.discrete import DiscreteVPTeacher, alphas_cumprod_from_schedule, schedule_from_scheduler_config
from odebench.teachers.family import TeacherFamily
from odebench.teachers.network_view import CastableNetwork, LazyCastModule
from odebench.teachers.text_condition import EncodedPrompts

MODEL_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
UNCOND_MODES = {"zeros": "zeros", "empty": "empty-prompt", "empty-prompt": "empty-prompt"}
OPTIONS = ("vae", "dtype", "device", "height", "width", "uncond")  # the teacher options of these families
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                "model.fp16.safetensors", "diffusion_pytorch_model.bin", "pytorch_model.bin")
TOKENIZER_FILES = ("vocab.json", "tokenizer.json")


def pipeline_class(spec: Any) -> str | None:
    """The diffusers pipeline class a teacher folder (or a hub id on this machine) holds: model_index.json's
    `_class_name`, else guessed from the layout (a second text encoder: SDXL); None when it is no such folder."""
    from odebench.weights import _is_hub_id, resolve_weights

    if not isinstance(spec, (str, Path)) or str(spec).lower().endswith(".json"):
        return None
    p = Path(str(spec)).expanduser()
    if not p.exists():
        if not _is_hub_id(str(spec)):
            return None
        try:
            p = resolve_weights(str(spec), f"teacher {spec}")
        except OdebenchError:
            return None
    if not p.is_dir():
        return None
    index = p / "model_index.json"
    if index.is_file():
        try:
            name = json.loads(index.read_text()).get("_class_name")
        except (ValueError, OSError, AttributeError):
            name = None
        if isinstance(name, str):
            return name
    if (p / "unet" / "config.json").is_file():
        return "StableDiffusionXLPipeline" if (p / "text_encoder_2").is_dir() else "StableDiffusionPipeline"
    return None


def weights_file(folder: Path) -> Path:
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise OdebenchError(f"no weights file in {folder}")


def _variant(folder: Path) -> str | None:
    """diffusers' fp16 variant when only `*.fp16.safetensors` is present."""
    if any((folder / n).is_file() for n in WEIGHT_NAMES if ".fp16." not in n):
        return None
    return "fp16"


def resolve_model_dir(spec: str, components: tuple[str, ...], what: str) -> Path:
    """The diffusers folder of a pipeline: a local path, or a hub id in $ODEBENCH_WEIGHTS or the local
    Hugging Face cache (offline only); a one-line error names what is missing."""
    from odebench.weights import resolve_weights

    root = resolve_weights(spec, what, describe=f"diffusers weights (model_index.json, {', '.join(c + '/' for c in components)}"
                                                f" scheduler/)", flag="--teacher PATH")
    if not root.is_dir():
        raise OdebenchError(f"{what}: '{root}' is a file; expected a diffusers folder with unet/, text_encoder/, ...")
    missing = []
    for comp in (*components, "scheduler"):
        needs = (("scheduler_config.json",),) if comp == "scheduler" else \
            ((TOKENIZER_FILES,) if comp.startswith("tokenizer") else ("config.json", WEIGHT_NAMES))
        for need in needs:
            names = need if isinstance(need, tuple) else (need,)
            if not any((root / comp / n).is_file() for n in names):
                missing.append(f"{comp}/{names[0]}")
                break
    if missing:
        raise OdebenchError(f"{what} at '{root}' is incomplete: missing {', '.join(missing)}")
    return root


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


class TextToImageTeacher(CastableNetwork, DiscreteVPTeacher):
    """D(x, sigma, prompt index) of a diffusers text-to-image UNet through the discrete-schedule adapter."""

    capabilities = frozenset({DISCRETE, DECODES, TEXT, UNET, SCHEDULER})
    default_conditional = True
    default_samples = 64
    grid_scale = 1  # sample grids at the decoded size
    grid_count = 16
    title = "text-to-image"  # the family's display name, in messages
    pipeline = "DiffusionPipeline"  # the diffusers pipeline class (its LoRA loader loads students' LoRAs)
    default_w = 7.5  # the pipeline's guidance_scale default (imagen form)
    default_uncond = "empty-prompt"

    def __init__(self, unet, text_encoders, tokenizers, vae, alphas_cumprod: torch.Tensor, prediction: str, *,
                 name: str, spec: Any, identity: dict[str, Any], height: int, width: int, device=None,
                 uncond: str | None = None, vae_fp32: bool = True, schedule: dict[str, Any] | None = None,
                 scheduler_config: dict[str, Any] | None = None) -> None:
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
        self.pipeline_scheduler_config = dict(scheduler_config or {})  # scheduler rows start from it
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise OdebenchError(f"--height/--width must be multiples of {self.vae_scale_factor}, got {height}x{width}")
        self.height, self.width = int(height), int(width)
        self.shape = (int(unet.config.in_channels), self.height // self.vae_scale_factor, self.width // self.vae_scale_factor)
        mode = UNCOND_MODES.get(uncond or self.default_uncond)
        if mode is None:
            raise OdebenchError(f"unknown uncond {uncond!r}: expected zeros or empty")
        self.default_guidance = Guidance(self.default_w, "imagen", mode)
        self.guidance = self.default_guidance
        self.prompts: list[str] = []
        self.num_classes = None
        self._last_batch: tuple | None = None  # (prompt indices, embeddings) of the latest batch
        self._embeddings: dict[str, tuple] = {}  # shared by with_guidance copies
        self.encoder_calls = 0  # prompts run through the text encoders (each unique prompt once)

    # -- what a family provides --------------------------------------------------------------
    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(encoder_hidden_states (N, L, D), pooled (N, P) or None) as the pipeline's encode_prompt builds them."""
        raise NotImplementedError

    def uncond_zeros(self, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Zero text embeddings (and pooled), the `zeros` uncond branch."""
        raise NotImplementedError

    def time_ids(self, cond, batch: int) -> torch.Tensor | None:
        """Micro-conditioning per item (SDXL's add_time_ids); None where the UNet takes none."""
        return None

    def conditioning_identity(self) -> dict[str, Any]:
        """What else fixes the denoiser besides weights, schedule and prediction (SDXL: add_time_ids)."""
        return {}

    # -- identity ----------------------------------------------------------------------------
    @property
    def sigma_data(self) -> float:
        return 0.5  # LCM's sigma_data for SD latents

    # a precision view (with_network_dtype) casts its UNet copy on first use, so a view whose work is
    # all cached (a warm run's floor) never holds a second UNet
    unet = LazyCastModule()
    network_attr = "unet"

    @property
    def unet_dtype(self) -> torch.dtype:
        return type(self).unet.dtype(self)

    def fingerprint(self) -> str:
        blob = json.dumps({**self.identity, "abar": hashlib.sha256(self.alphas_cumprod.numpy().tobytes()).hexdigest(),
                           "prediction": self.prediction, **self.conditioning_identity()}, sort_keys=True)
        return f"{self.name}-" + hashlib.sha256(blob.encode()).hexdigest()[:16]

    def spec(self) -> Any:
        return self._spec

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "height": self.height, "width": self.width, "device": str(self.device),
                "unet_dtype": str(self.unet_dtype).replace("torch.", ""), "vae_fp32": self.vae_fp32,
                "prediction": self.prediction, "schedule": self.schedule, "components": self.identity}

    def with_guidance(self, guidance: Guidance) -> "TextToImageTeacher":
        if guidance.uncond == "null":  # a bare --guidance: keep this teacher's uncond branch
            guidance = Guidance(guidance.w, guidance.form, self.default_guidance.uncond)
        if guidance.uncond not in ("zeros", "empty-prompt"):
            raise OdebenchError(f"{self.title}'s unconditional branch is zeros or empty-prompt, not {guidance.uncond!r}")
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

    def embeddings(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Cached per unique prompt; the text encoders see each prompt once per teacher."""
        todo = sorted({p for p in prompts if p not in self._embeddings})
        if todo:
            e, p = self._encode(todo)
            self.encoder_calls += len(todo)
            for i, text in enumerate(todo):
                self._embeddings[text] = (e[i], None if p is None else p[i])
        embeds = torch.stack([self._embeddings[p][0] for p in prompts])
        pooled = None if self._embeddings[prompts[0]][1] is None else torch.stack([self._embeddings[p][1] for p in prompts])
        return embeds, pooled

    def uncond_embeddings(self, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.guidance.uncond == "empty-prompt":
            return self.embeddings([""] * batch)
        return self.uncond_zeros(batch)

    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(embeds, pooled) for `prompts`, uncached: training captions are many and seen few times each."""
        self.encoder_calls += len(prompts)
        return self._encode(list(prompts))

    def condition_inputs(self, cond, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(encoder_hidden_states, pooled text_embeds or None) for prompt indices `cond` or EncodedPrompts
        (None: the uncond branch)."""
        if cond is None:
            return self.uncond_embeddings(batch)
        if isinstance(cond, EncodedPrompts):
            return cond.embeds, cond.pooled
        if not self.prompts:
            raise OdebenchError(f"the {self.title} teacher has no prompts (pass --prompts FILE, or 'builtin')")
        key = tuple(cond.reshape(-1).tolist())
        if self._last_batch is None or self._last_batch[0] != key:  # an ODE solve asks for the same batch every NFE
            self._last_batch = (key, self.embeddings([self.prompts[i % len(self.prompts)] for i in key]))
        return self._last_batch[1]

    # -- the network -------------------------------------------------------------------------
    def run_unet(self, unet, x_in: torch.Tensor, t: torch.Tensor, ehs: torch.Tensor, pooled: torch.Tensor | None,
                 timestep_cond: torch.Tensor | None = None, time_ids: torch.Tensor | None = None) -> torch.Tensor:
        """One UNet pass on this teacher's device and dtype; the output comes back float32 where x_in lives.
        `pooled` and `time_ids` feed SDXL's added conditioning (time_ids default: the output size's)."""
        dtype = next(unet.parameters()).dtype
        b = x_in.shape[0]
        kw: dict[str, Any] = {}
        if pooled is not None:
            time_ids = self.time_ids(None, b) if time_ids is None else time_ids
            kw["added_cond_kwargs"] = {"text_embeds": pooled.to(self.device, dtype), "time_ids": time_ids.to(self.device, dtype)}
        if timestep_cond is not None:
            kw["timestep_cond"] = timestep_cond.to(self.device, dtype)
        with torch.no_grad():
            out = unet(x_in.to(self.device, dtype), t.to(self.device, torch.float32), encoder_hidden_states=ehs.to(self.device, dtype),
                       **kw).sample
        return out.to(x_in.device, torch.float32)

    def _model(self, x_in, t, cond):
        ehs, pooled = self.condition_inputs(cond, x_in.shape[0])
        return self.run_unet(self.unet, x_in, t, ehs, pooled, time_ids=self.time_ids(cond, x_in.shape[0]))

    def _model_pair(self, x_in, t, cond):
        """Both CFG branches in one UNet batch (uncond first, as the pipelines order them)."""
        b = x_in.shape[0]
        eu, pu = self.condition_inputs(None, b)
        ec, pc = self.condition_inputs(cond, b)
        ids = self.time_ids(cond, b)  # both branches see the item's micro-conditioning (only the text is zeroed)
        out = self.run_unet(self.unet, x_in.repeat(2, *([1] * (x_in.dim() - 1))), t.repeat(2), torch.cat([eu, ec]),
                            None if pc is None else torch.cat([pu, pc]), time_ids=None if ids is None else torch.cat([ids, ids]))
        return out[:b], out[b:]

    # -- images ------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, x: torch.Tensor, batch_size: int = 4) -> np.ndarray:
        """Scaled latents (N, C, h, w) -> uint8 RGB (N, H, W, 3), batched, in memory. The VAE runs in
        float32 unless a separate VAE was given (e.g. SDXL's fp16-fix VAE; SDXL's own overflows in fp16)."""
        from odebench.images import to_uint8_rgb

        if self.vae is None:
            raise OdebenchError(f"this {self.title} teacher was loaded without a VAE; images cannot be decoded")
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


def load_text_to_image_teacher(cls: type[TextToImageTeacher], spec: str, hub_id: str, encoders: tuple[tuple[str, str], ...],
                               *, vae: str | Path | None = None, dtype: str = "fp32", device: str | None = None,
                               height: int | None = None, width: int | None = None, uncond: str | None = None,
                               load_vae: bool = True, name: str | None = None) -> TextToImageTeacher:
    """A `cls` teacher from a diffusers folder or a locally cached hub id (`hub_id` is the folder to look for).

    encoders: (text encoder subfolder, transformers class name) in the pipeline's order, each with its
    tokenizer subfolder (text_encoder -> tokenizer, text_encoder_2 -> tokenizer_2). dtype: the UNet's
    (fp16 | bf16 | fp32; the ODE state stays float32); vae: a separate VAE folder or hub id (it runs in
    `dtype`; otherwise the VAE decodes in float32); height/width: output size in pixels (default: the UNet's
    sample size x the VAE factor).
    """
    import transformers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTokenizer

    from odebench.fileio import read_json_object
    from odebench.weights import file_sha256, resolve_weights

    what = f"the {cls.title} teacher"
    if dtype not in MODEL_DTYPES:
        raise OdebenchError(f"unknown model dtype {dtype!r}: expected fp16, bf16 or fp32")
    torch_dtype = MODEL_DTYPES[dtype]
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OdebenchError("--device cuda was asked for, but torch sees no CUDA device")
    tokenizer_dirs = tuple(sub.replace("text_encoder", "tokenizer") for sub, _ in encoders)
    root = resolve_model_dir(hub_id, ("unet", *(sub for sub, _ in encoders), *tokenizer_dirs, "vae"), what)
    sched = read_json_object(root / "scheduler" / "scheduler_config.json", "scheduler config")
    schedule, prediction = schedule_from_scheduler_config(sched, str(root / "scheduler" / "scheduler_config.json"))
    try:
        common = {"local_files_only": True}
        unet = UNet2DConditionModel.from_pretrained(str(root), subfolder="unet", torch_dtype=torch_dtype,
                                                    variant=_variant(root / "unet"), **common)
        te_dtype = torch.float32 if (dev.type == "cpu" and torch_dtype == torch.float16) else torch_dtype
        text_encoders = [getattr(transformers, klass).from_pretrained(str(root), subfolder=sub, dtype=te_dtype,
                                                                      variant=_variant(root / sub), **common)
                         for sub, klass in encoders]
        tokenizers = [CLIPTokenizer.from_pretrained(str(root), subfolder=sub, **common) for sub in tokenizer_dirs]
        vae_model, vae_fp32, vae_id = None, True, None
        if load_vae:
            if vae is not None:
                vae_root = resolve_weights(str(vae), f"the {cls.title} VAE", describe="a diffusers AutoencoderKL folder", flag="--vae PATH")
                vae_model = AutoencoderKL.from_pretrained(str(vae_root), torch_dtype=torch_dtype, **common)
                vae_fp32 = torch_dtype == torch.float32
                vae_id = f"{vae} ({weights_file(vae_root).name} sha256:{file_sha256(weights_file(vae_root))[:12]})"
            else:
                vae_model = AutoencoderKL.from_pretrained(str(root), subfolder="vae", torch_dtype=torch.float32,
                                                          variant=_variant(root / "vae"), **common)
    except OdebenchError:
        raise
    except Exception as e:  # corrupt or mismatched files: one line, the component named by diffusers
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OdebenchError(f"cannot load {what} from '{root}': {msg[:300]}") from None
    identity = {}
    for comp in ("unet", *(sub for sub, _ in encoders)):
        w = weights_file(root / comp)
        identity[comp] = f"{w.name} sha256:{file_sha256(w)[:16]}"
    for comp in tokenizer_dirs:
        files = sorted(p for p in (root / comp).iterdir() if p.is_file())
        identity[comp] = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()[:16]
    if vae_id:
        identity["vae"] = vae_id
    unet = unet.to(dev)
    text_encoders = [te.to(dev) for te in text_encoders]
    if vae_model is not None:
        vae_model = vae_model.to(dev)
    factor = 2 ** (len(vae_model.config.block_out_channels) - 1) if vae_model is not None else 8
    default_px = int(unet.config.sample_size) * factor
    return cls(unet, text_encoders, tokenizers, vae_model, alphas_cumprod_from_schedule(schedule), prediction,
               name=name or Path(str(spec).rstrip("/")).name, spec=str(spec), identity=identity,
               height=height or default_px, width=width or default_px, device=dev, uncond=uncond,
               vae_fp32=vae_fp32, schedule=schedule, scheduler_config=sched)


class TextToImageFamily(TeacherFamily):
    """A family of diffusers text-to-image pipelines: matched by the folder's pipeline class (or a preset
    name), loaded by `load_text_to_image_teacher`, scored with the image metrics."""

    options = OPTIONS
    teacher_class: type[TextToImageTeacher] = TextToImageTeacher
    encoders: tuple[tuple[str, str], ...] = ()  # (text encoder subfolder, transformers class), pipeline order
    preset_ids: dict[str, str] = {}  # preset name -> the hub id it stands for

    def matches(self, spec) -> bool:
        if isinstance(spec, (str, Path)) and str(spec) in self.preset_ids:
            return True
        return pipeline_class(spec) == self.teacher_class.pipeline

    def load(self, spec, **options) -> TextToImageTeacher:
        s = str(spec)
        names = {hub: name for name, hub in self.preset_ids.items()}
        return load_text_to_image_teacher(self.teacher_class, s, self.preset_ids.get(s, s), self.encoders,
                                          name=s if s in self.preset_ids else names.get(s), **options)

    def quality(self, teacher, conditions, seed, n, selection="auto", weights=None, device=None, fd_bootstrap=10):
        from odebench.quality import ImageQuality

        return ImageQuality(teacher, conditions, n, selection, weights, device, fd_bootstrap)
