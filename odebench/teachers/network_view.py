"""A teacher's network in another precision, cast only when something evaluates it.

The reference floor's precision part runs a fp16/bf16 network in float32 (odebench.ode.floor); on a
warm run every such solve comes from the cache, so the view must not hold a second copy of a
multi-GB UNet or transformer until it is called.
"""
from __future__ import annotations

import copy

import torch

from odebench.teachers.base import check_network_dtype, network_dtype_name


class LazyCastModule:
    """A teacher attribute (e.g. `unet = LazyCastModule()`) holding a torch module; `view(teacher, dtype)`
    returns a shallow copy of the teacher whose module is a cast copy of this one, made on first access."""

    def __set_name__(self, owner, name: str) -> None:
        self.slot, self.pending = f"_{name}", f"_{name}_pending"

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        pending = obj.__dict__.get(self.pending)
        if pending is not None:
            source, dtype = pending
            # Module.to: diffusers' own .to() warns about casting; the cast is what is wanted here
            obj.__dict__[self.slot] = torch.nn.Module.to(copy.deepcopy(source), dtype)
            obj.__dict__[self.pending] = None
        return obj.__dict__[self.slot]

    def __set__(self, obj, module) -> None:
        obj.__dict__[self.slot], obj.__dict__[self.pending] = module, None

    def source(self, obj):
        """The module as it is or will be cast from (its config, without casting)."""
        pending = obj.__dict__.get(self.pending)
        return pending[0] if pending is not None else obj.__dict__[self.slot]

    def dtype(self, obj) -> torch.dtype:
        pending = obj.__dict__.get(self.pending)
        return pending[1] if pending is not None else next(obj.__dict__[self.slot].parameters()).dtype

    def view(self, obj, dtype: str):
        """`obj` with its module in `dtype` (fp32 | bf16 | fp16 | fp64), cast lazily; `obj` itself if it is already."""
        torch_dtype = check_network_dtype(dtype)
        if torch_dtype == self.dtype(obj):
            return obj
        other = copy.copy(obj)
        other.__dict__[self.pending] = (self.source(obj), torch_dtype)
        other.__dict__[self.slot] = None
        return other


class CastableNetwork:
    """Teacher mixin: `network_dtype` and `with_network_dtype` of the LazyCastModule named `network_attr`."""

    network_attr: str

    def _lazy(self) -> LazyCastModule:
        return getattr(type(self), self.network_attr)

    @property
    def network_dtype(self) -> str:
        return network_dtype_name(self._lazy().dtype(self))

    def with_network_dtype(self, dtype: str):
        """A view whose network runs in `dtype`: a cast copy of the loaded one, made on first use (the
        reference floor's precision part upcasts a fp16/bf16 network this way: same weights, float32 arithmetic)."""
        return self._lazy().view(self, dtype)
