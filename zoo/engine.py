"""The cyborg engine: blend 2+ LoRA adapters of the zoo live and generate text from the blend.

    from zoo.blend import Blend
    from zoo.engine import Engine, SamplingParams
    engine = Engine("zoo/registry.json")
    blend = Blend.from_weights({"alice": 0.7, "bob": 0.3})
    print(engine.generate(blend, "I think", SamplingParams(seed=1))[0].text)

One base model is loaded once; adapters are loaded lazily into one PeftModel under their registry
ids (LRU, `max_loaded_adapters`). How a blend runs depends on its method:

- `live`: the blend runs as one extra LoRA adapter, its *slot* (`zoo.slots`): the users' factors
  stacked, [s_1 B_1 | ... | s_n B_n] @ [A_1; ...; A_n], with the weights w_i in one column-scale
  vector, which is exactly W0 + sum_i w_i dW_i with ONE LoRA branch per layer; a slider re-weight
  writes that vector (microseconds). Slots are pooled per user set (LRU). When the same blend
  comes again (2nd request in a row) its low-rank delta is fused into the base weights
  (`zoo.layers.BaseWeights`, one matmul per layer) and restored from a pristine copy when the
  blend changes.
- other weight methods (task_arithmetic, ties, dare_*, magnitude_prune, cat): the merged dense
  delta of each layer (`zoo.blend.merge_deltas`) is cached by blend id and fused into the base
  weights while that blend runs; the LoRA branches are switched off meanwhile.
- output methods (product, mixture, contrast): one batched forward per token with
  `adapter_names` (row i runs adapter i, plus a "__base__" row for contrast); the per-row
  distributions are combined and each sampled token is attributed to the user whose weighted
  probability for it was highest (`Sample.speakers`).

`generate_batch` serves many requests in one forward per token: slot blends (live, cat,
task_arithmetic) and output-space blends share the batch through `adapter_names` (blends of the
same users share one slot with one row of weights per batch row), prompts are left-padded with
an attention mask and per-row position ids, and each request keeps its own sampler, so it returns
the tokens `generate` would. Dense merges (ties, dare_*, magnitude_prune) have full-rank deltas and
run one after the other, fused. Concurrent `generate` calls from threads are not coalesced: they
take turns per token; `generate_batch` is the batching API.

Sampling and the output-space math live in `zoo.sampling`, export in `zoo.export`, the request
types (`SamplingParams`, `Sample`, `EngineError`) and each request's decoding state in `zoo.decoding`.

Isolation: every forward step runs under one lock together with setting up its own blend (scales,
active set or fused delta), so concurrent requests never see each other's blend; nothing like a
"current user" survives between steps.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from zoo.blend import OUTPUT_METHODS, Blend, BlendError
from zoo.decoding import (  # the request types are public here, as since the first engine
    MAX_NEW_TOKENS,  # noqa: F401
    MAX_NUM_SAMPLES,  # noqa: F401
    EngineError,
    Request,
    Sample,
    SamplingParams,
)
from zoo.export import LOW_RANK_METHODS, export_blend
from zoo.layers import (
    BaseWeights,
    dense_deltas,
    find_lora_layers,
    layer_index,  # noqa: F401  (public here since the first engine; tests use it)
)
from zoo.loading import AdapterLoadError, load_adapter, load_base, resolve_device
from zoo.registry import (
    Entry,
    Registry,
    RegistryError,
    id_from_handles,
    load_registry,
)
from zoo.sampling import combine_outputs  # noqa: F401  (tests import it from here)
from zoo.slots import SlotPool

logger = logging.getLogger(__name__)

FUSE_AFTER_REQUESTS = 2  # fuse a live blend into the base weights from its 2nd request in a row
DENSE_CACHE_SIZE = 2  # merged dense deltas kept (each is the size of the targeted base layers)


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
        self.device = torch.device(resolve_device(device))
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
        self._pool = SlotPool()  # live blends as one stacked LoRA adapter each (zoo.slots)
        self._active: tuple[str, ...] | None = None  # what set_adapter last activated
        self._adapters_on: bool | None = None  # LoRA layers enabled (off while a blend is fused)
        self._pieces: dict[int, str] = {}  # token id -> its decoded text

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

    @torch.inference_mode(False)  # also called inside decode steps: weights must be normal tensors
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
        self._pool.drop_user(self._model, adapter_id)  # slots hold copies of its factors
        self._model.delete_adapter(adapter_id)
        self._forget_layers()
        del self._loaded[adapter_id]
        for key in [k for k in self._dense_cache if adapter_id in Blend.parse(k).users]:
            del self._dense_cache[key]
        logger.info("evicted adapter %s", adapter_id)

    def _forget_layers(self) -> None:
        """peft added or removed an adapter: the layer list and the active set are stale."""
        self._layers = self._active = self._adapters_on = None

    def _lora_layers(self) -> list[tuple[str, torch.nn.Module]]:
        if self._layers is None:
            self._layers = find_lora_layers(self._model)
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

    def _set_active(self, names: tuple[str, ...]) -> None:
        if self._active != names:  # set_adapter walks every module: only when it changes
            self._model.base_model.set_adapter(list(names), inference_mode=True)
            self._active = names

    def _setup(self, requests: list[Request]) -> dict:
        """Make the model compute every request of one forward step (under the lock); returns
        the forward's extra kwargs (`adapter_names` for a mixed batch)."""
        self._ensure_adapters(tuple(sorted({u for r in requests for u in r.blend.users})))
        if requests[0].mode == "fused":  # runs alone: the base layers compute the fused blend
            self._fuse(requests[0].blend)
            self._enable_adapters(False)
            return {}
        self._unfuse()
        groups: dict[tuple[str, ...], list[Request]] = {}  # slot requests by user set
        for request in requests:
            if request.mode == "slot":
                groups.setdefault(request.blend.users, []).append(request)
        pinned: set[str] = set()
        for users, group in groups.items():
            slot, changed = self._pool.acquire(self._model, self._lora_layers(), users, pinned)
            if changed:
                self._model.eval()
                self._forget_layers()
            pinned.add(slot.name)
            for request in group:
                request.slot = slot.name
            if len(requests) == 1:
                slot.set_weights(group[0].blend.weights)
            else:  # rows of this slot, in batch order: one blend per row
                slot.set_rows(tuple(r.blend.weights for r in group for _ in range(r.num_rows)))
        self._enable_adapters(True)
        if len(requests) == 1 and requests[0].mode == "slot":
            self._set_active((requests[0].slot,))  # one LoRA branch per layer, no hooks
            return {}
        return {"adapter_names": [name for r in requests for name in r.row_names()]}

    def _forward(self, ids, cache, extra: dict):
        """One decode step. `adapter_names` (a mixed batch) reaches the LoRA layers through
        pre-forward hooks on the cached layer list, as peft does, without peft's two walks over
        every module per call."""
        names = extra.pop("adapter_names", None)
        hooks = []
        if names is not None:

            def inject(module, args, kwargs):
                return args, {**kwargs, "adapter_names": names}

            hooks = [
                layer.register_forward_pre_hook(inject, with_kwargs=True)
                for _, layer in self._lora_layers()
            ]
        try:
            # logits_to_keep=1: only the last position's logits are used (the prompt's would
            # cost one lm_head pass each on the first step).
            out = self._model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1, **extra)
        finally:
            for hook in hooks:
                hook.remove()
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

    def _prepare(self, blend, prompt: str, params: SamplingParams, batched: bool = False):
        """Validate a request and pick its mode ("slot", "fused" or "output")."""
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
            elif batched:  # a batch shares one forward: low-rank blends run as slots
                mode = "slot" if blend.method in LOW_RANK_METHODS else "fused"
            elif blend.method == "live":
                last, count = self._streak
                count = count + 1 if last == blend.id else 1
                self._streak = (blend.id, count)
                fuse = 0 < self.fuse_after_requests <= count
                mode = "fused" if fuse else "slot"
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
        return Request(blend, ids, mode, params, tok, self._decode_piece, self.device)

    def stream(self, blend: Blend, prompt: str, params: SamplingParams) -> Iterator[list[Sample]]:
        """Yield all samples (partial text) after each new token; the last yield is final.

        The request is validated here, before the first token, so errors raise at the call.
        """
        request = self._prepare(blend, prompt, params)
        return (request.samples() for _ in self._run([request]))

    def generate(self, blend: Blend, prompt: str, params: SamplingParams) -> list[Sample]:
        request = self._prepare(blend, prompt, params)
        for _ in self._run([request]):
            pass
        return request.samples()

    def generate_batch(
        self, requests: list[tuple[Blend, str, SamplingParams]]
    ) -> list[list[Sample]]:
        """Serve many (blend, prompt, params) requests in one batched decode; returns the samples
        of each request, as `generate` would (same seed -> same tokens).

        Low-rank weight blends (live, task_arithmetic, cat) run as blend slots and output-space
        blends as per-user rows, all in one forward per token (`adapter_names` per row, prompts
        left-padded). Dense merges (ties, dare_*, magnitude_prune) are full-rank deltas: as a slot
        they would cost more than the base layers, so they run one after the other, fused."""
        if not isinstance(requests, list | tuple) or any(
            not isinstance(r, tuple | list) or len(r) != 3 for r in requests
        ):
            raise EngineError("requests must be a list of (blend, prompt, params) tuples")
        prepared = [self._prepare(b, p, params, batched=True) for b, p, params in requests]
        batch = [r for r in prepared if r.mode != "fused"]
        while batch:  # groups holding at most as many user sets (slots) as the pool has slots
            sets = itertools.accumulate(
                ({r.blend.users} if r.mode == "slot" else set() for r in batch), set.union
            )
            size = sum(1 for users in sets if len(users) <= self._pool.max_slots)
            for _ in self._run(batch[:size]):
                pass
            batch = batch[size:]
        for request in prepared:
            if request.mode == "fused":
                for _ in self._run([request]):
                    pass
        return [r.samples() for r in prepared]

    def _decode_piece(self, token: int) -> str:
        """The text of one token, decoded once per token id (a decode call costs ~20 us)."""
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._tokenizer.decode([token])
        return piece

    def _run(self, requests: list[Request]) -> Iterator[None]:
        """Decode `requests` together, one forward per token for all; yields after each step.

        Row blocks follow the request order; prompts are left-padded (attention mask and position
        ids per row) only when their lengths differ, and a finished request's rows are dropped
        from the batch and its KV cache."""
        pad = self._tokenizer.eos_token_id
        longest = max(len(r.prompt_ids) for r in requests)
        rows = [[pad] * (longest - len(r.prompt_ids)) + r.prompt_ids for r in requests]
        ids = torch.tensor([rows[k] for k, r in enumerate(requests) for _ in range(r.num_rows)])
        ids = ids.to(self.device)
        mask = positions = None
        if any(len(r.prompt_ids) != longest for r in requests):
            real = [longest - len(r.prompt_ids) for r in requests for _ in range(r.num_rows)]
            mask = (torch.arange(longest)[None, :] >= torch.tensor(real)[:, None]).long()
            mask = mask.to(self.device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache, active = None, list(requests)
        while active:
            extra = {}
            if mask is not None:
                extra = {"attention_mask": mask, "position_ids": positions}
            with self._lock, torch.inference_mode():
                extra |= self._setup(active)
                logits, cache = self._forward(ids, cache, extra)
            chosen, start = [], 0
            for request in active:
                block = logits[start : start + request.num_rows]
                chosen.append(request.step(block, pad))
                start += request.num_rows
            yield
            keep = [i for i, r in enumerate(active) if not r.finished]
            if not keep:
                break
            if len(keep) < len(active):  # drop the finished requests' rows and their cache
                starts = list(itertools.accumulate((r.num_rows for r in active), initial=0))
                select = torch.tensor(
                    [j for i in keep for j in range(starts[i], starts[i + 1])], device=self.device
                )
                cache.batch_select_indices(select)
                if mask is not None:
                    mask, positions = mask[select], positions[select]
                active, chosen = [active[i] for i in keep], [chosen[i] for i in keep]
            ids = torch.cat(chosen)[:, None]
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1)
                positions = positions[:, -1:] + 1

    def next_token_logprobs(self, blend: Blend, prompt: str) -> torch.Tensor:
        """Log-probabilities [vocab] of the blend's next token after EOS + prompt (no sampling)."""
        request = self._prepare(blend, prompt, SamplingParams(max_new_tokens=1))
        ids = torch.tensor([request.prompt_ids] * request.num_rows, device=self.device)
        with self._lock, torch.inference_mode():
            logits, _ = self._forward(ids, None, self._setup([request]))
            return request.scores(logits)[0][0]

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
                # export_blend validates the id and checks it is free under the registry lock.
                entry = export_blend(
                    self.registry_path,
                    self.registry,
                    self._lora_layers(),
                    blend,
                    entry_id or id_from_handles(handles),
                    rank,
                    self._base_key,
                    self._tokenizer,
                )
            except RegistryError as e:
                raise EngineError(str(e)) from e
            self.refresh()
            return entry
