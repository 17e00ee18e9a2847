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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

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
# Methods that mix adapter weights (one forward pass) vs methods that mix per-adapter outputs.
WEIGHT_METHODS: tuple[str, ...] = (
    "live",
    "task_arithmetic",
    "ties",
    "dare_linear",
    "dare_ties",
    "magnitude_prune",
    "cat",
)
OUTPUT_METHODS: tuple[str, ...] = ("product", "mixture", "contrast")
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
