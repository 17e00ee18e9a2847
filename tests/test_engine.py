"""Engine tests on the tiny GPT-2: numbers against a hand-built dense reference, not logs."""

import shutil
import threading

import pytest
import torch
from _adapters import build_zoo, logprobs, lora_layers, reference_model, user_entry

from zoo.blend import Blend, merge_deltas
from zoo.engine import Engine, EngineError, SamplingParams, combine_outputs, layer_index
from zoo.registry import register_entry

PROMPT = "I think the"
TOL = 1e-4


@pytest.fixture(scope="module")
def engine(blend_zoo):
    return Engine(blend_zoo, device="cpu")


def folders(blend_zoo, weights):
    return {blend_zoo.parent / "adapters" / name: w for name, w in weights.items()}


def prompt_ids(engine, prompt=PROMPT):
    tok = engine.tokenizer
    return [tok.eos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"]


def greedy(n=12, **kw):
    return SamplingParams(max_new_tokens=n, temperature=0, stop_at_newline=False, **kw)


def test_single_user_equals_adapter_alone(engine, blend_zoo, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    got = engine.next_token_logprobs(Blend.from_weights({"alice": 1}), PROMPT)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    alone = PeftModel.from_pretrained(base, str(blend_zoo.parent / "adapters" / "alice")).eval()
    want = logprobs(alone, prompt_ids(engine))
    base_lp = logprobs(reference_model(tiny_model_dir), prompt_ids(engine))
    assert (want - base_lp).abs().max() > 0.1  # the adapter really changes the model
    assert (got - want).abs().max() < TOL


def test_twin_with_opposite_weight_is_base(engine, tiny_model_dir):
    got = engine.next_token_logprobs(Blend.from_weights({"alice": 1, "alice_twin": -1}), PROMPT)
    want = logprobs(reference_model(tiny_model_dir), prompt_ids(engine))
    assert (got - want).abs().max() < TOL


@pytest.mark.parametrize("weights", [{"alice": 0.7, "bob": -0.3, "carol": 0.5}, {"bob": 1.5}])
def test_live_blend_equals_dense_reference(engine, blend_zoo, tiny_model_dir, weights):
    blend = Blend.from_weights(weights)
    got = engine.next_token_logprobs(blend, PROMPT)
    want = logprobs(
        reference_model(tiny_model_dir, folders(blend_zoo, weights)), prompt_ids(engine)
    )
    assert (got - want).abs().max() < TOL


def test_fused_equals_unfused(engine):
    blend = Blend.from_weights({"alice": 0.4, "bob": 0.6})
    other = Blend.from_weights({"carol": 1})
    engine.next_token_logprobs(other, PROMPT)
    unfused = engine.generate(blend, PROMPT, greedy())
    assert engine._fused is None
    first = engine.next_token_logprobs(other, PROMPT)  # breaks the streak
    live = engine.next_token_logprobs(blend, PROMPT)
    fused = engine.next_token_logprobs(blend, PROMPT)  # 2nd request in a row: fused
    assert engine._fused == blend.id
    assert (live - fused).abs().max() < TOL
    assert engine.generate(blend, PROMPT, greedy()) == unfused
    assert (engine.next_token_logprobs(other, PROMPT) - first).abs().max() < TOL  # restored


@pytest.mark.parametrize("method", ["ties", "dare_ties", "dare_linear", "magnitude_prune", "cat"])
def test_dense_methods_equal_merge_deltas(engine, blend_zoo, tiny_model_dir, method):
    weights = {"alice": 0.8, "carol": -0.5}
    blend = Blend.from_weights(weights, method=method, density=0.4, seed=7)
    layers = {n: lora_layers(blend_zoo.parent / "adapters" / n) for n in weights}
    deltas = {}
    for name in layers["alice"]:
        per = [(layers[u][name], w) for u, w in weights.items() if name in layers[u]]
        dense = [B @ A * s for (A, B, s), _ in per]
        deltas[name] = merge_deltas(
            dense, [w for _, w in per], method, 0.4, 7, layer_index=layer_index(name)
        )
    want = logprobs(reference_model(tiny_model_dir, deltas=deltas), prompt_ids(engine))
    got = engine.next_token_logprobs(blend, PROMPT)
    assert (got - want).abs().max() < TOL
    assert blend.id in engine._dense_cache


def test_output_modes_math(engine, blend_zoo, tiny_model_dir):
    ids = prompt_ids(engine)
    a = logprobs(reference_model(tiny_model_dir, folders(blend_zoo, {"alice": 1})), ids)
    b = logprobs(reference_model(tiny_model_dir, folders(blend_zoo, {"bob": 1})), ids)
    base = logprobs(reference_model(tiny_model_dir), ids)
    for method in ("product", "mixture", "contrast"):
        single = engine.next_token_logprobs(Blend.from_weights({"alice": 1}, method), PROMPT)
        assert (single - a).abs().max() < TOL, method
    product = engine.next_token_logprobs(Blend.from_weights({"alice": 1, "bob": -0.5}, "product"), PROMPT)  # fmt: skip
    assert (product - (a - 0.5 * b).log_softmax(-1)).abs().max() < TOL
    mixture = engine.next_token_logprobs(Blend.from_weights({"alice": 1.5, "bob": 0.5}, "mixture"), PROMPT)  # fmt: skip
    assert (mixture.exp() - (0.75 * a.exp() + 0.25 * b.exp())).abs().max() < TOL
    contrast = engine.next_token_logprobs(Blend.from_weights({"alice": 1.5, "bob": 0.5}, "contrast"), PROMPT)  # fmt: skip
    want = (base + 1.5 * (a - base) + 0.5 * (b - base)).log_softmax(-1)
    assert (contrast - want).abs().max() < TOL


def test_attribution_constructed_case():
    # Row 0 = alice, row 1 = bob: alice prefers token 1, bob strongly prefers token 3.
    logits = torch.full((1, 2, 5), -5.0)
    logits[0, 0, 1] = 5.0
    logits[0, 1, 3] = 9.0
    _, weighted = combine_outputs(logits, "mixture", torch.tensor([0.5, 0.5]), with_base=False)
    assert weighted[0, :, 3].argmax() == 1 and weighted[0, :, 1].argmax() == 0
    _, weighted = combine_outputs(logits, "mixture", torch.tensor([1.0, 0.0]), with_base=False)
    assert weighted[0, :, 3].argmax() == 0  # a zero-weight user never speaks


def test_attribution_matches_teacher_forced_reference(engine, blend_zoo, tiny_model_dir):
    blend = Blend.from_weights({"alice": 0.5, "bob": 0.5}, "mixture")
    sample = engine.generate(blend, PROMPT, greedy(n=6))[0]
    models = {
        u: reference_model(tiny_model_dir, folders(blend_zoo, {u: 1})) for u in ("alice", "bob")
    }
    ids = prompt_ids(engine)
    new = engine.tokenizer(sample.text, add_special_tokens=False)["input_ids"]
    assert len(sample.speakers) == len(sample.tokens) == len(new)
    for token, speaker in zip(new, sample.speakers, strict=True):
        probs = {u: logprobs(m, ids)[token].exp() for u, m in models.items()}
        assert speaker == max(probs, key=probs.get)
        ids.append(token)
    assert set(engine.generate(Blend.from_weights({"alice": 1}), PROMPT, greedy(3))[0].speakers) == {None}  # fmt: skip


def test_stream_yields_growing_prefixes(engine):
    blend = Blend.from_weights({"alice": 0.5, "bob": 0.5}, "product")
    params = SamplingParams(max_new_tokens=10, seed=3, num_samples=2, stop_at_newline=False)
    steps = list(engine.stream(blend, PROMPT, params))
    final = engine.generate(blend, PROMPT, params)
    assert steps[-1] == final and len(final) == 2
    for i in range(2):
        texts = [step[i].text for step in steps]
        assert all(b.startswith(a) for a, b in zip(texts, texts[1:], strict=False))
        assert len(steps[-1][i].tokens) == len(steps[-1][i].speakers)


def test_seed_reproducible_and_newline_cut(engine):
    blend = Blend.from_weights({"alice": 0.6, "carol": 0.4})
    params = SamplingParams(max_new_tokens=30, seed=11, num_samples=3, temperature=1.2, top_k=50)
    first = engine.generate(blend, PROMPT, params)
    assert engine.generate(blend, PROMPT, params) == first
    other = engine.generate(blend, PROMPT, SamplingParams(max_new_tokens=30, seed=12, num_samples=3))  # fmt: skip
    assert [s.text for s in other] != [s.text for s in first]
    assert all("\n" not in s.text for s in first)


def test_concurrent_requests_equal_sequential(engine):
    requests = [
        (Blend.from_weights({"alice": 0.9, "bob": 0.1}), SamplingParams(max_new_tokens=8, seed=1)),
        (Blend.from_weights({"bob": 1, "carol": -0.5}), greedy(8)),
        (Blend.from_weights({"alice": 0.5, "carol": 0.5}, "ties"), greedy(8)),
        (
            Blend.from_weights({"alice": 0.5, "bob": 0.5}, "contrast"),
            SamplingParams(max_new_tokens=8, seed=2),
        ),  # fmt: skip
    ]
    sequential = [engine.generate(b, PROMPT, p) for b, p in requests]
    results = {}

    def run(i, b, p):
        for _ in range(2):
            results.setdefault(i, []).append(engine.generate(b, PROMPT, p))

    threads = [threading.Thread(target=run, args=(i, *r)) for i, r in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, want in enumerate(sequential):
        assert results[i] == [want, want]


def test_lru_eviction_keeps_results(blend_zoo):
    small = Engine(blend_zoo, max_loaded_adapters=2, device="cpu")
    blends = [Blend.from_weights(w) for w in ({"alice": 1}, {"bob": 1}, {"carol": 1})]
    first = [small.next_token_logprobs(b, PROMPT) for b in blends]
    assert len(small._loaded) == 2 and "alice" not in small._loaded
    again = small.next_token_logprobs(blends[0], PROMPT)
    assert (again - first[0]).abs().max() < TOL


def test_export_reproduces_engine_greedy_via_pipeline(engine, blend_zoo):
    from transformers import pipeline

    blend = Blend.from_weights({"alice": 0.6, "bob": 0.4})
    entry = engine.export(blend, rank=None)
    assert entry.id == "alice-bob" and entry.kind == "cyborg"
    assert [(p.id, p.weight) for p in entry.parents] == [("alice", 0.6), ("bob", 0.4)]
    assert entry.blend["energy_kept"] == pytest.approx(1.0) and entry.blend["rank"] == 8
    assert set(entry.stats) == {"alice", "bob"} and entry.id in engine.registry
    folder = engine.registry.adapter_dir(entry.id)
    assert (folder / "generation_config.json").is_file()
    want = engine.generate(blend, PROMPT, greedy(12))[0]
    generator = pipeline("text-generation", model=str(folder), device="cpu")
    out = generator(
        engine.tokenizer.eos_token + PROMPT, max_new_tokens=12, do_sample=False,
        return_full_text=False,
    )  # fmt: skip
    got_ids = engine.tokenizer(out[0]["generated_text"], add_special_tokens=False)["input_ids"]
    want_ids = engine.tokenizer(want.text, add_special_tokens=False)["input_ids"]
    assert len(want_ids) >= 8 and got_ids == want_ids
    # The exported entry is itself a user of the engine, equal to the live blend.
    exported = engine.next_token_logprobs(Blend.from_weights({"alice-bob": 1}), PROMPT)
    assert (exported - engine.next_token_logprobs(blend, PROMPT)).abs().max() < TOL


def test_export_dense_method_full_rank_and_truncated(engine):
    blend = Blend.from_weights({"alice": 0.7, "carol": 0.3}, "ties", density=0.5)
    entry = engine.export(blend, entry_id="alice-carol-ties", rank=None)
    exported = engine.next_token_logprobs(Blend.from_weights({"alice-carol-ties": 1}), PROMPT)
    assert (exported - engine.next_token_logprobs(blend, PROMPT)).abs().max() < TOL
    assert entry.blend["method"] == "ties"
    low = engine.export(blend, entry_id="alice-carol-r2", rank=2)
    assert low.blend["rank"] == 2 and 0 < low.blend["energy_kept"] < 1


def test_export_errors(engine):
    with pytest.raises(EngineError, match="cannot be saved"):
        engine.export(Blend.from_weights({"alice": 1, "bob": 1}, "product"))
    with pytest.raises(EngineError, match="at least two"):
        engine.export(Blend.from_weights({"alice": 1}))


@pytest.mark.parametrize(
    ("blend", "match"),
    [
        ({"nobody": 1}, "unknown user.*nobody"),
        ({}, "at least one user"),
        ({f"u{i}": 0.1 for i in range(9)}, "at most 8"),
        ({"alice": float("nan")}, "finite"),
        ({"alice": 3}, r"\[-2, 2\]"),
    ],
)
def test_bad_blends(engine, blend, match):
    with pytest.raises(EngineError, match=match):
        engine.generate(blend, PROMPT, SamplingParams())


def test_bad_prompt_and_params(engine):
    blend = Blend.from_weights({"alice": 1})
    with pytest.raises(EngineError, match="prompt too long"):
        engine.generate(blend, "word " * 200, SamplingParams())
    with pytest.raises(EngineError, match="prompt too long"):
        engine.stream(blend, "word " * 100, SamplingParams(max_new_tokens=100))
    with pytest.raises(EngineError, match="prompt must be a string"):
        engine.generate(blend, None, SamplingParams())
    for bad, match in [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"num_samples": 0}, "num_samples"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"seed": -1}, "seed"),
        ({"temperature": float("nan")}, "temperature"),
    ]:
        with pytest.raises(EngineError, match=match):
            SamplingParams(**bad)


