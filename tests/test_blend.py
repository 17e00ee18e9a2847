"""zoo.blend: the Blend value type and the merge / factorisation math, asserted on numbers."""

import math
import urllib.parse

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zoo.blend import (
    METHODS,
    OUTPUT_METHODS,
    WEIGHT_METHODS,
    Blend,
    BlendError,
    dare_generator,
    factorize_dense,
    factorize_weighted_sum,
    merge_deltas,
)

# ---------------------------------------------------------------------------------- Blend


def test_from_weights_sorts_rounds_and_exposes_maps():
    blend = Blend.from_weights({"bob": -0.304, "alice": 0.7}, method="ties", density=0.3, seed=4)
    assert blend.weights == (("alice", 0.7), ("bob", -0.3))
    assert blend.users == ("alice", "bob")
    assert blend.weight_map == {"alice": 0.7, "bob": -0.3}
    assert blend.id == "alice~0.7~bob~-0.3~ties~d0.3~s4"
    assert urllib.parse.quote(blend.id, safe="") == blend.id  # URL-safe as is
    assert Blend.parse(blend.id) == blend
    assert hash(blend) == hash(Blend.parse(blend.id))


def test_defaults_and_readable_form():
    blend = Blend.from_weights({"alice": 1, "bob": 0.25})
    assert (blend.method, blend.density, blend.seed) == ("live", 0.5, 0)
    assert blend.id == "alice~1~bob~0.25~live~d0.5~s0"
    assert Blend.parse("alice=1,bob=0.25;live;d=0.5;s=0") == blend


def test_method_tuples_split_all_methods():
    assert set(WEIGHT_METHODS) | set(OUTPUT_METHODS) == set(METHODS)
    assert not set(WEIGHT_METHODS) & set(OUTPUT_METHODS)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weights": {}}, "at least one user"),
        ({"weights": {f"u{i}": 0.1 for i in range(9)}}, "at most 8"),
        ({"weights": {"a": 2.5}}, r"\[-2, 2\]"),
        ({"weights": {"a": -2.01}}, r"\[-2, 2\]"),
        ({"weights": {"a": math.nan}}, "finite"),
        ({"weights": {"a": math.inf}}, "finite"),
        ({"weights": {"a": "1"}}, "number"),
        ({"weights": {"a": 0.0, "b": 0.004}}, "all weights are zero"),
        ({"weights": {"../etc": 1.0}}, "may only hold"),
        ({"weights": {"a": 1.0}, "method": "svd"}, "unknown blend method"),
        ({"weights": {"a": 1.0}, "density": 0.0}, "density"),
        ({"weights": {"a": 1.0}, "density": 1.5}, "density"),
        ({"weights": {"a": 1.0}, "seed": -1}, "seed"),
        ({"weights": {"a": 1.0, "b": -0.5}, "method": "mixture"}, "mixture"),
    ],
)
def test_invalid_blends_raise_clear_errors(kwargs, message):
    with pytest.raises(BlendError, match=message):
        Blend.from_weights(**kwargs)


def test_duplicate_users_rejected():
    with pytest.raises(BlendError, match="more than once: alice"):
        Blend((("alice", 0.5), ("alice", 0.2)))


def test_blend_is_frozen_and_a_value_error():
    blend = Blend.from_weights({"alice": 1.0})
    with pytest.raises(AttributeError):
        blend.method = "ties"
    assert issubclass(BlendError, ValueError)


@pytest.mark.parametrize(
    "bad",
    ["", "alice", "alice~1~live~d0.5", "alice~x~live~d0.5~s0", "alice~1~live~0.5~s0", "a=1;live"],
)
def test_parse_rejects_malformed_ids(bad):
    with pytest.raises(BlendError):
        Blend.parse(bad)


_ids = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,20}", fullmatch=True)
_weights = st.floats(min_value=-2, max_value=2, allow_nan=False).map(lambda w: round(w, 2))


