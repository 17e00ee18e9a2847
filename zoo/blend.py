"""Blends of LoRA adapters: the `Blend` value type and the pure tensor math behind it.

No model loading here; `zoo/engine.py` applies a `Blend` to loaded adapters.

A blend id is canonical and URL-safe: it uses only RFC 3986 unreserved characters
(letters, digits, `_ - . ~`), so `urllib.parse.quote(blend.id) == blend.id` and it can be pasted in
a query string untouched. Fields are joined by `~`: user/weight pairs first, then method, density
and seed, e.g. `alice~0.7~bob~-0.3~live~d0.5~s0`. `Blend.parse` also accepts the readable form
`alice=0.7,bob=-0.3;live;d=0.5;s=0` (the canonical id is always the `~` form).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from zoo.registry import RegistryError, validate_id

Method = Literal[
    "live",
    "task_arithmetic",
    "ties",
    "dare_linear",
    "dare_ties",
    "magnitude_prune",
    "cat",
    "product",
    "mixture",
    "contrast",
]
METHODS: tuple[str, ...] = get_args(Method)
# Methods that mix per-adapter outputs vs methods that mix adapter weights (one forward pass).
OUTPUT_METHODS: tuple[str, ...] = ("product", "mixture", "contrast")
WEIGHT_METHODS: tuple[str, ...] = tuple(m for m in METHODS if m not in OUTPUT_METHODS)
# Methods whose result depends on `density` (and, for dare, on `seed`).
DENSITY_METHODS: tuple[str, ...] = ("ties", "dare_linear", "dare_ties", "magnitude_prune")

MAX_USERS = 8
MAX_ABS_WEIGHT = 2.0
_SEP = "~"


class BlendError(ValueError):
    """A blend that cannot be built: bad users, weights, method, density or id."""


def _round_weight(value: float) -> float:
    rounded = round(float(value), 2)
    return 0.0 if rounded == 0 else rounded  # no "-0"


def _format_number(value: float) -> str:
    # repr round-trips exactly; drop a trailing ".0" so weights read "1" rather than "1.0".
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


@dataclass(frozen=True)
class Blend:
    """Which adapters to mix, with which weights, and how. Immutable and hashable (a cache key)."""

    weights: tuple[tuple[str, float], ...]  # sorted by id, weights rounded to 2 decimals
    method: Method = "live"
    density: float = 0.5  # ties / dare / magnitude_prune: fraction of entries kept, in (0, 1]
    seed: int = 0  # dare's random drop

    def __post_init__(self):
        if not isinstance(self.weights, tuple | list):
            raise BlendError(
                f"weights must be (id, weight) pairs, got {type(self.weights).__name__}"
            )
        pairs = []
        for item in self.weights:
            if not isinstance(item, tuple | list) or len(item) != 2:
                raise BlendError(f"each weight must be an (id, weight) pair, got {item!r}")
            user, weight = item
            try:
                validate_id(user)
            except RegistryError as e:
                raise BlendError(str(e)) from e
            if isinstance(weight, bool) or not isinstance(weight, int | float):
                raise BlendError(f"weight of {user!r} must be a number, got {weight!r}")
            if not math.isfinite(weight):
                raise BlendError(f"weight of {user!r} must be finite, got {weight!r}")
            if abs(weight) > MAX_ABS_WEIGHT:
                raise BlendError(
                    f"weight of {user!r} is {weight}; weights must lie in "
                    f"[-{MAX_ABS_WEIGHT:g}, {MAX_ABS_WEIGHT:g}]"
                )
            pairs.append((user, _round_weight(weight)))
        if not pairs:
            raise BlendError("a blend needs at least one user")
        if len(pairs) > MAX_USERS:
            raise BlendError(f"a blend holds at most {MAX_USERS} users, got {len(pairs)}")
        users = [u for u, _ in pairs]
        duplicates = sorted({u for u in users if users.count(u) > 1})
        if duplicates:
            raise BlendError(f"users appear more than once: {', '.join(duplicates)}")
        if all(w == 0 for _, w in pairs):
            raise BlendError(
                "all weights are zero (after rounding to 2 decimals); set at least one"
            )
        if self.method not in METHODS:
            raise BlendError(f"unknown blend method {self.method!r}; choose one of {METHODS}")
        if self.method == "mixture" and any(w < 0 for _, w in pairs):
            raise BlendError("method 'mixture' mixes probabilities: weights must be >= 0")
        if (
            isinstance(self.density, bool)
            or not isinstance(self.density, int | float)
            or not (0 < self.density <= 1)
        ):
            raise BlendError(f"density must be a number in (0, 1], got {self.density!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise BlendError(f"seed must be a non-negative integer, got {self.seed!r}")
        # Canonicalise (frozen dataclass: assign through object.__setattr__).
        object.__setattr__(self, "weights", tuple(sorted(pairs)))
        object.__setattr__(self, "density", float(self.density))

    @classmethod
    def from_weights(
        cls,
        weights: Mapping[str, float],
        method: Method = "live",
        density: float = 0.5,
        seed: int = 0,
    ) -> Blend:
        if not isinstance(weights, Mapping):
            raise BlendError(
                f"weights must be a mapping id -> weight, got {type(weights).__name__}"
            )
        return cls(tuple(weights.items()), method=method, density=density, seed=seed)

    @property
    def users(self) -> tuple[str, ...]:
        return tuple(u for u, _ in self.weights)

    @property
    def weight_map(self) -> dict[str, float]:
        return dict(self.weights)

    @property
    def id(self) -> str:
        parts = [f"{u}{_SEP}{_format_number(w)}" for u, w in self.weights]
        parts += [self.method, f"d{_format_number(self.density)}", f"s{self.seed}"]
        return _SEP.join(parts)

    def __str__(self) -> str:
        return self.id

    @classmethod
    def parse(cls, blend_id: str) -> Blend:
        """Inverse of `.id`; also reads `alice=0.7,bob=-0.3;live;d=0.5;s=0`."""
        if not isinstance(blend_id, str) or not blend_id.strip():
            raise BlendError("blend id must be a non-empty string")
        text = blend_id.strip()
        if _SEP in text:
            tokens = text.split(_SEP)
            if len(tokens) < 5 or (len(tokens) - 3) % 2:
                raise BlendError(
                    f"blend id {blend_id!r} must read user~weight~...~method~d<density>~s<seed>"
                )
            head, (method, density, seed) = tokens[:-3], tokens[-3:]
            pairs = list(zip(head[::2], head[1::2], strict=True))
        else:
            fields = text.split(";")
            if len(fields) != 4:
                raise BlendError(
                    f"blend id {blend_id!r} must read user=weight,...;method;d=<density>;s=<seed>"
                )
            users, method, density, seed = fields
            pairs = [tuple(p.split("=", 1)) if "=" in p else (p, "") for p in users.split(",")]
            density, seed = density.replace("=", "", 1), seed.replace("=", "", 1)
        if not density.startswith("d") or not seed.startswith("s"):
            raise BlendError(f"blend id {blend_id!r}: expected d<density> and s<seed> at the end")
        try:
            weights = tuple((user, float(w)) for user, w in pairs)
            density_value = float(density[1:])
            seed_value = int(seed[1:])
        except ValueError as e:
            raise BlendError(f"blend id {blend_id!r} holds a malformed number ({e})") from e
        return cls(weights, method=method, density=density_value, seed=seed_value)


# --------------------------------------------------------------------------------------------
# Dense-delta merging. Everything is in the [out, in] convention of `nn.Linear.weight`, which is
# also the convention of a LoRA product `B @ A` (B [out, r], A [r, in]). GPT-2's `Conv1D` stores
# its base weight as [in, out] (peft's `fan_in_fan_out=True`); callers transpose a merged delta
# (`delta.T`) before adding it to such a base weight. LoRA factors themselves are never transposed.
# --------------------------------------------------------------------------------------------

MergeMethod = Literal[
    "live", "task_arithmetic", "cat", "ties", "dare_linear", "dare_ties", "magnitude_prune"
]


def lora_delta(A: Tensor, B: Tensor, scaling: float = 1.0) -> Tensor:
    """Dense delta `scaling * B @ A` [out, in] of one LoRA layer."""
    return (B @ A) * scaling


def _keep_count(numel: int, density: float) -> int:
    return max(1, min(numel, round(density * numel)))


def trim_magnitude(delta: Tensor, density: float) -> Tensor:
    """Keep the `density` fraction of entries with the largest |value| (ties broken by topk)."""
    if density >= 1:
        return delta
    flat = delta.reshape(-1)
    keep = torch.topk(flat.abs(), _keep_count(flat.numel(), density), sorted=False).indices
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[keep] = True
    return (flat * mask).reshape(delta.shape)


def drop_random(delta: Tensor, density: float, generator: torch.Generator) -> Tensor:
    """DARE: drop each entry with probability 1 - density and rescale survivors by 1 / density."""
    if density >= 1:
        return delta
    keep = torch.rand(delta.shape, generator=generator, device=delta.device) < density
    return delta * keep / density


def dare_generator(seed: int, layer_index: int, device: str | torch.device = "cpu"):
    """The generator for one layer's DARE masks: reproducible per (blend seed, layer)."""
    # A fixed odd multiplier keeps (seed, layer) pairs from colliding for any realistic model.
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + layer_index)