def test_mixed_bases_are_refused(tmp_path, blend_zoo, tiny_model_dir):
    registry = tmp_path / "registry.json"
    alice = blend_zoo.parent / "adapters" / "alice"
    register_entry(registry, user_entry("alice", str(tiny_model_dir), None, hub_repo="x/alice"))
    register_entry(registry, user_entry("bob", "other/base", None, hub_repo="x/bob"))
    with pytest.raises(EngineError, match="share one base"):
        Engine(registry, device="cpu").generate({"alice": 1}, PROMPT, SamplingParams())
    assert alice.is_dir()


def test_broken_adapter_is_a_clear_error(tmp_path, tiny_model_dir):
    registry = build_zoo(tmp_path, tiny_model_dir)
    (tmp_path / "adapters" / "bob" / "adapter_model.safetensors").write_bytes(b"garbage")
    broken = Engine(registry, device="cpu")
    with pytest.raises(EngineError, match="'bob'.*checksum"):
        broken.generate({"alice": 1, "bob": 1}, PROMPT, SamplingParams())
    assert broken.generate({"alice": 1}, PROMPT, greedy(3))  # the engine still serves others


def test_refresh_reloads_changed_entries(tmp_path, tiny_model_dir):
    from zoo.registry import update_entry

    registry = build_zoo(tmp_path, tiny_model_dir)
    fresh = Engine(registry, device="cpu")
    blend = Blend.from_weights({"alice": 1})
    before = fresh.next_token_logprobs(blend, PROMPT)
    update_entry(registry, "alice", lambda e: e.metrics.update(adapter_perplexity=3.0))
    fresh.refresh()
    assert "alice" not in fresh._loaded and fresh.registry.get("alice").metrics
    assert (fresh.next_token_logprobs(blend, PROMPT) - before).abs().max() < TOL


def test_base_from_offline_hub_id(tmp_path, blend_zoo, hub_model_id):
    shutil.copytree(blend_zoo.parent / "adapters" / "bob", tmp_path / "adapters" / "bob")
    register_entry(tmp_path / "registry.json", user_entry("bob", hub_model_id, tmp_path / "adapters" / "bob"))  # fmt: skip
    hub = Engine(tmp_path / "registry.json", device="cpu")
    local = Engine(blend_zoo, device="cpu")
    blend = Blend.from_weights({"bob": 1})
    got, want = hub.next_token_logprobs(blend, PROMPT), local.next_token_logprobs(blend, PROMPT)
    assert (got - want).abs().max() < TOL