@settings(max_examples=200, deadline=None)
@given(
    weights=st.dictionaries(_ids, _weights, min_size=1, max_size=8).filter(
        lambda d: any(w != 0 for w in d.values())
    ),
    method=st.sampled_from([m for m in METHODS if m != "mixture"]),
    density=st.floats(min_value=1e-6, max_value=1.0, exclude_min=False),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_id_round_trips(weights, method, density, seed):
    blend = Blend.from_weights(weights, method=method, density=density, seed=seed)
    again = Blend.parse(blend.id)
    assert again == blend
    assert again.id == blend.id
    assert urllib.parse.quote(blend.id, safe="") == blend.id


# ---------------------------------------------------------------------------------- merges


def _lora(out: int, inp: int, r: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(r, inp, generator=g, dtype=torch.float64), torch.randn(
        out, r, generator=g, dtype=torch.float64
    )


def test_task_arithmetic_is_the_weighted_sum():
    deltas = [torch.randn(5, 7, dtype=torch.float64) for _ in range(3)]
    weights = [0.7, -0.3, 1.5]
    expected = sum(w * d for w, d in zip(weights, deltas, strict=True))
    for method in ("task_arithmetic", "live", "cat"):
        torch.testing.assert_close(merge_deltas(deltas, weights, method), expected)


def test_magnitude_prune_by_hand():
    a = torch.tensor([[4.0, -1.0], [0.5, -3.0]])
    b = torch.tensor([[1.0, 2.0], [-5.0, 0.1]])
    # density 0.5 keeps 2 of 4 entries per delta: a -> {4, -3}, b -> {2, -5}
    merged = merge_deltas([a, b], [1.0, 0.5], "magnitude_prune", density=0.5)
    torch.testing.assert_close(merged, torch.tensor([[4.0, 1.0], [-2.5, -3.0]]))


def test_ties_by_hand():
    a = torch.tensor([[4.0, -1.0, 3.0, 0.2]])
    b = torch.tensor([[-2.0, 1.5, 1.0, -6.0]])
    c = torch.tensor([[-3.0, 0.1, 5.0, 0.3]])
    # density 0.5 keeps 2 of 4: a -> [4, 0, 3, 0], b -> [-2, 0, 0, -6], c -> [-3, 0, 5, 0]
    # weighted (1, 1, 1): sums [-1, 0, 8, -6] -> signs [-, +, +, -]
    # column 0: agreeing -2, -3 -> sum -5 (mean -2.5); column 2: 3, 5 -> 8 (mean 4)
    merged = merge_deltas([a, b, c], [1.0, 1.0, 1.0], "ties", density=0.5)
    torch.testing.assert_close(merged, torch.tensor([[-5.0, 0.0, 8.0, -6.0]]))
    mean = merge_deltas([a, b, c], [1.0, 1.0, 1.0], "ties", density=0.5, ties_normalise="mean")
    torch.testing.assert_close(mean, torch.tensor([[-2.5, 0.0, 4.0, -6.0]]))


def test_ties_elects_sign_on_weighted_values():
    a = torch.tensor([[1.0]])
    b = torch.tensor([[2.0]])
    # unweighted both positive; weighted 1*1 + (-1)*2 = -1 -> negative wins, only b survives.
    merged = merge_deltas([a, b], [1.0, -1.0], "ties", density=1.0)
    torch.testing.assert_close(merged, torch.tensor([[-2.0]]))


def test_ties_at_full_density_without_conflicts_is_task_arithmetic():
    a = torch.rand(4, 6, dtype=torch.float64)
    b = torch.rand(4, 6, dtype=torch.float64)
    merged = merge_deltas([a, b], [0.6, 0.4], "ties", density=1.0)
    torch.testing.assert_close(merged, 0.6 * a + 0.4 * b)


def test_dare_linear_by_hand_and_reproducible():
    a = torch.arange(1.0, 101.0).reshape(10, 10)
    merged = merge_deltas([a], [1.0], "dare_linear", density=0.25, seed=3, layer_index=2)
    keep = torch.rand(a.shape, generator=dare_generator(3, 2)) < 0.25
    torch.testing.assert_close(merged, a * keep / 0.25)
    assert 0 < keep.sum() < 100
    again = merge_deltas([a], [1.0], "dare_linear", density=0.25, seed=3, layer_index=2)
    assert torch.equal(merged, again)
    other_seed = merge_deltas([a], [1.0], "dare_linear", density=0.25, seed=4, layer_index=2)
    other_layer = merge_deltas([a], [1.0], "dare_linear", density=0.25, seed=3, layer_index=3)
    assert not torch.equal(merged, other_seed)
    assert not torch.equal(merged, other_layer)


def test_dare_at_density_one_is_task_arithmetic():
    deltas = [torch.randn(6, 4, dtype=torch.float64) for _ in range(2)]
    expected = 0.8 * deltas[0] - 0.5 * deltas[1]
    torch.testing.assert_close(
        merge_deltas(deltas, [0.8, -0.5], "dare_linear", density=1.0, seed=9), expected
    )


def test_dare_rescale_keeps_the_expectation():
    a = torch.ones(200, 200)
    merged = merge_deltas([a], [1.0], "dare_linear", density=0.3, seed=0)
    assert abs(merged.mean().item() - 1.0) < 0.02


def test_dare_ties_uses_dare_masks_then_elects():
    a = torch.tensor([[2.0, -1.0, 1.0, 3.0]])
    b = torch.tensor([[-1.0, 4.0, 1.0, -1.0]])
    g = dare_generator(5, 0)
    ka = torch.rand(a.shape, generator=g) < 0.5
    kb = torch.rand(b.shape, generator=g) < 0.5
    ta, tb = a * ka / 0.5, b * kb / 0.5
    stack = torch.stack([ta, tb])
    sign = torch.where(stack.sum(0) >= 0, 1.0, -1.0)
    expected = (stack * (stack.sign() == sign)).sum(0)
    torch.testing.assert_close(
        merge_deltas([a, b], [1.0, 1.0], "dare_ties", density=0.5, seed=5), expected
    )


def test_merge_rejects_bad_input():
    with pytest.raises(BlendError, match="one weight per delta"):
        merge_deltas([torch.zeros(2, 2)], [1.0, 2.0])
    with pytest.raises(BlendError, match="shape"):
        merge_deltas([torch.zeros(2, 2), torch.zeros(2, 3)], [1.0, 2.0])
    with pytest.raises(BlendError, match="not a weight-space"):
        merge_deltas([torch.zeros(2, 2)], [1.0], "product")


# ---------------------------------------------------------------------------------- export


def test_factorize_weighted_sum_is_exact_at_full_rank():
    loras = [_lora(48, 32, r, seed) for seed, r in enumerate((4, 8, 2))]
    weights = [0.7, -0.3, 1.2]
    dense = sum(w * B @ A for w, (A, B) in zip(weights, loras, strict=True))
    A, B, energy = factorize_weighted_sum([a for a, _ in loras], [b for _, b in loras], weights, 14)
    assert A.shape == (14, 32) and B.shape == (48, 14)
    assert (B @ A - dense).abs().max() < 1e-5
    assert energy == pytest.approx(1.0)


def test_factorize_weighted_sum_truncation_matches_eckart_young():
    loras = [_lora(60, 40, 8, seed) for seed in range(3)]
    weights = [1.0, 0.5, -0.8]
    dense = sum(w * B @ A for w, (A, B) in zip(weights, loras, strict=True))
    S = torch.linalg.svd(dense).S
    for rank in (1, 5, 12):
        A, B, energy = factorize_weighted_sum(
            [a for a, _ in loras], [b for _, b in loras], weights, rank
        )
        error = torch.linalg.matrix_norm(B @ A - dense) ** 2
        assert error.item() == pytest.approx((S[rank:] ** 2).sum().item(), rel=1e-8)
        assert energy == pytest.approx(((S[:rank] ** 2).sum() / (S**2).sum()).item(), rel=1e-10)
        assert torch.linalg.matrix_norm(B @ A - dense, ord=2) == pytest.approx(S[rank].item())


def test_factorize_weighted_sum_pads_to_the_rank_asked_and_keeps_dtype():
    A1, B1 = _lora(10, 6, 2, 0)
    A, B, energy = factorize_weighted_sum([A1.float()], [B1.float()], [1.0], 5)
    assert A.shape == (5, 6) and B.shape == (10, 5) and A.dtype == torch.float32
    assert (B @ A - B1.float() @ A1.float()).abs().max() < 1e-5
    assert energy == pytest.approx(1.0)


def test_factorize_weighted_sum_of_zero_is_zero():
    A1, B1 = _lora(10, 6, 2, 0)
    A, B, energy = factorize_weighted_sum([A1], [B1], [0.0], 2)
    assert torch.count_nonzero(B @ A) == 0 and energy == 1.0


@pytest.mark.parametrize("method", ["full", "lowrank"])
def test_factorize_dense(method):
    A1, B1 = _lora(300, 280, 6, 1)
    low_rank = B1 @ A1 + 1e-3 * torch.randn(300, 280, dtype=torch.float64)
    S = torch.linalg.svd(low_rank).S
    A, B, energy = factorize_dense(low_rank, 6, method=method)
    error = torch.linalg.matrix_norm(B @ A - low_rank) ** 2
    assert error.item() == pytest.approx((S[6:] ** 2).sum().item(), rel=1e-3)
    assert energy == pytest.approx(((S[:6] ** 2).sum() / (S**2).sum()).item(), rel=1e-9)
    again = factorize_dense(low_rank, 6, method=method)
    assert torch.equal(A, again[0])