def _disjoint_merge(weighted: Tensor, normalise: Literal["sum", "mean"]) -> Tensor:
    """TIES sign election + disjoint merge over a stack [n, ...] of weighted, trimmed deltas."""
    elected = torch.where(weighted.sum(dim=0) >= 0, 1.0, -1.0).to(weighted.dtype)
    agree = weighted.sign() == elected  # zeros (trimmed entries) never agree
    merged = (weighted * agree).sum(dim=0)
    if normalise == "mean":
        merged = merged / agree.sum(dim=0).clamp(min=1)
    return merged


def merge_deltas(
    deltas: Sequence[Tensor],
    weights: Sequence[float],
    method: MergeMethod = "task_arithmetic",
    density: float = 0.5,
    seed: int = 0,
    *,
    layer_index: int = 0,
    ties_normalise: Literal["sum", "mean"] = "sum",
) -> Tensor:
    """Merge per-adapter dense deltas dW_i [out, in] (alpha / r already applied) with weights w_i.

    - `task_arithmetic` (= `live` = `cat`): sum_i w_i dW_i.
    - `magnitude_prune`: keep the top-`density` |entries| of each dW_i, then the weighted sum.
    - `dare_linear`: drop entries at random (prob. 1 - density), rescale by 1 / density, weighted
      sum. Masks come from `dare_generator(seed, layer_index)`, drawn in adapter order.
    - `ties`: trim each dW_i to its top-`density` magnitudes, weight it, elect a sign per entry from
      the sum of the weighted trimmed values, keep only the entries that agree with it.
    - `dare_ties`: as `ties` with DARE's random drop + rescale instead of the magnitude trim.

    Normalisation of ties: peft (and the TIES paper, up to its global lambda) take the *mean* of
    the agreeing weighted entries. Here the default is their *sum* (`ties_normalise="sum"`), so
    that the blend weights keep the meaning they have in task arithmetic (ties at density 1 with no
    sign conflict equals task arithmetic, and a lone adapter at weight w is w * its delta); pass
    `ties_normalise="mean"` for peft's behaviour. The sign is elected on the *weighted* values
    (peft elects on unweighted ones), so a negative weight ("less like bob") votes as it acts.
    """
    if len(deltas) != len(weights) or not deltas:
        raise BlendError(
            f"need one weight per delta, got {len(deltas)} deltas, {len(weights)} weights"
        )
    if not 0 < density <= 1:
        raise BlendError(f"density must be in (0, 1], got {density!r}")
    shape = deltas[0].shape
    if any(d.shape != shape for d in deltas):
        raise BlendError(f"deltas differ in shape: {[tuple(d.shape) for d in deltas]}")
    if method in ("live", "task_arithmetic", "cat"):
        trimmed = list(deltas)
    elif method in ("ties", "magnitude_prune"):
        trimmed = [trim_magnitude(d, density) for d in deltas]
    elif method in ("dare_linear", "dare_ties"):
        generator = dare_generator(seed, layer_index, deltas[0].device)
        trimmed = [drop_random(d, density, generator) for d in deltas]
    else:
        raise BlendError(f"{method!r} is not a weight-space merge method")
    if method in ("ties", "dare_ties"):
        stacked = torch.stack([w * d for w, d in zip(weights, trimmed, strict=True)])
        return _disjoint_merge(stacked, ties_normalise)
    merged = torch.zeros_like(deltas[0])
    for w, d in zip(weights, trimmed, strict=True):
        merged.add_(d, alpha=float(w))
    return merged


