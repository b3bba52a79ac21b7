"""Class-conditional pixel-space UNet teachers (diffusers UNet2DModel) on a discrete VP schedule.

The embedded `digits` teacher is one: its weights ship in odebench/assets/digits as safetensors
with a JSON sidecar (format "odebench-teacher") holding the UNet config, the schedule and how it
was trained. Class `null_class` is the unconditional label used for classifier-free guidance.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from odebench.errors import OdebenchError
from odebench.teachers.base import DECODES, DISCRETE, SCHEDULER, Guidance, check_network_dtype, network_dtype_name
from odebench.teachers.discrete import DiscreteVPTeacher, alphas_cumprod_from_schedule  # noqa: F401 (re-exported)
from odebench.teachers.family import PaperGrid, TeacherFamily, register

TEACHER_FORMAT = "odebench-teacher"


class UNetClassTeacher(DiscreteVPTeacher):
    """D(x, sigma, label) of a class-conditional UNet2DModel through the discrete-schedule adapter."""

    family = "digits"
    capabilities = frozenset({DISCRETE, DECODES, SCHEDULER})
    default_conditional = True
    default_samples = 512  # cold default run within ~3 min on 2 CPU cores; FD stderr still reported

    def __init__(self, unet, alphas_cumprod: torch.Tensor, prediction: str, num_classes: int, null_class: int,
                 weights_sha256: str, name: str = "unet", guidance: Guidance | None = None, spec: Any = None,
                 schedule: dict[str, Any] | None = None) -> None:
        super().__init__(alphas_cumprod, prediction)
        self.unet = unet.eval().requires_grad_(False)
        # the network as loaded (the shipped float32 weights): other precisions are cast from it, so
        # a bf16 teacher's float32 view (the reference floor's precision part) is the original network
        self._master = self.unet
        self.name = name
        self.num_classes = int(num_classes)
        self.null_class = int(null_class)
        cfg = unet.config
        self.shape = (int(cfg.in_channels), int(cfg.sample_size), int(cfg.sample_size))
        self.weights_sha256 = weights_sha256
        self.default_guidance = guidance or Guidance(1.0, "imagen", "null")
        self.guidance = self.default_guidance
        self._spec = spec if spec is not None else name
        self.schedule = schedule  # the sidecar's schedule description, recorded in students' sidecars

    @property
    def sigma_data(self) -> float:
        return 0.5  # data scaled to [-1, 1], as for SD latents' LCM parameterisation

    def _labels(self, cond: torch.Tensor | None, batch: int) -> torch.Tensor:
        return torch.full((batch,), self.null_class, dtype=torch.long) if cond is None else cond.long()

    def _unet(self, x_in: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        dtype = next(self.unet.parameters()).dtype
        with torch.no_grad():
            # the timestep in float32 at least: bf16 would round t to 3 significant digits
            t_dtype = torch.float64 if dtype == torch.float64 else torch.float32
            return self.unet(x_in.to(dtype), t.to(t_dtype), class_labels=labels).sample

    def _model(self, x_in, t, cond):
        return self._unet(x_in, t, self._labels(cond, x_in.shape[0]))

    def _model_pair(self, x_in, t, cond):
        """Both CFG branches in one UNet batch (the null label, then the requested one)."""
        b = x_in.shape[0]
        out = self._unet(x_in.repeat(2, *([1] * (x_in.dim() - 1))), t.repeat(2),
                         torch.cat([self._labels(None, b), self._labels(cond, b)]))
        return out[:b], out[b:]

    @property
    def network_dtype(self) -> str:
        return network_dtype_name(next(self.unet.parameters()).dtype)

    def with_network_dtype(self, dtype: str) -> "UNetClassTeacher":
        """A view whose UNet runs in `dtype`: a cast copy of the loaded weights (bf16/fp16 round them);
        the state stays in its own dtype, the UNet's input and output are cast at the call."""
        torch_dtype = check_network_dtype(dtype)
        if torch_dtype == next(self.unet.parameters()).dtype:
            return self
        other = copy.copy(self)
        master_dtype = next(self._master.parameters()).dtype
        other.unet = self._master if torch_dtype == master_dtype else torch.nn.Module.to(copy.deepcopy(self._master), torch_dtype)
        return other

    def fingerprint(self) -> str:
        blob = json.dumps({"weights": self.weights_sha256, "abar": hashlib.sha256(self.alphas_cumprod.numpy().tobytes()).hexdigest(),
                           "prediction": self.prediction, "null": self.null_class}, sort_keys=True)
        return f"{self.name}-" + hashlib.sha256(blob.encode()).hexdigest()[:16]

    def spec(self) -> Any:
        return self._spec

    def decode(self, x: torch.Tensor):
        """Model space [-1, 1] -> uint8 RGB images (N, H, W, 3)."""
        from odebench.images import to_uint8_rgb

        return to_uint8_rgb(x)


