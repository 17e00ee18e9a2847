"""The cyborg engine: blend 2+ LoRA adapters of the zoo live and generate text from the blend.

    from zoo.blend import Blend
    from zoo.engine import Engine, SamplingParams
    engine = Engine("zoo/registry.json")
    blend = Blend.from_weights({"alice": 0.7, "bob": 0.3})
    print(engine.generate(blend, "I think", SamplingParams(seed=1))[0].text)

One base model is loaded once; adapters are loaded lazily into one PeftModel under their registry
ids (LRU, `max_loaded_adapters`). How a blend runs depends on its method:

- `live`: the blend's adapters are active together and each LoRA layer's scale is set to
  w_i * alpha_i / r_i, which is exactly W0 + sum_i w_i dW_i; a slider re-weight only writes those
  scales (tens of microseconds; `set_adapter` runs only when the set of users changes). When the
  same blend comes again (2nd request in a row) its low-rank delta is fused into the base weights
  (`zoo.layers.BaseWeights`, one matmul per layer) and restored from a pristine copy when the
  blend changes.
- other weight methods (task_arithmetic, ties, dare_*, magnitude_prune, cat): the merged dense
  delta of each layer (`zoo.blend.merge_deltas`) is cached by blend id and fused into the base
  weights while that blend runs; the LoRA branches are switched off meanwhile.
- output methods (product, mixture, contrast): one batched forward per token with
  `adapter_names` (row i runs adapter i, plus a "__base__" row for contrast); the per-row
  distributions are combined and each sampled token is attributed to the user whose weighted
  probability for it was highest (`Sample.speakers`).

Sampling and the output-space math live in `zoo.sampling`, export in `zoo.export`.

Isolation: every forward step runs under one lock together with setting up its own blend (scales,
active set or fused delta), so concurrent requests never see each other's blend; nothing like a
"current user" survives between steps.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from zoo.blend import OUTPUT_METHODS, Blend, BlendError
from zoo.export import export_blend
from zoo.layers import (
    BaseWeights,
    dense_deltas,
    find_lora_layers,
    layer_index,  # noqa: F401  (public here since the first engine; tests use it)
    scale_slots,
    set_scales,
)
from zoo.loading import AdapterLoadError, load_adapter, load_base
from zoo.registry import Entry, Registry, RegistryError, id_from_handles, load_registry
from zoo.sampling import combine_outputs, sample_next

logger = logging.getLogger(__name__)

BASE = "__base__"  # peft's name for "no adapter" in `adapter_names`
FUSE_AFTER_REQUESTS = 2  # fuse a live blend into the base weights from its 2nd request in a row
DENSE_CACHE_SIZE = 2  # merged dense deltas kept (each is the size of the targeted base layers)
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


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Engine:
    def __init__(
        self,
        registry_path,
        max_loaded_adapters: int = 16,
        device: str = "auto",
        *,
        fuse_after_requests: int = FUSE_AFTER_REQUESTS,
    ):
        """`fuse_after_requests`: fuse a live blend from its n-th request in a row (0 = never).
        Fusing costs about one pass over the targeted weights, so it pays off on repeats."""
        if not isinstance(max_loaded_adapters, int) or max_loaded_adapters < 1:
            raise EngineError(f"max_loaded_adapters must be >= 1, got {max_loaded_adapters!r}")
        self.registry_path = Path(registry_path)
        self.registry: Registry = load_registry(self.registry_path)
        self.max_loaded_adapters = max_loaded_adapters
        self.device = _resolve_device(device)
        self._lock = threading.RLock()
        self._base = None  # the base model (wrapped in place by peft once an adapter loads)
        self._model = None  # PeftModel
        self._tokenizer = None
        self._base_key: tuple[str, str | None] | None = None
        self._loaded: OrderedDict[str, Entry] = OrderedDict()  # LRU: id -> entry it came from
        self._fused: str | None = None  # blend id whose delta is in the base weights
        self._weights = BaseWeights()  # pristine copies of the fused base weights
        self._dense_cache: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self._streak: tuple[str | None, int] = (None, 0)  # last live blend id, requests in a row
        self.fuse_after_requests = fuse_after_requests
        self._layers: list[tuple[str, torch.nn.Module]] | None = None  # LoRA layers, cached
        self._slots: dict | None = None  # adapter -> its layers' scaling slots (zoo.layers)
        self._active: tuple[str, str] | None = None  # (mode, blend id) the scales are set for
        self._active_users: tuple[str, ...] | None = None  # what set_adapter last activated
        self._adapters_on: bool | None = None  # LoRA layers enabled (off while a blend is fused)

    # ------------------------------------------------------------------ registry and loading
    def refresh(self) -> None:
        """Reload the registry; adapters whose entry changed or vanished are unloaded."""
        with self._lock:
            self.registry = load_registry(self.registry_path)
            stale = [a for a, e in self._loaded.items() if self.registry.entries.get(a) != e]
            if stale:
                self._unfuse()
                self._dense_cache.clear()
                for adapter_id in stale:
                    self._evict(adapter_id)

    @property
    def tokenizer(self):
        with self._lock:
            self._ensure_base()
        return self._tokenizer

    def _ensure_base(self) -> None:
        if self._base is not None:
            return
        bases = {(e.base_model, e.base_revision) for e in self.registry}
        if not bases:
            raise EngineError(f"the registry {self.registry_path} holds no adapters")
        if len(bases) > 1:
            listed = ", ".join(f"{b}@{r or 'main'}" for b, r in sorted(bases, key=str))
            raise EngineError(f"all adapters must share one base model; the zoo mixes {listed}")
        base_id, revision = bases.pop()
        logger.info("loading base %s@%s on %s", base_id, revision or "main", self.device)
        self._base, self._tokenizer = load_base(base_id, revision, self.device)
        self._base_key = (base_id, revision)

    def _check_users(self, blend: Blend) -> None:
        unknown = [u for u in blend.users if u not in self.registry]
        if unknown:
            known = ", ".join(self.registry.entries) or "none"
            raise EngineError(f"unknown user(s) {', '.join(unknown)} (known: {known})")
        for user in blend.users:
            entry = self.registry.get(user)
            if (entry.base_model, entry.base_revision) != self._base_key:
                raise EngineError(f"{user!r} was trained on another base ({entry.base_model})")

    def _ensure_adapters(self, users: tuple[str, ...]) -> None:
        """Load missing adapters (under the lock) and evict the least recently used others."""
        from peft import get_peft_model, set_peft_model_state_dict

        for user in users:
            if user in self._loaded:
                self._loaded.move_to_end(user)
                continue
            self._unfuse()  # peft rewraps layers: start from pristine weights
            try:
                adapter = load_adapter(
                    self.registry, user, self._base, self._tokenizer, self._base_key[0]
                )
            except AdapterLoadError as e:
                raise EngineError(str(e)) from e
            if self._model is None:
                self._model = get_peft_model(self._base, adapter.config, adapter_name=user)
            else:
                self._model.add_adapter(user, adapter.config)
            result = set_peft_model_state_dict(self._model, adapter.state, adapter_name=user)
            missing = [k for k in result.missing_keys if f".{user}." in k]
            if missing or result.unexpected_keys:
                self._model.delete_adapter(user)
                raise EngineError(
                    f"adapter {user!r}: tensors missing {missing[:3]} / unexpected "
                    f"{result.unexpected_keys[:3]}"
                )
            self._model.to(self.device).eval()
            self._forget_layers()
            self._loaded[user] = self.registry.get(user)
            logger.info("loaded adapter %s (%d loaded)", user, len(self._loaded))
        while len(self._loaded) > self.max_loaded_adapters:
            victim = next((a for a in self._loaded if a not in users), None)
            if victim is None:
                break  # the blend itself needs more than the cap: allow it for now
            self._evict(victim)

    def _evict(self, adapter_id: str) -> None:
        self._unfuse()
        self._model.delete_adapter(adapter_id)
        self._forget_layers()
        del self._loaded[adapter_id]
        for key in [k for k in self._dense_cache if adapter_id in Blend.parse(k).users]:
            del self._dense_cache[key]
        logger.info("evicted adapter %s", adapter_id)

    def _forget_layers(self) -> None:
        """peft added or removed an adapter: layer list, scale slots and active set are stale."""
        self._layers = self._slots = self._active = self._active_users = None
        self._adapters_on = None

    def _lora_layers(self) -> list[tuple[str, torch.nn.Module]]:
        if self._layers is None:
            self._layers = find_lora_layers(self._model)
            self._slots = scale_slots(self._layers)
        return self._layers

    # ------------------------------------------------------------------ blend state
    def _dense_delta(self, blend: Blend) -> dict[str, torch.Tensor]:
        """Merged delta per layer, in the layout of the base weight; cached by blend id."""
        if blend.id in self._dense_cache:
            self._dense_cache.move_to_end(blend.id)
            return self._dense_cache[blend.id]
        deltas = dense_deltas(self._lora_layers(), blend)
        self._dense_cache[blend.id] = deltas
        while len(self._dense_cache) > DENSE_CACHE_SIZE:
            self._dense_cache.popitem(last=False)
        return deltas

    def _fuse(self, blend: Blend) -> None:
        if self._fused == blend.id:
            return
        layers = self._lora_layers()
        if blend.method == "live":  # low rank: one addmm per layer, no dense delta
            self._weights.fuse_low_rank(layers, blend.weights)
        else:
            self._weights.fuse_dense(layers, self._dense_delta(blend))
        self._fused = blend.id

    def _unfuse(self) -> None:
        if self._fused is None:
            return
        self._weights.restore(self._lora_layers())
        self._fused = None

    def _enable_adapters(self, on: bool) -> None:
        """Switch the LoRA branches of every layer on or off (off costs nothing per token, unlike
        `adapter_names=["__base__"]`, whose forward hooks walk all modules at every step)."""
        if self._adapters_on != on:
            for _, layer in self._lora_layers():
                layer.enable_adapters(on)
            self._adapters_on = on

    def _activate(self, blend: Blend, mode: str) -> None:
        """Make the model compute `blend` in `mode` ("live", "fused" or "output")."""
        if mode == "fused":
            self._fuse(blend)
            self._enable_adapters(False)  # the base layers alone compute the fused blend
            return
        self._unfuse()
        self._enable_adapters(True)
        if self._active == (mode, blend.id):
            return  # scales and active set are already this blend's (a live re-step is free)
        self._lora_layers()
        if mode == "live" and self._active_users != blend.users:
            self._model.base_model.set_adapter(list(blend.users), inference_mode=True)
            self._active_users = blend.users
        # Output mode selects adapters per row (`adapter_names`) and runs each at scale 1.
        set_scales(
            self._slots, blend.weights if mode == "live" else ((u, 1.0) for u in blend.users)
        )
        self._active = (mode, blend.id)

    def _forward(self, ids, cache, adapter_names):
        kwargs = {"adapter_names": adapter_names} if adapter_names is not None else {}
        # logits_to_keep=1: only the last position's logits are used (the prompt's would cost
        # one lm_head pass each on the first step).
        out = self._model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1, **kwargs)
        return out.logits[:, -1, :].float(), out.cache

    # ------------------------------------------------------------------ requests
    def _as_blend(self, blend) -> Blend:
        try:
            if isinstance(blend, Mapping):
                return Blend.from_weights(blend)
            if isinstance(blend, str):
                return Blend.parse(blend)
        except BlendError as e:
            raise EngineError(str(e)) from e
        if not isinstance(blend, Blend):
            raise EngineError(f"expected a Blend, got {type(blend).__name__}")
        return blend

    def _prepare(self, blend, prompt: str, params: SamplingParams):
        """Validate a request and pick its mode; returns (blend, prompt ids, mode)."""
        blend = self._as_blend(blend)
        if not isinstance(params, SamplingParams):
            raise EngineError(f"params must be SamplingParams, got {type(params).__name__}")
        if not isinstance(prompt, str):
            raise EngineError(f"prompt must be a string, got {type(prompt).__name__}")
        with self._lock:
            self._ensure_base()
            self._check_users(blend)
            self._ensure_adapters(blend.users)
            if blend.method in OUTPUT_METHODS:
                mode = "output"
            elif blend.method == "live":
                last, count = self._streak
                count = count + 1 if last == blend.id else 1
                self._streak = (blend.id, count)
                fuse = 0 < self.fuse_after_requests <= count
                mode = "fused" if fuse else "live"
            else:
                mode = "fused"
        tok = self._tokenizer
        ids = [tok.eos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"]
        limit = self._base.config.n_positions if hasattr(self._base.config, "n_positions") else 0
        limit = limit or getattr(self._base.config, "max_position_embeddings", 1024)
        if len(ids) + params.max_new_tokens > limit:
            raise EngineError(
                f"prompt too long: {len(ids) - 1} tokens + max_new_tokens "
                f"{params.max_new_tokens} exceed the model's {limit - 1}-token window"
            )
        return blend, ids, mode

    def stream(self, blend: Blend, prompt: str, params: SamplingParams) -> Iterator[list[Sample]]:
        """Yield all samples (partial text) after each new token; the last yield is final.

        The request is validated here, before the first token, so errors raise at the call.
        """
        blend, prompt_ids, mode = self._prepare(blend, prompt, params)
        return self._decode(blend, prompt_ids, mode, params)

    def _decode(self, blend: Blend, prompt_ids: list[int], mode: str, params: SamplingParams):
        users, n = blend.users, params.num_samples
        with_base = blend.method == "contrast"
        # Output mode: row i runs adapter i. Live runs the active adapters, fused none of them.
        row_names = list(users) + ([BASE] if with_base else []) if mode == "output" else [None]
        rows = len(row_names)
        adapter_names = None if row_names == [None] else row_names * n
        weights = torch.tensor([w for _, w in blend.weights], device=self.device)
        generator = torch.Generator().manual_seed(params.seed)
        tok = self._tokenizer
        ids = torch.tensor([prompt_ids] * (n * rows), device=self.device)
        cache = None
        new_ids: list[list[int]] = [[] for _ in range(n)]
        speakers: list[list[str | None]] = [[] for _ in range(n)]
        texts, done = [""] * n, [False] * n
        for _ in range(params.max_new_tokens):
            with self._lock, torch.inference_mode():
                self._ensure_adapters(users)  # another request may have evicted one
                self._activate(blend, mode)
                logits, cache = self._forward(ids, cache, adapter_names)
            if mode == "output":
                scores, weighted = combine_outputs(
                    logits.view(n, rows, -1), blend.method, weights, with_base
                )
            else:
                scores, weighted = logits.log_softmax(dim=-1), None
            chosen = sample_next(scores, params, generator)
            for i in range(n):
                if done[i]:
                    continue
                token = int(chosen[i])
                if token == tok.eos_token_id:
                    done[i] = True
                    continue
                new_ids[i].append(token)
                who = None
                if weighted is not None:
                    who = users[int(weighted[i, :, token].argmax())]
                speakers[i].append(who)
                texts[i] = tok.decode(new_ids[i])
                if params.stop_at_newline and "\n" in texts[i]:
                    texts[i] = texts[i].split("\n", 1)[0]
                    done[i] = True
            yield [
                self._sample(new_ids[i], speakers[i], texts[i], params.stop_at_newline)
                for i in range(n)
            ]
            if all(done):
                break
            ids = chosen.repeat_interleave(rows)[:, None]

    def _sample(self, ids: list[int], speakers: list, text: str, cut: bool) -> Sample:
        tokens, kept = [], []
        for token, who in zip(ids, speakers, strict=True):
            piece = self._tokenizer.decode([token])
            if cut and "\n" in piece:  # drop the rest of the token that held the newline
                if piece.split("\n", 1)[0]:
                    tokens.append(piece.split("\n", 1)[0])
                    kept.append(who)
                break
            tokens.append(piece)
            kept.append(who)
        return Sample(text=text, tokens=tokens, speakers=kept)

    def generate(self, blend: Blend, prompt: str, params: SamplingParams) -> list[Sample]:
        samples: list[Sample] = []
        for samples in self.stream(blend, prompt, params):  # noqa: B007
            pass
        return samples

    def next_token_logprobs(self, blend: Blend, prompt: str) -> torch.Tensor:
        """Log-probabilities [vocab] of the blend's next token after EOS + prompt (no sampling)."""
        params = SamplingParams(max_new_tokens=1)
        blend, prompt_ids, mode = self._prepare(blend, prompt, params)
        ids = torch.tensor([prompt_ids], device=self.device)
        with self._lock, torch.inference_mode():
            self._ensure_adapters(blend.users)
            self._activate(blend, mode)
            if mode == "output":
                names = list(blend.users) + ([BASE] if blend.method == "contrast" else [])
                logits, _ = self._forward(ids.repeat(len(names), 1), None, names)
                weights = torch.tensor([w for _, w in blend.weights], device=self.device)
                scores, _ = combine_outputs(
                    logits[None], blend.method, weights, blend.method == "contrast"
                )
                return scores[0]
            logits, _ = self._forward(ids, None, None)
            return logits[0].log_softmax(dim=-1)

    # ------------------------------------------------------------------ export
    def export(self, blend: Blend, entry_id: str | None = None, rank: int | None = 16) -> Entry:
        """Save `blend` as one standard PEFT LoRA folder and register it as a cyborg entry.

        `rank=None` keeps the full rank (exact). Output-space blends cannot be exported.
        """
        blend = self._as_blend(blend)
        if blend.method in OUTPUT_METHODS:
            raise EngineError(
                f"method {blend.method!r} mixes outputs at every token; it cannot be saved as one "
                "adapter (export a weight-space blend instead)"
            )
        if len(blend.users) < 2:
            raise EngineError("a cyborg needs at least two users")
        if rank is not None and (not isinstance(rank, int) or rank < 1):
            raise EngineError(f"rank must be a positive integer or None, got {rank!r}")
        with self._lock:
            self._ensure_base()
            self._check_users(blend)
            self._ensure_adapters(blend.users)
            handles = [h for u in blend.users for h in self.registry.get(u).handles]
            try:
                entry_id = entry_id or id_from_handles(handles)
            except RegistryError as e:
                raise EngineError(str(e)) from e
            if entry_id in self.registry:
                raise EngineError(f"{entry_id!r} is already in the zoo; pick another entry_id")
            entry = export_blend(
                self.registry_path,
                self.registry,
                self._lora_layers(),
                blend,
                entry_id,
                rank,
                self._base_key,
                self._tokenizer,
            )
            self.refresh()
            return entry