# --------------------------------------------------------------------------------------------
# Low-rank export. A blend is saved as one LoRA adapter of rank `rank`: B [out, rank],
# A [rank, in] with scaling 1 (write lora_alpha = r in the adapter config).
# --------------------------------------------------------------------------------------------


def _split_singular(U: Tensor, S: Tensor, Vh: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """B = U_k sqrt(S_k), A = sqrt(S_k) Vh_k, zero-padded to exactly `rank` columns / rows."""
    k = min(rank, S.numel())
    root = S[:k].sqrt()
    B = U[:, :k] * root
    A = root[:, None] * Vh[:k]
    if k < rank:  # fewer singular values than asked: pad so every layer shares one rank
        B = torch.cat([B, B.new_zeros(B.shape[0], rank - k)], dim=1)
        A = torch.cat([A, A.new_zeros(rank - k, A.shape[1])], dim=0)
    return A, B


def _energy(kept: Tensor, total: Tensor) -> float:
    total = float(total)
    return 1.0 if total == 0 else min(1.0, float(kept) / total)


def concat_factors(
    As: Sequence[Tensor], Bs: Sequence[Tensor], weights: Sequence[float]
) -> tuple[Tensor, Tensor]:
    """peft's `cat`: the exact rank-sum(r_i) factors of sum_i w_i B_i A_i."""
    B = torch.cat([w * b for w, b in zip(weights, Bs, strict=True)], dim=1)
    return torch.cat(list(As), dim=0), B


def factorize_weighted_sum(
    As: Sequence[Tensor],
    Bs: Sequence[Tensor],
    weights: Sequence[float],
    rank: int,
) -> tuple[Tensor, Tensor, float]:
    """Best rank-`rank` factors of sum_i w_i B_i A_i without ever forming the dense [out, in] sum.

    Fold any LoRA scaling s_i = alpha_i / r_i into `weights`. With Bcat = [w_1 B_1 | ...] [out, R]
    and Acat = [A_1; ...] [R, in], QR both (Bcat = Qb Rb, Acat^T = Qa Ra); then the sum is
    Qb (Rb Ra^T) Qa^T and the SVD of the small R x R core gives its exact SVD. Keeping the top
    `rank` triplets is optimal (Eckart-Young) and exact when rank >= R. Cost O((out + in) R^2):
    about a millisecond per GPT-2 layer, vs a dense SVD of [out, in]. Householder QR and SVD are
    backward stable, so the work runs in the input dtype (float32 / float64; half precision is
    promoted to float32) and float32 factors are accurate to float32 rounding. Returns (A [rank, in], B [out, rank], energy kept = sum kept S^2 / sum S^2).
    """
    if rank < 1:
        raise BlendError(f"rank must be >= 1, got {rank}")
    dtype = As[0].dtype
    work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    B_cat = torch.cat([b.to(work) for b in Bs], dim=1)
    A_cat = torch.cat([a.to(work) for a in As], dim=0)
    # Weights act on the R x R core, not on the big factors: diag(w_i repeated r_i times).
    scale = torch.cat(
        [torch.full((a.shape[0],), float(w), dtype=work) for a, w in zip(As, weights, strict=True)]
    )
    Qb, Rb = torch.linalg.qr(B_cat)
    Qa, Ra = torch.linalg.qr(A_cat.T)
    U, S, Vh = torch.linalg.svd((Rb * scale) @ Ra.T)
    k = min(rank, S.numel())
    energy = _energy((S[:k] ** 2).sum(), (S**2).sum())
    A, B = _split_singular(Qb @ U[:, :k], S[:k], Vh[:k] @ Qa.T, rank)
    return A.to(dtype), B.to(dtype), energy


def _randomized_svd(M: Tensor, q: int, niter: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Halko et al. randomized SVD (what `torch.svd_lowrank` does) with a private generator, so it
    is reproducible and never touches the global RNG that concurrent requests share."""
    generator = torch.Generator(device=M.device).manual_seed(seed)
    omega = torch.randn(M.shape[1], q, generator=generator, dtype=M.dtype, device=M.device)
    Q = torch.linalg.qr(M @ omega).Q
    for _ in range(niter):  # power iterations sharpen the spectrum's decay
        Q = torch.linalg.qr(M.T @ Q).Q
        Q = torch.linalg.qr(M @ Q).Q
    U, S, Vh = torch.linalg.svd(Q.T @ M, full_matrices=False)
    return Q @ U, S, Vh


def factorize_dense(
    delta: Tensor,
    rank: int,
    method: Literal["auto", "full", "lowrank"] = "auto",
    oversample: int = 10,
    niter: int = 4,
    seed: int = 0,
) -> tuple[Tensor, Tensor, float]:
    """Rank-`rank` factors of an arbitrary dense delta [out, in] (ties / dare results).

    `full` runs `torch.linalg.svd` (optimal; used by `auto` when min(out, in) <= 256 or when the
    rank asked is a large share of it). `lowrank` runs a randomized SVD like `torch.svd_lowrank`
    (q = rank + oversample, `niter` power iterations) with its own seeded generator: near-optimal for the
    leading triplets at a fraction of the cost, which matters for 48 GPT-2 matrices of 768 x 2304.
    Energy kept is exact either way: sum kept S^2 / ||delta||_F^2.
    """
    if rank < 1:
        raise BlendError(f"rank must be >= 1, got {rank}")
    dtype = delta.dtype
    work = delta.double()
    small = min(work.shape)
    if method == "full" or (method == "auto" and (small <= 256 or rank + oversample >= small // 2)):
        U, S, Vh = torch.linalg.svd(work, full_matrices=False)
    else:
        U, S, Vh = _randomized_svd(work, min(rank + oversample, small), niter, seed)
    energy = _energy((S[:rank] ** 2).sum(), work.pow(2).sum())
    A, B = _split_singular(U, S, Vh, rank)
    return A.to(dtype), B.to(dtype), energy
