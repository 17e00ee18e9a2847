"""Blend slots and cross-request batching (`Engine.generate_batch`) on the tiny GPT-2.

Slots are checked against the hand-built dense reference of `_adapters.py` (1e-4); batched rows are
checked token for token against the same requests run alone through `Engine.generate`."""

import threading

import pytest
from _adapters import logprobs, reference_model

from zoo.blend import Blend
from zoo.engine import Engine, EngineError, SamplingParams
from zoo.slots import SlotLinear

PROMPT = "I think the"
TOL = 1e-4


@pytest.fixture(scope="module")
def engine(blend_zoo):
    return Engine(blend_zoo, device="cpu", fuse_after_requests=0)  # live blends stay on their slot


def reference(engine, blend_zoo, tiny_model_dir, weights, prompt=PROMPT):
    tok = engine.tokenizer
    ids = [tok.eos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"]
    folders = {blend_zoo.parent / "adapters" / name: w for name, w in weights.items()}
    return logprobs(reference_model(tiny_model_dir, folders), ids)


def greedy(n=10, **kw):
    return SamplingParams(max_new_tokens=n, temperature=0, stop_at_newline=False, **kw)


# carol: r=2 on c_attn only; alice, bob: r=4 on c_attn/c_proj/c_fc -> zero-padded slot columns.
@pytest.mark.parametrize(
    "weights",
    [{"alice": 0.8, "carol": -0.6}, {"alice": 0.7, "bob": -0.3, "carol": 1.2}],
)
def test_slot_equals_dense_reference(engine, blend_zoo, tiny_model_dir, weights):
    got = engine.next_token_logprobs(Blend.from_weights(weights), PROMPT)
    want = reference(engine, blend_zoo, tiny_model_dir, weights)
    assert (want - reference(engine, blend_zoo, tiny_model_dir, {})).abs().max() > 0.1
    assert (got - want).abs().max() < TOL
    slot = next(s for s in engine._pool.slots.values() if s.users == tuple(sorted(weights)))
    assert engine._active == (slot.name,)  # decoded through the one slot adapter
    assert slot.ranks == tuple(2 if u == "carol" else 4 for u in sorted(weights))
    modules = [m for m in engine._model.modules() if isinstance(m, SlotLinear)]
    assert any(m.slot is slot for m in modules) and slot.scale.shape == (sum(slot.ranks),)


def test_reweight_rewrites_the_slot_and_equals_a_fresh_blend(engine, blend_zoo, tiny_model_dir):
    first = {"alice": 0.2, "bob": 0.9}
    engine.next_token_logprobs(Blend.from_weights(first), PROMPT)
    before = {n: s.users for n, s in engine._pool.slots.items()}
    for weights in ({"alice": -0.5, "bob": 1.1}, {"alice": 1.3, "bob": 0.1}):
        got = engine.next_token_logprobs(Blend.from_weights(weights), PROMPT)
        assert {n: s.users for n, s in engine._pool.slots.items()} == before  # no new adapter
        want = reference(engine, blend_zoo, tiny_model_dir, weights)
        assert (got - want).abs().max() < TOL
    fresh = Engine(blend_zoo, device="cpu", fuse_after_requests=0)
    got = fresh.next_token_logprobs(Blend.from_weights({"alice": 1.3, "bob": 0.1}), PROMPT)
    assert (got - engine.next_token_logprobs(Blend.from_weights({"alice": 1.3, "bob": 0.1}), PROMPT)).abs().max() < TOL  # fmt: skip


def test_slot_pool_evicts_lru_and_stays_exact(blend_zoo, tiny_model_dir):
    small = Engine(blend_zoo, device="cpu", fuse_after_requests=0)
    small._pool.max_slots = 2
    sets = [{"alice": 0.5, "bob": 0.5}, {"bob": 1.0, "carol": 0.5}, {"alice": 0.3, "carol": 0.9}]
    for weights in sets + sets[:1]:
        got = small.next_token_logprobs(Blend.from_weights(weights), PROMPT)
        assert (got - reference(small, blend_zoo, tiny_model_dir, weights)).abs().max() < TOL
        assert len(small._pool.slots) <= 2


REQUESTS = [
    (Blend.from_weights({"alice": 0.9, "bob": 0.1}), PROMPT, greedy(10)),
    (Blend.from_weights({"alice": 0.2, "bob": 0.8}), "Hello", greedy(7)),  # same slot, own row
    (
        Blend.from_weights({"bob": 1, "carol": -0.5}),
        "I think the world is",
        SamplingParams(max_new_tokens=9, seed=5, num_samples=2, temperature=1.3, top_k=40),
    ),  # fmt: skip
    (Blend.from_weights({"carol": 1.5}), "We", SamplingParams(max_new_tokens=12, seed=1)),
    (Blend.from_weights({"alice": 0.6, "carol": 0.4}, "cat"), PROMPT, greedy(6)),
    (
        Blend.from_weights({"alice": 0.5, "bob": 0.5}, "product"),
        "Hello",
        SamplingParams(max_new_tokens=8, seed=2, num_samples=2),
    ),  # fmt: skip
    (Blend.from_weights({"alice": 1.5, "carol": 0.5}, "contrast"), PROMPT, greedy(5)),
    (Blend.from_weights({"alice": 0.7, "bob": 0.3}, "ties", density=0.5), "We", greedy(6)),
]


def test_generate_batch_equals_solo_runs(blend_zoo):
    # The solo runs use the default engine (live blends fuse from their 2nd request in a row).
    solo_engine = Engine(blend_zoo, device="cpu")
    solo = [solo_engine.generate(b, p, params) for b, p, params in REQUESTS]
    assert any(len(s.tokens) >= 5 for samples in solo for s in samples)
    batched = Engine(blend_zoo, device="cpu")
    assert batched.generate_batch(REQUESTS) == solo
    assert batched.generate_batch(REQUESTS[:1]) == solo[:1]
    batched._pool.max_slots = 2  # more slot blends than slots: served in groups
    assert batched.generate_batch(REQUESTS) == solo


def test_generate_batch_stops_rows_independently(engine):
    params = SamplingParams(max_new_tokens=30, seed=4, num_samples=3, temperature=1.5)
    requests = [
        (Blend.from_weights({"alice": 0.5, "bob": 0.5}), "Hi", params),
        (Blend.from_weights({"bob": 0.6, "carol": 0.4}), "I think the world", greedy(3)),
        (Blend.from_weights({"alice": 1}), PROMPT, SamplingParams(max_new_tokens=30, seed=9)),
    ]
    want = [engine.generate(b, p, s) for b, p, s in requests]
    assert engine.generate_batch(requests) == want
    assert all("\n" not in s.text for s in want[0])


def test_generate_batch_errors(engine):
    with pytest.raises(EngineError, match="list of"):
        engine.generate_batch([(Blend.from_weights({"alice": 1}), PROMPT)])
    with pytest.raises(EngineError, match="unknown user"):
        engine.generate_batch([({"nobody": 1}, PROMPT, SamplingParams())])
    assert engine.generate_batch([]) == []


def test_concurrent_batches_and_streams_stay_isolated(engine):
    solo = [engine.generate(b, p, s) for b, p, s in REQUESTS]
    results: dict[str, list] = {}

    def batch(key, requests):
        results[key] = engine.generate_batch(requests)

    def stream(key, request):
        *_, last = engine.stream(*request)
        results[key] = [last]

    threads = [
        threading.Thread(target=batch, args=("a", REQUESTS[:4])),
        threading.Thread(target=batch, args=("b", REQUESTS[3:])),
        threading.Thread(target=stream, args=("c", REQUESTS[1])),
        threading.Thread(target=stream, args=("d", REQUESTS[2])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["a"] == solo[:4] and results["b"] == solo[3:]
    assert results["c"] == [solo[1]] and results["d"] == [solo[2]]
