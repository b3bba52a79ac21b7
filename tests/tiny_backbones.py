"""Tiny random image-metric backbones written to disk, loaded through the real loading paths:
an Inception-shaped TorchScript file, a DINOv2 folder, an open_clip config + weights (768-d, as the
aesthetic MLP needs) and a random LAION aesthetic MLP. Shared by test_image_metrics and test_sdxl."""
from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_CLIP = "odebench-tiny-clip"
TINY_CLIP_CONFIG = {"embed_dim": 768, "quick_gelu": True,
                    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
                    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


class TinyInception(torch.nn.Module):
    """Inception-shaped: like the real TorchScript file it has `.layers`, fed (x - 128) / 128."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 7, stride=4), torch.nn.Tanh(),
                                          torch.nn.AdaptiveAvgPool2d(16), torch.nn.Flatten())  # 8*16*16 = 2048

    def forward(self, x):
        return self.layers((x - 128) / 128)


def write_tiny_inception(path: Path, seed: int = 0):
    torch.manual_seed(seed)
    scripted = torch.jit.script(TinyInception().eval())
    torch.jit.save(scripted, str(path))
    return scripted


def write_tiny_dinov2(folder: Path, seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    patch_size=14, image_size=224)
    model = transformers.Dinov2Model(cfg).eval()
    model.save_pretrained(folder)
    return model


def register_tiny_clip(folder: Path) -> str:
    """Register the tiny open_clip architecture (add_model_config) and return its name."""
    import open_clip

    (folder / f"{TINY_CLIP}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(folder / f"{TINY_CLIP}.json")
    return TINY_CLIP


def write_tiny_clip(folder: Path, seed: int = 0):
    """(model, weights path) of a tiny random open_clip model saved as a state dict."""
    import open_clip

    register_tiny_clip(folder)
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_CLIP, pretrained=None).eval()
    path = folder / "tiny_clip.bin"
    torch.save(model.state_dict(), path)
    return model, path


def write_tiny_aesthetic(path: Path, seed: int = 1) -> dict:
    from odebench.metrics.aesthetic import build_mlp

    torch.manual_seed(seed)
    sd = {k: torch.randn_like(v) * 0.1 for k, v in build_mlp().state_dict().items()}
    torch.save(sd, path)
    return sd
