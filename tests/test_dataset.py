"""Split and block numbers of `training.dataset` on the fixture corpus and hand-made posts."""

import pytest
from transformers import AutoTokenizer

from training.dataset import (
    IGNORE_INDEX,
    build_dataset,
    dataset_dir,
    group_texts,
    load_dataset,
    save_dataset,
    tokenize_dataset,
)

EOS = "<|endoftext|>"


def test_split_sizes_are_seeded_and_disjoint(fixture_posts):
    ds = build_dataset(fixture_posts, EOS, validation_fraction=0.1, seed=0)
    assert ds.num_rows == {"train": 436, "validation": 48}
    assert ds["train"].column_names == ["text"]
    assert all(t.startswith(EOS) for t in ds["validation"]["text"])
    assert sorted([*ds["train"]["text"], *ds["validation"]["text"]]) == sorted(
        EOS + p for p in fixture_posts
    )
    again = build_dataset(fixture_posts, EOS, validation_fraction=0.1, seed=0)
    other = build_dataset(fixture_posts, EOS, validation_fraction=0.1, seed=1)
    assert list(again["validation"]["text"]) == list(ds["validation"]["text"])
    assert list(other["validation"]["text"]) != list(ds["validation"]["text"])


def test_tiny_corpora_keep_one_post_each_side():
    assert build_dataset(["a", "b"], EOS, 0.01).num_rows == {"train": 1, "validation": 1}
    assert build_dataset(["a", "b", "c"], EOS, 0.9).num_rows == {"train": 1, "validation": 2}
    with pytest.raises(ValueError, match="at least 2 posts"):
        build_dataset(["only one"], EOS)
    with pytest.raises(ValueError, match="validation_fraction"):
        build_dataset(["a", "b"], EOS, validation_fraction=1.0)


def test_group_texts_closes_stream_with_eos_and_pads_last_block():
    out = group_texts(
        {"input_ids": [[0, 5, 6], [0, 7], [0, 8, 9, 10]]}, block_size=4, eos_token_id=0
    )
    assert out["input_ids"] == [[0, 5, 6, 0], [7, 0, 8, 9], [10, 0, 0, 0]]
    assert out["attention_mask"] == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert out["labels"] == [[0, 5, 6, 0], [7, 0, 8, 9], [10, 0, IGNORE_INDEX, IGNORE_INDEX]]


def test_tokenize_dataset_blocks_cover_every_token(tiny_model_dir, fixture_posts, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    ds = build_dataset(fixture_posts, tokenizer.eos_token, seed=0)
    blocks = tokenize_dataset(ds, tokenizer, block_size=32)
    for split in ("train", "validation"):
        posts = list(ds[split]["text"])
        # Each post is EOS + its tokens; the stream ends with one extra EOS.
        expected = sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in posts) + 1
        mask = list(blocks[split]["attention_mask"])
        assert sum(map(sum, mask)) == expected
        assert len(blocks[split]) == -(-expected // 32)
        assert all(len(row) == 32 for row in blocks[split]["input_ids"])
        first = blocks[split][0]
        assert first["input_ids"][0] == tokenizer.eos_token_id
        assert first["labels"] == first["input_ids"]
    folder = save_dataset(ds, dataset_dir(tmp_path, "zippy"))
    assert folder == tmp_path / "zippy" / "dataset"
    assert list(load_dataset(folder)["validation"]["text"]) == list(ds["validation"]["text"])
