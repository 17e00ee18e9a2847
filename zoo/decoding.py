"""One generation request: what it asks for (`SamplingParams`), what it gets (`Sample`), and its
decoding state while `zoo.engine.Engine` runs it (`Request`: its rows in a forward batch, its
sampler, its text so far). Import these from `zoo.engine`, the public API; the engine owns the
model, the blends and the forward passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from zoo.blend import Blend
from zoo.sampling import combine_outputs, sample_next

BASE = "__base__"  # peft's name for "no adapter" in `adapter_names`
MAX_NUM_SAMPLES = 16
MAX_NEW_TOKENS = 512


class EngineError(ValueError):
    """A request the engine cannot serve: bad blend, unknown user, prompt too long, bad params."""


@dataclass
class SamplingParams:
    max_new_tokens: int = field(default=40, metadata={"help": "tokens to generate per sample"})
    temperature: float = field(default=1.0, metadata={"help": "0 = greedy"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling mass, in (0, 1]"})
    top_k: int = field(default=0, metadata={"help": "keep the k likeliest tokens (0 = all)"})
    num_samples: int = field(default=1, metadata={"help": "samples generated as one batch"})
    seed: int = field(default=0, metadata={"help": "same seed + blend + prompt = same text"})
    stop_at_newline: bool = field(default=True, metadata={"help": "cut at the first newline"})

    def __post_init__(self):
        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

        if not is_int(self.max_new_tokens) or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise EngineError(
                f"max_new_tokens must be an integer in [1, {MAX_NEW_TOKENS}], "
                f"got {self.max_new_tokens!r}"
            )
        if not is_num(self.temperature) or not 0 <= self.temperature <= 10:
            raise EngineError(f"temperature must be in [0, 10], got {self.temperature!r}")
        if not is_num(self.top_p) or not 0 < self.top_p <= 1:
            raise EngineError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not is_int(self.top_k) or self.top_k < 0:
            raise EngineError(f"top_k must be a non-negative integer, got {self.top_k!r}")
        if not is_int(self.num_samples) or not 1 <= self.num_samples <= MAX_NUM_SAMPLES:
            raise EngineError(
                f"num_samples must be an integer in [1, {MAX_NUM_SAMPLES}], "
                f"got {self.num_samples!r}"
            )
        if not is_int(self.seed) or self.seed < 0:
            raise EngineError(f"seed must be a non-negative integer, got {self.seed!r}")


@dataclass
class Sample:
    text: str  # the continuation (prompt excluded)
    tokens: list[str]  # decoded pieces of the continuation
    speakers: list[str | None]  # per token: adapter id that favoured it most, or None


class Request:
    """One request's decoding state: its rows in a forward batch, its sampler, its text so far.

    Rows: `num_samples` blocks of `rows_per_sample` rows; an output-space blend has one row per
    user (+ a base row for contrast), a slot or fused blend one row per sample."""

    def __init__(
        self,
        blend: Blend,
        prompt_ids: list[int],
        mode: str,
        params: SamplingParams,
        tokenizer,
        decode_piece: Callable[[int], str],
        device: torch.device,
    ):
        self.blend, self.prompt_ids, self.mode, self.params = blend, prompt_ids, mode, params
        self.with_base = blend.method == "contrast"
        self.names = list(blend.users) + ([BASE] if self.with_base else [])
        self.rows_per_sample = len(self.names) if mode == "output" else 1
        self.num_rows = self.rows_per_sample * params.num_samples
        self.weights = torch.tensor([w for _, w in blend.weights], device=device)
        self.generator = torch.Generator().manual_seed(params.seed)
        self.tokenizer, self.decode_piece = tokenizer, decode_piece
        n = params.num_samples
        self.new_ids: list[list[int]] = [[] for _ in range(n)]
        self.speakers: list[list[str | None]] = [[] for _ in range(n)]
        self.texts: list[str | None] = [None] * n  # final text of a finished sample
        self.done = [False] * n
        self.steps, self.finished = 0, False
        self.slot: str | None = None  # the slot this step runs (set by Engine._setup)

    def row_names(self) -> list[str]:
        return ([self.slot] if self.mode == "slot" else self.names) * self.params.num_samples

    def scores(self, logits: torch.Tensor):
        """(log-space scores [num_samples, vocab], weighted probabilities or None)."""
        if self.mode == "output":
            rows = logits.view(self.params.num_samples, self.rows_per_sample, -1)
            return combine_outputs(rows, self.blend.method, self.weights, self.with_base)
        return logits.log_softmax(dim=-1), None

    def step(self, logits: torch.Tensor, eos: int) -> torch.Tensor:
        """Sample one token per sample from this request's rows; returns the next input ids."""
        scores, weighted = self.scores(logits)
        chosen = sample_next(scores, self.params, self.generator)
        users, cut = self.blend.users, self.params.stop_at_newline
        for i, token in enumerate(chosen.tolist()):
            if self.done[i]:
                continue
            if token == eos:
                self.done[i] = True
                continue
            self.new_ids[i].append(token)
            who = None if weighted is None else users[int(weighted[i, :, token].argmax())]
            self.speakers[i].append(who)
            # A newline byte is whole in the token holding it (byte-level BPE), so the piece
            # tells whether the text now holds one, without decoding the whole text per token.
            if cut and "\n" in self.decode_piece(token):
                self.done[i] = True
        self.steps += 1
        self.finished = all(self.done) or self.steps == self.params.max_new_tokens
        return chosen.repeat_interleave(self.rows_per_sample)

    def _text(self, i: int) -> str:
        if self.texts[i] is not None:
            return self.texts[i]
        text = self.tokenizer.decode(self.new_ids[i])
        if self.params.stop_at_newline and "\n" in text:
            text = text.split("\n", 1)[0]
        if self.done[i]:
            self.texts[i] = text
        return text

    def samples(self) -> list[Sample]:
        out = []
        for i, (ids, speakers) in enumerate(zip(self.new_ids, self.speakers, strict=True)):
            tokens, kept = [], []
            for token, who in zip(ids, speakers, strict=True):
                piece = self.decode_piece(token)
                if self.params.stop_at_newline and "\n" in piece:  # drop the rest of the token
                    if piece.split("\n", 1)[0]:
                        tokens.append(piece.split("\n", 1)[0])
                        kept.append(who)
                    break
                tokens.append(piece)
                kept.append(who)
            out.append(Sample(text=self._text(i), tokens=tokens, speakers=kept))
        return out
