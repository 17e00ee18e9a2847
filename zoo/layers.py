"""The LoRA layers of the engine's PeftModel: per-adapter factors, dense deltas, fused weights.

Live blends run as one stacked adapter per user set (`zoo.slots`); this module reads the users'
own factors (`lora_factors`, `stacked_factors`) for those slots, for fusing and for export.

Fusing: `BaseWeights` keeps a pristine copy of each targeted base weight, taken the first time
that layer is fused. A fuse writes pristine + delta into the live weight in one pass (`addmm` /
`add` with `out=`, no separate restore first) and a restore copies the pristine weight back, so
any number of fuses and restores never drifts from the original weights. A live blend's delta is
low rank, sum_i w_i s_i B_i A_i = (B_cat diag(w s)) A_cat, so it is added by one matmul of inner
size sum(r_i) without building a dense delta per adapter; other weight methods (ties, dare, ...)
fuse the dense merged delta of `zoo.blend.merge_deltas`.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from zoo.blend import merge_deltas

Layers = Sequence[tuple[str, torch.nn.Module]]  # (module path without peft's prefix, LoraLayer)
_PREFIX = "base_model.model."


def layer_index(name: str) -> int:
    """A stable per-layer number for DARE's masks (independent of which adapters are loaded)."""
    return zlib.crc32(name.encode())


def find_lora_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    from peft.tuners.lora import LoraLayer

    return [
        (name.removeprefix(_PREFIX), module)
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer)
    ]


def lora_factors(layer, user: str) -> tuple[Tensor, Tensor, float] | None:
    """(A [r, in], B [out, r], alpha / r) of one adapter in one layer, or None if not targeted."""
    if user not in layer.lora_A:
        return None
    r, alpha = layer.r[user], layer.lora_alpha[user]
    scale = alpha / math.sqrt(r) if layer.use_rslora.get(user, False) else alpha / r
    return layer.lora_A[user].weight, layer.lora_B[user].weight, scale


def stacked_factors(layer, weights: Iterable[tuple[str, float]]) -> tuple[Tensor, Tensor] | None:
    """(A_cat [R, in], B_cat [out, R]) with B_cat @ A_cat = sum_i w_i s_i B_i A_i, or None."""
    found = [(lora_factors(layer, u), w) for u, w in weights]
    found = [(f, w) for f, w in found if f is not None]
    if not found:
        return None
    A = torch.cat([a for (a, _, _), _ in found], dim=0)
    B = torch.cat([b * (w * s) for (_, b, s), w in found], dim=1)
    return A, B


def dense_deltas(layers: Layers, blend) -> dict[str, Tensor]:
    """Merged delta per layer (`merge_deltas`, float32), in the layout of the base weight."""
    deltas = {}
    for name, layer in layers:
        per_user, weights = [], []
        for user, weight in blend.weights:
            factors = lora_factors(layer, user)
            if factors is not None:
                A, B, scale = factors
                per_user.append((B.float() @ A.float()) * scale)
                weights.append(weight)
        if not per_user:
            continue
        delta = merge_deltas(
            per_user,
            weights,
            blend.method,
            blend.density,
            blend.seed,
            layer_index=layer_index(name),
        )
        deltas[name] = delta.T if layer.fan_in_fan_out else delta
    return deltas


class BaseWeights:
    """Pristine copies of the fused base weights; writes W0 + delta and restores W0 exactly."""

    def __init__(self):
        self.pristine: dict[str, Tensor] = {}  # layer -> original base weight (taken once)
        self.modified: set[str] = set()  # layers whose live weight is not pristine now

    def _target(self, name: str, layer) -> tuple[Tensor, Tensor]:
        weight = layer.get_base_layer().weight.detach()
        if name not in self.pristine:
            self.pristine[name] = weight.clone()
        self.modified.add(name)
        return weight, self.pristine[name]

    @torch.no_grad()
    def fuse_low_rank(self, layers: Layers, weights: Sequence[tuple[str, float]]) -> None:
        """W = W0 + sum_i w_i s_i B_i A_i on every layer the blend targets; others get W0."""
        touched = set()
        for name, layer in layers:
            factors = stacked_factors(layer, weights)
            if factors is None:
                continue
            weight, original = self._target(name, layer)
            A, B = (t.to(weight.dtype) for t in factors)
            if layer.fan_in_fan_out:  # GPT-2's Conv1D stores [in, out]: add (B A)^T = A^T B^T
                torch.addmm(original, A.T, B.T, out=weight)
            else:
                torch.addmm(original, B, A, out=weight)
            touched.add(name)
        self._restore(layers, self.modified - touched)

    @torch.no_grad()
    def fuse_dense(self, layers: Layers, deltas: dict[str, Tensor]) -> None:
        """W = W0 + delta for each (name, delta in the base layout); other layers get W0."""
        for name, layer in layers:
            if name in deltas:
                weight, original = self._target(name, layer)
                torch.add(original, deltas[name].to(weight.dtype), out=weight)
        self._restore(layers, self.modified - set(deltas))

    def restore(self, layers: Layers) -> None:
        self._restore(layers, set(self.modified))

    @torch.no_grad()
    def _restore(self, layers: Layers, names: set[str]) -> None:
        for name, layer in layers:
            if name in names:
                layer.get_base_layer().weight.detach().copy_(self.pristine[name])
                self.modified.discard(name)
