"""`evaluate_loss` is the token-weighted mean NLL; `disable_adapter()` gives the base number."""

import math

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from training.dataset import IGNORE_INDEX
from training.evaluate import evaluate_loss


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()


def blocks_of(rows: list[list[int]], real: list[int]) -> Dataset:
    """Blocks whose first `real[i]` tokens are real and the rest padding."""
    mask = [[1] * n + [0] * (len(r) - n) for r, n in zip(rows, real, strict=True)]
    labels = [r[:n] + [IGNORE_INDEX] * (len(r) - n) for r, n in zip(rows, real, strict=True)]
    return Dataset.from_dict({"input_ids": rows, "attention_mask": mask, "labels": labels})


def test_loss_is_token_weighted_over_real_tokens(model):
    torch.manual_seed(0)
    rows = torch.randint(1, 500, (3, 16)).tolist()
    blocks = blocks_of(rows, [16, 16, 5])
    result = evaluate_loss(model, blocks, batch_size=2)
    # Reference: per block mean loss from the model itself, weighted by predicted tokens.
    total, count = 0.0, 0
    for row, n in zip(rows, [16, 16, 5], strict=True):
        ids = torch.tensor([row[:n]])
        with torch.no_grad():
            loss = model(input_ids=ids, labels=ids).loss.item()
        total += loss * (n - 1)
        count += n - 1
    assert result.tokens == 15 + 15 + 4
    assert result.loss == pytest.approx(total / count, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(result.loss))
    assert evaluate_loss(model, blocks, batch_size=3).loss == pytest.approx(result.loss, rel=1e-6)


def test_disable_adapter_gives_base_loss_and_keeps_train_mode(model, tiny_model_dir):
    torch.manual_seed(0)
    rows = torch.randint(1, 500, (2, 16)).tolist()
    blocks = blocks_of(rows, [16, 16])
    base = evaluate_loss(model, blocks)
    fresh = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    config = LoraConfig(
        r=4, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False
    )  # non-zero B: the adapter really changes the output
    peft_model = get_peft_model(fresh, config)
    assert peft_model.training  # get_peft_model returns train mode...
    adapted = evaluate_loss(peft_model, blocks)
    assert peft_model.training  # ...and evaluation puts it back
    with peft_model.disable_adapter():
        disabled = evaluate_loss(peft_model, blocks)
    assert disabled.loss == pytest.approx(base.loss, rel=1e-6)
    assert abs(adapted.loss - base.loss) > 1e-3


def test_empty_split_is_an_error(model):
    with pytest.raises(ValueError, match="empty split"):
        evaluate_loss(model, blocks_of([], []))
