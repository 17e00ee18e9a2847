"""Posts -> a seeded train/validation split -> fixed-size token blocks for causal-LM training.

Like huggingtweets, every post is prefixed with EOS, so the token stream the model learns from is
`EOS p1 EOS p2 ... EOS pn EOS`: EOS separates posts and is also the prompt that starts a new one
(which is why generation prompts start with EOS). The stream is cut into `block_size` blocks
(`group_texts`); the last partial block is kept and padded, so a small validation split is never
dropped. Labels equal input ids, with padding masked as -100.
"""

from __future__ import annotations

import logging
from pathlib import Path

from datasets import Dataset, DatasetDict, load_from_disk

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value skipped by the loss (padding of the last block)


def build_dataset(
    texts: list[str], eos_token: str, validation_fraction: float = 0.1, seed: int = 0
) -> DatasetDict:
    """Split cleaned posts into `train` / `validation` (at least one post each, seeded).

    The `text` column holds each post prefixed with `eos_token`, i.e. exactly what the model sees.
    """
    if len(texts) < 2:
        raise ValueError(
            f"need at least 2 posts to make a train and a validation split, got {len(texts)}"
        )
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}")
    if not eos_token:
        raise ValueError("eos_token must be a non-empty string")
    n_val = min(len(texts) - 1, max(1, round(len(texts) * validation_fraction)))
    ds = Dataset.from_dict({"text": [eos_token + t for t in texts]})
    split = ds.train_test_split(test_size=n_val, shuffle=True, seed=seed)
    return DatasetDict(train=split["train"], validation=split["test"])


def group_texts(batch: dict[str, list], block_size: int, eos_token_id: int) -> dict[str, list]:
    """Concatenate a batch of tokenized posts, close it with EOS and cut it into blocks.

    Call it on the whole split at once (`batch_size=None`) so that only the very end of the stream
    gets the closing EOS and only the last block is partial (padded, labels -100).
    """
    stream = [tok for ids in batch["input_ids"] for tok in ids] + [eos_token_id]
    input_ids, attention_mask, labels = [], [], []
    for start in range(0, len(stream), block_size):
        block = stream[start : start + block_size]
        pad = block_size - len(block)
        input_ids.append(block + [eos_token_id] * pad)
        attention_mask.append([1] * len(block) + [0] * pad)
        labels.append(block + [IGNORE_INDEX] * pad)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def tokenize_dataset(dataset: DatasetDict, tokenizer, block_size: int) -> DatasetDict:
    """`text` -> blocks of `input_ids` / `attention_mask` / `labels`, each `block_size` long."""
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2, got {block_size}")
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("the tokenizer has no eos_token; causal-LM posts are separated by EOS")

    def tokenize(batch):
        # Posts are short, so no truncation: blocks are made by group_texts, not by the tokenizer.
        return {"input_ids": tokenizer(batch["text"], add_special_tokens=False)["input_ids"]}

    tokenized = dataset.map(tokenize, batched=True, remove_columns=["text"], desc="Tokenizing")
    return tokenized.map(
        group_texts,
        batched=True,
        batch_size=None,
        fn_kwargs={"block_size": block_size, "eos_token_id": eos_id},
        remove_columns=["input_ids"],
        desc=f"Grouping into blocks of {block_size}",
    )


def dataset_dir(data_dir: str | Path, handle: str) -> Path:
    """Where the split dataset of one handle is saved: `<data_dir>/<handle>/dataset`."""
    return Path(data_dir) / handle / "dataset"


def save_dataset(dataset: DatasetDict, folder: str | Path) -> Path:
    folder = Path(folder)
    dataset.save_to_disk(str(folder))
    logger.info("saved dataset (%s) to %s", dict(dataset.num_rows), folder)
    return folder


def load_dataset(folder: str | Path) -> DatasetDict:
    loaded = load_from_disk(str(folder))
    if not isinstance(loaded, DatasetDict) or {"train", "validation"} - set(loaded):
        raise ValueError(f"{folder} does not hold a DatasetDict with train and validation splits")
    return loaded
