"""Blend slots: a weight-space blend run as ONE extra LoRA adapter of the engine's PeftModel.

A linear blend of LoRAs is itself a LoRA (peft's `cat` identity):

    sum_i w_i s_i B_i A_i = [w_1 s_1 B_1 | ... | w_n s_n B_n] @ [A_1; ...; A_n]

so a slot holds, per targeted layer, A_slot = [A_1; ...; A_n] and B_slot = [s_1 B_1 | ... | s_n B_n]
(s_i = alpha_i / r_i, peft scaling 1), and the weights w_i sit in one column-scale vector `scale`
[R] shared by all the slot's layers: lora_B computes B_slot (scale * z) (`SlotLinear`). Decoding then runs one
LoRA branch per layer instead of n, and a slider re-weight writes R floats (microseconds), not
the B matrices. Column spans are fixed per user (its largest rank over layers); a user missing
from a layer, or of smaller rank there, leaves zero rows / columns, so adapters of different ranks
and target modules mix exactly.

A batch may hold several blends of the same users: they share that users' slot, whose scale is then
one row of weights per batch row ([rows, 1, R]), so A_slot and B_slot are read once per step for
all of them (peft's `adapter_names` groups the rows of one adapter into one sub-batch).

`SlotPool` keeps up to `MAX_SLOTS` slots (LRU), one per set of users (the column layout); building
one is a peft `add_adapter` (tens of milliseconds), re-weighting it is free. Slots used by the
current forward are never evicted under it. Slots copy the users' factors, so they are dropped
when one of their users is evicted or reloaded.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

from zoo.layers import Layers, lora_factors

MAX_SLOTS = 8
SLOT_PREFIX = "~slot"  # "~" never appears in a registry id


class SlotLinear(torch.nn.Module):
    """A slot's lora_A / lora_B: x @ W^T like `nn.Linear`, with W stored transposed ([in, out],
    contiguous): a skinny LoRA factor times a few rows runs about 2x faster on CPU as a row-major
    GEMM than as F.linear's transposed one. lora_B (`slot` set) first scales its input by the
    slot's column weights. `slot` is a plain attribute: nothing extra is saved or moved."""

    def __init__(self, weight: Tensor, slot: Slot | None = None):
        super().__init__()
        self.weight_t = torch.nn.Parameter(weight.T.contiguous(), requires_grad=False)
        self.slot = slot

    @property
    def weight(self) -> Tensor:  # [out, in], as peft reads it (dtype, device)
        return self.weight_t.T

    def forward(self, x: Tensor) -> Tensor:
        if self.slot is not None:
            x = x * self.slot.scale
        return x @ self.weight_t


@dataclass
class Slot:
    name: str  # the peft adapter name
    users: tuple[str, ...]
    ranks: tuple[int, ...]  # column span of each user
    scale: Tensor  # [R] column weights of one blend, or [rows, 1, R]: one blend per batch row
    key: tuple | None = None  # the blend weights `scale` holds (per row for a batch)

    def _columns(self, weights: tuple[tuple[str, float], ...]) -> list[float]:
        return [w for (_, w), r in zip(weights, self.ranks, strict=True) for _ in range(r)]

    def set_weights(self, weights: tuple[tuple[str, float], ...]) -> None:
        """One blend for every row (a request decoding alone): scale [R]."""
        if weights != self.key:
            self.scale = self.scale.new_tensor(self._columns(weights))
            self.key = weights

    def set_rows(self, rows: tuple[tuple[tuple[str, float], ...], ...]) -> None:
        """One blend per row of the rows that run this slot in a mixed batch (in batch order):
        scale [rows, 1, R] (z is [rows, tokens, R])."""
        if rows != self.key:
            self.scale = self.scale.new_tensor([[self._columns(w)] for w in rows])
            self.key = rows


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
    slot = Slot(name, users, ranks, torch.zeros(rank, dtype=weight.dtype, device=weight.device))
    for layer in found.values():
        A = layer.lora_A[name].weight.new_zeros(layer.lora_A[name].weight.shape)
        B = A.new_zeros(layer.lora_B[name].weight.shape)
        for user, start in zip(users, itertools.accumulate(ranks, initial=0), strict=False):
            factors = lora_factors(layer, user)
            if factors is not None:
                a, b, s = factors
                A[start : start + a.shape[0]] = a
                B[:, start : start + b.shape[1]] = b * s
        layer.lora_A[name] = SlotLinear(A)
        layer.lora_B[name] = SlotLinear(B, slot)
    return slot


class SlotPool:
    """Up to `max_slots` slots, least recently used first; `acquire` is called under the engine's
    lock at every forward step, so a slot is set up for the step that uses it."""

    def __init__(self, max_slots: int = MAX_SLOTS):
        self.max_slots = max_slots
        self.slots: OrderedDict[str, Slot] = OrderedDict()  # name -> slot, LRU order
        self._names = (f"{SLOT_PREFIX}{i}" for i in itertools.count())

    def acquire(self, model, layers: Layers, users: tuple[str, ...], pinned: set[str]):
        """The slot of `users` (built if needed, evicting the LRU slot not in `pinned`).

        Returns (slot, changed): `changed` is True when peft adapters were added or removed."""
        slot = next((s for s in self.slots.values() if s.users == users), None)
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
