"""Held-out loss and perplexity of a causal LM on token blocks (see `training.dataset`).

The loss is the token-weighted mean next-token NLL over every labelled position of the split, so
a padded last block counts only for its real tokens. For "base vs adapter" on one PEFT model:

    adapter = evaluate_loss(peft_model, blocks)
    with peft_model.disable_adapter():
        base = evaluate_loss(peft_model, blocks)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from training.dataset import IGNORE_INDEX

logger = logging.getLogger(__name__)


@dataclass
class EvalResult:
    loss: float  # mean NLL per predicted token (nats)
    perplexity: float
    tokens: int  # number of predicted tokens the mean is over


@torch.no_grad()
def evaluate_loss(model, blocks, batch_size: int = 8, device: str | None = None) -> EvalResult:
    """Token-weighted mean loss of `model` on a tokenized split (`input_ids`/`attention_mask`/`labels`)."""
    if len(blocks) == 0:
        raise ValueError("cannot evaluate on an empty split")
    device = device or str(next(model.parameters()).device)
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    try:
        for start in tqdm(range(0, len(blocks), batch_size), desc="Evaluating", leave=False):
            rows = blocks[start : start + batch_size]
            input_ids = torch.tensor(rows["input_ids"], device=device)
            attention_mask = torch.tensor(rows["attention_mask"], device=device)
            labels = torch.tensor(rows["labels"], device=device)
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
            # Shift: position t predicts token t+1. Float32 for a stable sum under bf16/fp16.
            nll = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.size(-1)),
                labels[:, 1:].reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            total_nll += nll.item()
            total_tokens += int((labels[:, 1:] != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    if total_tokens == 0:
        raise ValueError("the split has no labelled tokens to predict")
    loss = total_nll / total_tokens
    return EvalResult(loss=loss, perplexity=math.exp(min(loss, 700.0)), tokens=total_tokens)
