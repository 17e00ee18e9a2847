"""Per-token decoding math of the engine: sampling and output-space combination of adapters.

Output-space blends (product, mixture, contrast) run one batched forward per token in which row i
carries adapter i (plus a base row for contrast); `combine_outputs` turns those rows into one
distribution and reports each user's weighted probability, so that every sampled token can be
attributed to the user who favoured it most.
"""

from __future__ import annotations

import math

import torch


def sample_next(scores: torch.Tensor, params, generator) -> torch.Tensor:
    """One token per row of `scores` [n, vocab] (log-space) with temperature / top-k / top-p.

    `params` is a `zoo.engine.SamplingParams` (temperature, top_k, top_p)."""
    if params.temperature == 0:
        return scores.argmax(dim=-1)
    scores = scores / params.temperature
    if params.top_k:
        kth = torch.topk(scores, min(params.top_k, scores.shape[-1]), dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if params.top_p < 1:
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_scores.softmax(dim=-1) >= params.top_p  # keeps >= 1 token
        scores = scores.scatter(-1, order, sorted_scores.masked_fill(drop, -math.inf))
    probs = scores.softmax(dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(scores.device)


def combine_outputs(
    logits: torch.Tensor, method: str, weights: torch.Tensor, with_base: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine per-adapter rows [n, R, vocab] into log-space scores [n, vocab].

    Returns (scores, weighted probabilities [n, users, vocab] used for attribution).
    """
    user_logits = logits[:, :-1] if with_base else logits
    logprobs = user_logits.log_softmax(dim=-1)
    w = weights.to(logits.dtype)[None, :, None]
    if method == "product":  # product of experts: sum_i w_i log p_i, renormalised by sampling
        scores = (w * logprobs).sum(dim=1)
    elif method == "mixture":  # sum_i w_i p_i with weights normalised to 1
        scores = torch.logsumexp(logprobs + (w / w.sum()).log(), dim=1)
    elif method == "contrast":  # base + sum_i a_i (user_i - base) on logits
        base = logits[:, -1]
        scores = base + (w * (user_logits - base[:, None])).sum(dim=1)
    else:
        raise ValueError(f"{method!r} is not an output-space method")
    return scores.log_softmax(dim=-1), w * logprobs.exp()
