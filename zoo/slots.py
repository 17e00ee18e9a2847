"""Blend slots: a weight-space blend run as ONE extra LoRA adapter of the engine's PeftModel.

A linear blend of LoRAs is itself a LoRA (peft's `cat` identity):

    sum_i w_i s_i B_i A_i = [w_1 s_1 B_1 | ... | w_n s_n B_n] @ [A_1; ...; A_n]

so a slot holds, per targeted layer, A_slot = [A_1; ...; A_n] and B_slot = [s_1 B_1 | ... | s_n B_n]
(s_i = alpha_i / r_i, peft scaling 1), and the weights w_i sit in one column-scale vector `scale`
[R] shared by all the slot's layers: lora_B computes B_slot (scale * z). Decoding then runs one
LoRA branch per layer instead of n, and a slider re-weight writes R floats (microseconds), not
the B matrices. Column spans are fixed per user (its largest rank over layers); a user missing
from a layer, or of smaller rank there, leaves zero rows / columns, so adapters of different ranks
and target modules mix exactly.

`SlotPool` keeps up to `MAX_SLOTS` slots (LRU). A slot is keyed by its users (the column layout);
re-weighting an idle slot of the same users is preferred over building one (a peft `add_adapter`,
tens of milliseconds). Slots pinned by the current forward (a batch with several blends of the
same users) are never re-weighted or evicted under it. Slots copy the users' factors, so they are
dropped when one of their users is evicted or reloaded.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.layers import Layers, lora_factors

MAX_SLOTS = 8
SLOT_PREFIX = "~slot"  # "~" never appears in a registry id


class ScaledLinear(torch.nn.Linear):
    """lora_B of a slot: F.linear(z * scale, B_slot), with `scale` shared by the slot's layers.

    `scale` is a plain attribute (not a buffer): it is neither saved nor copied by `.to()`, so every
    layer keeps pointing at the one tensor the pool rewrites."""

    def __init__(self, weight: Tensor, scale: Tensor):
        torch.nn.Module.__init__(self)  # no random init: the weight is given
        self.out_features, self.in_features = weight.shape
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        self.register_parameter("bias", None)
        self.scale = scale

    def forward(self, z: Tensor) -> Tensor:
        return F.linear(z * self.scale, self.weight)


@dataclass
class Slot:
    name: str  # the peft adapter name
    users: tuple[str, ...]
    ranks: tuple[int, ...]  # column span of each user
    scale: Tensor  # [sum(ranks)] column weights, read by every ScaledLinear of the slot
    weights: tuple[tuple[str, float], ...] | None = None  # the blend's weights now in `scale`

    def set_weights(self, weights: tuple[tuple[str, float], ...]) -> None:
        if weights != self.weights:
            values = [w for (_, w), r in zip(weights, self.ranks, strict=True) for _ in range(r)]
            self.scale.copy_(torch.tensor(values, dtype=self.scale.dtype))
            self.weights = weights


@torch.inference_mode(False)  # called inside decode steps: the slot's tensors must be normal
@torch.no_grad()
def build_slot(model, layers: Layers, name: str, users: tuple[str, ...]) -> Slot:
    """Add adapter `name` to the PeftModel `model` holding the stacked factors of `users`."""
    from peft import LoraConfig

    found = {n: layer for n, layer in layers if any(u in layer.lora_A for u in users)}
    ranks = tuple(max(ly.r[u] for ly in found.values() if u in ly.lora_A) for u in users)
    rank = sum(ranks)
    some = next(iter(found.values()))
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,  # peft scaling 1: the user scalings live in B_slot
        lora_dropout=0.0,
        target_modules=sorted(found),  # full module paths: exact matches only
        fan_in_fan_out=some.fan_in_fan_out,
        init_lora_weights=True,
        inference_mode=True,
    )
    model.add_adapter(name, config)
    weight = some.lora_A[name].weight
    scale = torch.zeros(rank, dtype=weight.dtype, device=weight.device)
    for layer in found.values():
        A = layer.lora_A[name].weight
        A.zero_()
        B = A.new_zeros(layer.lora_B[name].weight.shape)
        for user, start in zip(users, itertools.accumulate(ranks, initial=0), strict=False):
            factors = lora_factors(layer, user)
            if factors is not None:
                a, b, s = factors
                A[start : start + a.shape[0]] = a
                B[:, start : start + b.shape[1]] = b * s
        layer.lora_B[name] = ScaledLinear(B, scale)
    return Slot(name, users, ranks, scale)


class SlotPool:
    """Up to `max_slots` slots, least recently used first; `acquire` is called under the engine's
    lock at every forward step, so a slot is set up for the step that uses it."""

    def __init__(self, max_slots: int = MAX_SLOTS):
        self.max_slots = max_slots
        self.slots: OrderedDict[str, Slot] = OrderedDict()  # name -> slot, LRU order
        self._names = (f"{SLOT_PREFIX}{i}" for i in itertools.count())

    def acquire(self, model, layers: Layers, weights, pinned: set[str]) -> tuple[Slot, bool]:
        """A slot computing the blend `weights` ((user, w) pairs), not in `pinned`.

        Returns (slot, changed): `changed` is True when peft adapters were added or removed."""
        users = tuple(u for u, _ in weights)
        free = [s for s in self.slots.values() if s.users == users and s.name not in pinned]
        slot = next((s for s in free if s.weights == weights), None)
        slot = slot or (free[-1] if free else None)  # the most recent idle one of these users
        changed = False
        if slot is None:
            while len(self.slots) >= self.max_slots:
                victim = next((s for s in self.slots.values() if s.name not in pinned), None)
                if victim is None:
                    break  # one forward needs more slots than the cap: allow it for now
                self.drop(model, victim.name)
            slot = build_slot(model, layers, next(self._names), users)
            self.slots[slot.name] = slot
            changed = True
        self.slots.move_to_end(slot.name)
        slot.set_weights(weights)
        return slot, changed

    def drop(self, model, name: str) -> None:
        del self.slots[name]
        model.delete_adapter(name)

    def drop_user(self, model, user: str) -> bool:
        """Drop every slot holding `user` (evicted or reloaded); True if any was dropped."""
        names = [n for n, s in self.slots.items() if user in s.users]
        for name in names:
            self.drop(model, name)
        return bool(names)

    def clear(self, model) -> None:
        for name in list(self.slots):
            self.drop(model, name)
