"""SDXL-size GPU benchmark of the reference solve: harness overhead, peak memory, fp16 vs bf16.

Run:  python benchmarks/sdxl_gpu.py [--batch 4] [--dtype fp16] [--rtol 1e-3] [--out sdxl_gpu.json]
      python benchmarks/sdxl_gpu.py --tiny        (CPU smoke test on the tests' tiny SDXL)

Builds the full-size SDXL base UNet *architecture* with random weights from its published config
(written out below; no weights are downloaded) and SDXL-width text encoders with one layer each
(they only feed the prompt-embedding cache, computed once), then measures in one process:
  - bare UNet forward time on the batch the harness passes per NFE (2B with CFG: both branches);
  - odebench's reference solve (torchdiffeq dopri5 in log-sigma time, float32 state on the GPU,
    UNet in --dtype) on the same batch: ratio = wall / (NFE x bare forward), goal <= 1/0.95
    (i.e. throughput >= 0.95 of the bare UNet's), and wall / time inside the UNet;
  - peak GPU memory of the solve;
  - fp16 vs bf16 agreement: the same noise solved with the UNet cast to each (relative RMS of
    the endpoints; and each against an fp32 solve when --fp32-check is given).
Random weights make the ODE itself meaningless; the timing and the precision comparison are not.
Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (the architecture; weights are random here)
SDXL_UNET_CONFIG = dict(
    sample_size=128, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), mid_block_type="UNetMidBlock2DCrossAttn",
    block_out_channels=(320, 640, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=2048, transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, upcast_attention=False,
)
# text encoder widths of SDXL (CLIP ViT-L and OpenCLIP ViT-bigG); one layer each is enough here
TEXT_WIDTHS = ((768, 12, 768), (1280, 20, 1280))  # hidden, heads, projection


def build_teacher(tiny: bool, dtype: torch.dtype, device: torch.device):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from odebench.teachers.discrete import scaled_linear_alphas_cumprod
    from odebench.teachers.sdxl import SDXLTeacher

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import sdxl_tiny

    tokdir = Path(tempfile.mkdtemp(prefix="odebench-tok-"))
    sdxl_tiny.write_tokenizer(tokdir)
    tok = CLIPTokenizer.from_pretrained(str(tokdir))
    torch.manual_seed(0)
    if tiny:
        unet = sdxl_tiny.tiny_unet(0)
        widths = ((sdxl_tiny.HIDDEN, 4, sdxl_tiny.HIDDEN),) * 2
        px = sdxl_tiny.LATENT * 8
    else:
        with torch.device(device):  # build in place: 2.6 B parameters
            unet = UNet2DConditionModel(**SDXL_UNET_CONFIG)
        widths, px = TEXT_WIDTHS, 1024
    encoders = []
    for i, (hidden, heads, proj) in enumerate(widths):
        cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=1,
                             num_attention_heads=heads, max_position_embeddings=77, projection_dim=proj,
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        encoders.append((CLIPTextModel if i == 0 else CLIPTextModelWithProjection)(cfg).eval().to(device))
    unet = unet.to(device, dtype).eval()
    teacher = SDXLTeacher(unet, encoders, [tok, tok], None, scaled_linear_alphas_cumprod(), "epsilon", name="sdxl-random",
                          spec="sdxl-random", identity={"unet": "random"}, height=px, width=px, device=device)
    teacher.vae_scale_factor = 8
    teacher.shape = (4, px // 8, px // 8)
    teacher.set_prompts(["a red fox in the snow", "a bowl of ramen", "an astronaut riding a horse", "a lighthouse"])
    return teacher


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_forward(teacher, x_in, t, ehs, pooled, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        sync(teacher.device)
        t0 = time.perf_counter()
        teacher.run_unet(teacher.unet, x_in, t, ehs, pooled)
        sync(teacher.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def solve(teacher, z, cond, spec):
    from odebench.ode.reference import solve_reference

    sync(teacher.device)
    t0 = time.perf_counter()
    sol = solve_reference(teacher, z * teacher.init_noise_scale(), cond, spec)
    sync(teacher.device)
    return sol, time.perf_counter() - t0


def rel_rms(a, b) -> float:
    return float((a.double() - b.double()).pow(2).mean().sqrt() / b.double().pow(2).mean().sqrt())


def main() -> None:
    from odebench.ode.spec import SolverSpec
    from odebench.teachers.sdxl import MODEL_DTYPES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny SDXL on the CPU (smoke test)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"))
    ap.add_argument("--rtol", type=float, default=1e-3, help="reference tolerance (rtol = atol)")
    ap.add_argument("--repeats", type=int, default=10, help="bare forwards timed before and after the solve")
    ap.add_argument("--fp32-check", action="store_true", help="also solve with the UNet in fp32 (needs ~10 GB more)")
    ap.add_argument("--out", default="sdxl_gpu.json")
    args = ap.parse_args()
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if args.tiny:
        torch.set_num_threads(1)
    dtype = MODEL_DTYPES[args.dtype] if device.type == "cuda" else torch.float32
    teacher = build_teacher(args.tiny, dtype, device)
    b = args.batch
    g = torch.Generator().manual_seed(0)
    z = torch.randn((b, *teacher.shape), generator=g).to(device)
    cond = torch.arange(b) % len(teacher.prompts)
    spec = SolverSpec(rtol=args.rtol, atol=args.rtol, dtype="float32", batch=b)

    # the exact tensors one CFG NFE hands the UNet: 2B latents, uncond + cond embeddings
    eu, pu = teacher.condition_inputs(None, b)
    ec, pc = teacher.condition_inputs(cond, b)
    x_in = torch.randn((2 * b, *teacher.shape), generator=g).to(device)
    t = torch.full((2 * b,), 500.3, device=device)
    ehs, pooled = torch.cat([eu, ec]), torch.cat([pu, pc])
    bare_forward(teacher, x_in, t, ehs, pooled, 3)  # warm-up (kernels, allocator)
    before = bare_forward(teacher, x_in, t, ehs, pooled, args.repeats)

    inside = [0.0]
    run_unet = teacher.run_unet

    def timed(*a, **k):
        sync(device)
        t0 = time.perf_counter()
        out = run_unet(*a, **k)
        sync(device)
        inside[0] += time.perf_counter() - t0
        return out

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    teacher.run_unet = timed
    sol, wall = solve(teacher, z, cond, spec)
    teacher.run_unet = run_unet
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None
    after = bare_forward(teacher, x_in, t, ehs, pooled, args.repeats)
    fwd = statistics.median([before, after])
    ratio = wall / (sol.nfe * fwd)

    # precision: the same noise with the UNet in the other half precision (and fp32 on request)
    agreement = {}
    if device.type == "cuda":
        other = "bf16" if args.dtype == "fp16" else "fp16"
        ends = {args.dtype: sol.x0}
        for name in [other] + (["fp32"] if args.fp32_check and args.dtype != "fp32" else []):
            t2 = copy.copy(teacher)
            t2.unet = teacher.unet.to(MODEL_DTYPES[name])
            ends[name] = solve(t2, z, cond, spec)[0].x0
        teacher.unet.to(dtype)
        if "fp16" in ends and "bf16" in ends:
            agreement["fp16_vs_bf16_rel_rms"] = rel_rms(ends["fp16"], ends["bf16"])
        if "fp32" in ends:
            for k in ("fp16", "bf16"):
                if k in ends:
                    agreement[f"{k}_vs_fp32_rel_rms"] = rel_rms(ends[k], ends["fp32"])

    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (tiny smoke test)" if args.tiny else "cpu",
        "unet": "tiny" if args.tiny else "SDXL base architecture, random weights",
        "unet_params": sum(p.numel() for p in teacher.unet.parameters()), "unet_dtype": str(dtype).replace("torch.", ""),
        "latent": list(teacher.shape), "batch": b, "unet_batch_per_nfe": 2 * b, "solver": spec.describe(),
        "nfe": sol.nfe, "accepted": sol.accepted, "rejected": sol.rejected,
        "bare_forward_s": fwd, "bare_forward_before_after_s": [before, after], "solve_wall_s": wall,
        "inside_unet_s": inside[0], "ratio_wall_over_nfe_x_forward": ratio,
        "throughput_vs_bare_unet": 1.0 / ratio, "wall_over_inside_unet": wall / inside[0] if inside[0] else None,
        "samples_per_s": b / wall, "peak_gpu_memory_gib": peak, **agreement,
    }
    from rich.console import Console
    from rich.table import Table

    table = Table(title="odebench reference solve vs bare UNet" + (" (tiny CPU smoke test)" if args.tiny else ""))
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for k, v in result.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    Console().print(table)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}; goal: throughput_vs_bare_unet >= 0.95")


if __name__ == "__main__":
    main()