def load_unet_teacher(sidecar_path: Path, name: str, spec: Any = None) -> UNetClassTeacher:
    """Build the teacher from its sidecar and safetensors weights (checksum-verified)."""
    from diffusers import UNet2DModel
    from safetensors.torch import load_file

    from odebench.fileio import file_sha256, read_json_object

    if not sidecar_path.is_file():
        raise OdebenchError(f"teacher sidecar not found: {sidecar_path}")
    side = read_json_object(sidecar_path, "teacher sidecar")
    if side.get("format") != TEACHER_FORMAT:
        raise OdebenchError(f"{sidecar_path}: not an odebench teacher sidecar (format must be {TEACHER_FORMAT!r})")
    weights = sidecar_path.parent / side["weights"]
    if not weights.is_file():
        raise OdebenchError(f"teacher weights not found: {weights}")
    sha = file_sha256(weights)
    if side.get("weights_sha256") and sha != side["weights_sha256"]:
        raise OdebenchError(f"{weights}: checksum does not match its sidecar (file changed or corrupt)")
    unet = UNet2DModel.from_config(side["unet_config"])
    state = load_file(str(weights))
    unet.load_state_dict({k: v.float() for k, v in state.items()})
    schedule = side["schedule"]
    g = side.get("default_guidance", {"w": 1.0, "form": "imagen", "uncond": "null"})
    return UNetClassTeacher(unet, alphas_cumprod_from_schedule(schedule), schedule.get("prediction", "epsilon"),
                            side["num_classes"], side["null_class"], sha, name=name,
                            guidance=Guidance.from_dict(g), spec=spec if spec is not None else name,
                            schedule={k: schedule[k] for k in ("kind", "beta_schedule", "beta_start", "beta_end", "num_train_timesteps")})


class DigitsFamily(TeacherFamily):
    """The embedded digits teacher (weights in odebench/assets/digits)."""

    name = "digits"
    help = "the embedded class-conditional pixel UNet (digits)"
    presets = {"digits": "class-conditional 8x8 pixel UNet (diffusers), eps-prediction on SD's discrete VP schedule, "
                         "trained here on sklearn digits"}
    paper_grid = PaperGrid()
    default_rows = ("ddim:1", "ddim:2", "ddim:4", "ddim:8", "heun:4", "ref")

    def matches(self, spec) -> bool:
        return isinstance(spec, (str, Path)) and str(spec) == "digits"

    def load(self, spec, **options) -> UNetClassTeacher:
        from importlib import resources

        return load_unet_teacher(Path(str(resources.files("odebench.assets").joinpath("digits", "teacher.json"))), "digits")

    def quality(self, teacher, conditions, seed, n, selection="auto", weights=None, device=None, fd_bootstrap=10):
        from odebench.quality import DigitsQuality

        return DigitsQuality(teacher, conditions, n)


register(DigitsFamily())
