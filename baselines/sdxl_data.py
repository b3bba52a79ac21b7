"""Text-to-image training batches from a caption folder (SDXL; SD3 / FLUX.1 without micro-conditioning):
random crops, micro-conditioning, VAE latents, text.

Each item (as in the diffusers SDXL LCM-LoRA script the paper's code builds on): the image is
resized so its short side equals the training resolution (bilinear), then cropped at a random
offset to resolution x resolution; SDXL's micro-conditioning is add_time_ids = (original height,
width, crop top, left, target height, width), the original size being the file's. Pixels map to
[-1, 1]; the VAE (float32 unless the teacher carries an fp16-fix VAE) encodes them and the latent
is a sample of its posterior times the scaling factor (with latents_mean/std when the VAE has them, and
minus the shift factor first when it has one, as SD3's and FLUX's: (z - shift) * scale; the inverse of
the teacher's decode). Captions go through the teacher's text encoders. A flow teacher's network takes no
micro-conditioning (`micro_conditioning=False`): the batch's EncodedPrompts carry no time_ids.

Everything random (items, crops, the posterior sample) comes from the loop's generator, drawn for
the whole global batch in fixed amounts, so a run is deterministic given the seed and a process of
a multi-GPU run loads and encodes only its own slice of the same batch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from baselines.caption_folder import CaptionedImage, read_caption_folder
from odebench.errors import OdebenchError
from odebench.teachers.text_condition import EncodedPrompts


def resize_and_crop(image, resolution: int, u_top: float, u_left: float):
    """(uint8 array (res, res, 3), time_ids (6,)) for a PIL image: short side to `resolution`, then the
    crop at fractions (u_top, u_left) in [0, 1) of the free range."""
    from PIL import Image

    h0, w0 = image.height, image.width
    image = image.convert("RGB")
    if w0 <= h0:
        w, h = resolution, int(resolution * h0 / w0)
    else:
        w, h = int(resolution * w0 / h0), resolution
    image = image.resize((w, h), Image.BILINEAR)
    top, left = int(u_top * (h - resolution + 1)), int(u_left * (w - resolution + 1))
    arr = np.asarray(image.crop((left, top, left + resolution, top + resolution)), dtype=np.uint8)
    return arr, torch.tensor([h0, w0, top, left, resolution, resolution], dtype=torch.float32)


class SDXLCaptionData:
    """`sample(batch, g, part)` -> (latents x0 (B, 4, h, w) float32 on CPU, EncodedPrompts) for the loop."""

    def __init__(self, teacher, folder: Path | str, resolution: int, vae_batch: int = 4,
                 items: list[CaptionedImage] | None = None, micro_conditioning: bool = True) -> None:
        if teacher.vae is None:
            raise OdebenchError("text-to-image training encodes images: the teacher must be loaded with its VAE")
        if resolution % teacher.vae_scale_factor:
            raise OdebenchError(f"--resolution must be a multiple of {teacher.vae_scale_factor}, got {resolution}")
        self.teacher = teacher
        self.items: list[CaptionedImage] = items if items is not None else read_caption_folder(folder)
        self.folder = Path(folder)
        self.resolution = int(resolution)
        self.latent_shape = (int(teacher.vae.config.latent_channels), resolution // teacher.vae_scale_factor,
                             resolution // teacher.vae_scale_factor)
        self.vae_batch = int(vae_batch)
        self.micro_conditioning = bool(micro_conditioning)

    def _pixels(self, item: CaptionedImage, u_top: float, u_left: float):
        from PIL import Image

        try:
            with Image.open(item.path) as im:
                arr, ids = resize_and_crop(im, self.resolution, u_top, u_left)
        except (OSError, ValueError) as e:  # a file that passed the header check but does not decode
            raise OdebenchError(f"{item.path}: not a readable image ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 127.5 - 1.0, ids

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Scaled latents: posterior mean + std * noise, times the scaling factor (float32, CPU)."""
        vae = self.teacher.vae
        cfg = vae.config
        dtype, dev = next(vae.parameters()).dtype, self.teacher.device
        outs = []
        for lo in range(0, pixels.shape[0], self.vae_batch):
            dist = vae.encode(pixels[lo:lo + self.vae_batch].to(dev, dtype)).latent_dist
            z = (dist.mean.float() + dist.std.float() * noise[lo:lo + self.vae_batch].to(dev)).cpu()
            if getattr(cfg, "latents_mean", None) is not None and getattr(cfg, "latents_std", None) is not None:
                mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1)
                std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1)
                z = (z - mean) * cfg.scaling_factor / std
            else:
                z = (z - float(getattr(cfg, "shift_factor", None) or 0.0)) * cfg.scaling_factor
            outs.append(z)
        return torch.cat(outs)

    def sample(self, batch: int, g: torch.Generator, part: slice | None = None):
        idx = torch.randint(0, len(self.items), (batch,), generator=g)
        crops = torch.rand((batch, 2), generator=g, dtype=torch.float64)
        noise = torch.randn((batch, *self.latent_shape), generator=g)
        keep = range(batch)[part] if part is not None else range(batch)
        pixels, ids, captions = [], [], []
        for i in keep:
            item = self.items[int(idx[i])]
            px, t = self._pixels(item, float(crops[i, 0]), float(crops[i, 1]))
            pixels.append(px)
            ids.append(t)
            captions.append(item.caption)
        x0 = self.encode_images(torch.stack(pixels), noise[list(keep)])
        embeds, pooled = self.teacher.encode_prompts(captions)
        return x0, EncodedPrompts(embeds, pooled, torch.stack(ids) if self.micro_conditioning else None)
