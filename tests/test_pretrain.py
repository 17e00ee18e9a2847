"""training.pretrain on a microscopic model: real corpus subset, real BPE, real save/load."""

import json
import math

import pytest
import torch
from conftest import micro_pretrain

from training.pretrain import (
    DEMO_ACCOUNTS,
    UNSUITABLE_FORTUNES,
    PretrainConfig,
    _play_speeches,
    fortune_categories,
    is_complete,
    load_corpus,
    run,
)


def micro(out_dir, **overrides) -> PretrainConfig:
    return micro_pretrain(**({"out_dir": str(out_dir)} | overrides))


@pytest.fixture(scope="module")
def micro_base(tmp_path_factory):
    return run(micro(tmp_path_factory.mktemp("pretrain") / "base"))


def test_saved_folder_loads_and_generates(micro_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert is_complete(micro_base)
    assert (micro_base / "model.safetensors").is_file()
    assert not list(micro_base.glob("*.bin"))
    model = AutoModelForCausalLM.from_pretrained(str(micro_base))
    tokenizer = AutoTokenizer.from_pretrained(str(micro_base))
    assert model.config.n_layer == 1 and model.config.n_positions == 128
    assert tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == model.config.eos_token_id
    assert model.config.vocab_size == len(tokenizer) <= 300
    assert model.generation_config.do_sample and model.generation_config.top_p == 0.95
    # Byte-level BPE round-trips any text, emoji included.
    text = "To be, or not to be 🤖"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    ids = tokenizer(tokenizer.eos_token + "I think", return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(**ids, max_new_tokens=5)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_loss_decreased_and_is_recorded(micro_base):
    record = json.loads((micro_base / "pretrain.json").read_text())
    m = record["metrics"]
    assert m["eval_loss"] < m["initial_loss"] - 0.5
    assert m["train_loss"] < m["initial_loss"] - 0.5
    assert math.isclose(m["eval_perplexity"], math.exp(m["eval_loss"]), rel_tol=1e-2)
    assert len(record["samples"]) == 3


def test_card_parses(micro_base):
    from huggingface_hub import ModelCard

    card = ModelCard.load(micro_base / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-generation"
    assert card.data.language == "en"
    assert card.data.license
    assert "from-scratch" in card.data.tags
    assert "held-out perplexity" in card.text and "Limitations" in card.text


def test_rerun_replaces_folder_atomically(tmp_path):
    out = run(micro(tmp_path / "base", steps=2, max_chars=5000))
    (out / "stale.txt").write_text("old")
    run(micro(tmp_path / "base", steps=2, max_chars=5000))
    assert is_complete(out) and not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["base"]  # no temp or old folders left


def test_corpus_leaves_out_demo_accounts_and_unsuitable_categories():
    from training.pretrain import read_fortunes

    docs = set(load_corpus(list(DEMO_ACCOUNTS)))
    for category in ("zippy", "ethnic", "men-women"):
        assert not docs & set(read_fortunes(category))
    skipped = set(DEMO_ACCOUNTS) | set(UNSUITABLE_FORTUNES) - {"LICENSE"}
    kept = set(read_fortunes("cookie")) - {f for c in skipped for f in read_fortunes(c)}
    assert len(kept) > 500 and kept <= docs  # fortunes shared with a skipped category: left out
    assert any(d.startswith("Hamlet: ") for d in docs)
    assert set(UNSUITABLE_FORTUNES) - {"LICENSE"} <= set(fortune_categories())


def test_subset_mixes_both_sources():
    docs = load_corpus(list(DEMO_ACCOUNTS), max_chars=4000)
    assert 4000 <= sum(map(len, docs)) < 4000 + max(map(len, docs))
    assert any(":" in d.split()[0] for d in docs)  # a speech 'Speaker: ...'


def test_play_markdown_becomes_speeches():
    md = "# Play\n\n## ACT I\n\n_Enter A_\n\n**FIRST LORD**  \nHail,  \nmy _liege_.\n\n**B**  \nNo.\n"
    assert _play_speeches(md) == ["First Lord: Hail, my liege.", "B: No."]


@pytest.mark.parametrize(
    "bad",
    [
        {"n_positions": 64},
        {"n_embd": 30, "n_head": 4},
        {"vocab_size": 100},
        {"steps": 0},
        {"learning_rate": 0.0},
        {"device": "tpu"},
        {"bf16": "maybe"},
        {"dropout": 1.0},
    ],
)
def test_config_rejects_bad_values(tmp_path, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        micro(tmp_path, **bad)
