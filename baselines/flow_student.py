"""The trainable consistency student of a flow-transformer teacher (SD3 / SD3.5, FLUX.1): a LoRA'd copy of the
teacher's transformer in the flow-map parameterisation

    f(x_t, t) = x_t - t v_theta(x_t, t, c)

(the network's one-step map to t = 0, i.e. its x0 estimate D = x_t - t v): f(x, 0) = x exactly, the boundary
condition at the end t_N = 0 of the flow distillation grid (odebench.ode.paper_grid.flow_grid), with no extra
scalings, and at the start (B = 0) the student is the teacher's own one-step Euler map. It is the consistency
function odebench's flow student cards evaluate (odebench.students.card.FlowCardStudent), so the exported card
(a FlowMatchEulerDiscreteScheduler with stochastic_sampling: CM's multistep sampler, x_{t'} = (1 - t') f + t' z)
computes what was trained. FLUX.1-dev's student takes the teacher's embedded guidance g as its guidance input.
"""
from __future__ import annotations

import torch
from torch import nn

from baselines.lora import add_lora
from odebench.errors import OdebenchError
from odebench.teachers.text_condition import EncodedPrompts

# Named like the UNet's (baselines.sdxl_student): attention projections of both streams, feed-forward (FLUX's single
# blocks: proj_mlp, proj_out), the adaLN modulations' linear (the transformer's counterpart of the resnets'
# time_emb_proj) and the timestep embedding's MLP. Patch / text / pooled embedders and the final projection stay frozen.
FLOW_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                     "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp",
                     "single_transformer_blocks.*.proj_out", "norm1.linear", "norm1_context.linear", "norm.linear",
                     "timestep_embedder.linear_1", "timestep_embedder.linear_2")


def _matches(name: str, target: str) -> bool:
    if "*" in target:  # a block-local name: single_transformer_blocks.<i>.proj_out
        head, tail = target.split(".*.")
        parts = name.split(".")
        return len(parts) >= 3 and parts[0] == head and parts[1].isdigit() and ".".join(parts[2:]) == tail
    return name == target or name.endswith("." + target)


def flow_lora_targets(transformer) -> list[str]:
    """The module names of `transformer` that FLOW_LORA_TARGETS selects (peft takes the full names)."""
    return [n for n, m in transformer.named_modules() if isinstance(m, nn.Linear) and any(_matches(n, t) for t in FLOW_LORA_TARGETS)]


def flow_lora(transformer, rank: int, alpha: float, seed: int = 0):
    """peft LoRA (dropout 0, B = 0 at start) on the transformer's FLOW_LORA_TARGETS that exist."""
    names = flow_lora_targets(transformer)
    if not names:
        raise OdebenchError(f"the transformer has none of the LoRA target modules {', '.join(FLOW_LORA_TARGETS)}")
    return add_lora(transformer, names, rank, alpha, seed, require_all=True, what="transformer")


class _Shared:
    """Holds the teacher without copying it: the EMA target network (a deepcopy of the student) shares the frozen
    teacher and its text encoders."""

    def __init__(self, obj) -> None:
        self.obj = obj

    def __deepcopy__(self, memo):
        return self


class FlowConsistency(nn.Module):
    """model(x_t, t, cond) -> f = x_t - t v for float32 states on CPU or the device; cond: EncodedPrompts."""

    state_dtype = torch.float32  # the ODE state; the frozen transformer may be fp16 / bf16

    def __init__(self, transformer, teacher) -> None:
        super().__init__()
        self.transformer = transformer
        self._teacher = _Shared(teacher)

    def checkpoint_keys(self) -> list[str]:
        """Only the trained (LoRA) tensors go into resumable checkpoints, not the frozen transformer."""
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: EncodedPrompts) -> torch.Tensor:
        if not isinstance(cond, EncodedPrompts):
            raise OdebenchError("the flow student is conditioned on encoded captions (EncodedPrompts)")
        t = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1).expand(x.shape[0]).to(x.device)
        v = self._teacher.obj.transformer_pass(self.transformer, x.float(), t, cond.embeds, cond.pooled)
        return x.float() - t.reshape((-1,) + (1,) * (x.dim() - 1)) * v
