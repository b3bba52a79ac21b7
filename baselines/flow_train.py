"""`odebench train cm|direct --teacher <sd3 | flux folder>`: CM / Direct CM students of a flow-transformer teacher.

The text-to-image builder (baselines.image_train) with the flow family's pieces: the teacher's forward process
x_t = (1 - t) x0 + t z (its `add_noise` hook), its own sampler grid (N FlowMatchEuler levels with its shift, then
t = 0: odebench.ode.paper_grid.flow_grid), a teacher step = Euler in t (`--solver ddim|euler`, = FlowMatchEuler)
or Heun, the guided velocity of the run's guidance (SD3: CFG imagen w on velocities with the empty-prompt uncond,
the pipeline's 7 by default; FLUX.1-dev: its embedded g), and the LoRA'd transformer in the flow-map
parameterisation f = x_t - t v (baselines.flow_student). Captions carry no micro-conditioning; latents are the
VAE's (z - shift_factor) * scaling_factor. The targets are baselines/targets.py's, unchanged.

Export: OUT/lora/ (the LoRA alone in diffusers' layout for the teacher's pipeline) and OUT/student.json, a student
card (odebench.students.card) naming the teacher, the LoRA, the ODE it was distilled for and CM's multistep
sampler (FlowMatchEulerDiscreteScheduler with stochastic_sampling on the teacher's grid), so `odebench run
--student OUT/student.json` needs no other flag; the card's "training" records every setting.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from baselines.distill import DistillConfig
from baselines.image_train import ImageOptions, ImageRecipe, train_image_student

# The paper's SDXL recipe carried over (PAPER.md): LoRA 64/64, lr 1e-4, batch 16, N = 100, L2, seed 24; on a flow
# teacher the grid is its own sampler's and the solver's Euler step is FlowMatchEuler's.
FLOW_DEFAULTS = {"steps": 250, "batch_size": 16, "lr": 1e-4, "weight_decay": 1e-2, "grad_clip": 1.0, "grid": 100,
                 "solver": "ddim", "loss": "l2", "seed": 24, "checkpoint_every": 50, "lora_rank": 64, "lora_alpha": 0.0}


def _teacher_spec(spec: str) -> str:
    """The card's teacher: an existing folder as an absolute path (a relative one would be read relative to the
    card), else the hub id or preset as given."""
    p = Path(str(spec)).expanduser()
    return str(p.resolve()) if p.exists() else str(spec)


def _export(stem, m, training, step, base, teacher, cfg, settings, teacher_spec):
    from baselines.lora import save_lora
    from odebench.students.card import CARD_FORMAT, CARD_VERSION, save_card

    save_lora(m.transformer, stem.parent / "lora", base.pipeline, "transformer")
    # the student takes the teacher's guidance input (FLUX.1-dev) at the teacher's g, and no CFG otherwise
    guidance_embeds = bool(base.transformer.config.get("guidance_embeds", False))
    card = {"format": CARD_FORMAT, "version": CARD_VERSION, "name": stem.parent.name, "kind": "trajectory",
            "teacher": _teacher_spec(teacher_spec), "weights": {"lora": "lora"},
            "scheduler": {"class": "FlowMatchEulerDiscreteScheduler", "steps": 1, "config": {"stochastic_sampling": True}},
            "guidance_scale": float(base.guidance.w) if guidance_embeds else 1.0,
            "ode": {"guidance": base.guidance.to_dict()},
            "training": {**training, **settings, "step": int(step), "teacher_fingerprint": base.fingerprint(),
                         "parameterisation": "f(x_t, t) = x_t - t v(x_t, t) (baselines.flow_student)",
                         "lora_file": "lora/pytorch_lora_weights.safetensors"},
            "notes": f"odebench train {cfg.target}: a {cfg.target.upper()} student of {base.name}; multistep sampling is "
                     f"CM's (x0 re-noised with fresh noise at the teacher's shifted levels)"}
    return save_card(stem.with_suffix(".json"), card)


def _recipe(title: str) -> ImageRecipe:
    from baselines.flow_student import FlowConsistency, flow_lora, flow_lora_targets

    return ImageRecipe(
        title=title, network="transformer", lora=flow_lora, student=FlowConsistency, export=_export,
        lora_targets=flow_lora_targets, micro_conditioning=False,
        teacher_ode=lambda base, cfg: {"grid": f"the teacher's {cfg.grid}-step FlowMatchEuler levels (its shift), then t = 0",
                                       "process": base.process.describe(), "pipeline_grid": base.grid_identity()})


def train_flow_student(cfg: DistillConfig, teacher_spec: str, out: Path, options: ImageOptions, title: str, guidance=None,
                       resume: bool = False, progress: Callable[[int, float, float], None] | None = None,
                       record_run: Callable[[dict], None] | None = None) -> Path:
    if options.vae is not None:
        from odebench.errors import OdebenchError

        raise OdebenchError(f"--vae applies to SDXL teachers; {title} trains with its own VAE")
    return train_image_student(cfg, teacher_spec, out, options, _recipe(title), FLOW_DEFAULTS, guidance, resume, progress,
                               record_run)


def flow_defaults() -> dict[str, Any]:
    return FLOW_DEFAULTS
