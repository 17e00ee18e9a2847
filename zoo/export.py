"""Save a weight-space blend as one standard PEFT LoRA folder and register it as a cyborg entry.

`Engine.export` validates the request and holds the engine's lock; `export_blend` does the work on
the loaded LoRA layers:

- live / cat / task_arithmetic: the blend sum_i w_i s_i B_i A_i is low rank, so its best rank-k
  factors come from `zoo.blend.factorize_weighted_sum` (QR of the stacked factors + SVD of a small
  core) without ever forming a dense [out, in] matrix; exact at full rank;
- ties / dare_* / magnitude_prune: the dense merged delta (`merge_deltas`) is factored by SVD.

Every layer gets the same rank k and scaling 1 (lora_alpha = r = k), so the folder loads with
`PeftModel.from_pretrained` or `pipeline("text-generation", model=folder)`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from zoo.blend import Blend, factorize_dense, factorize_weighted_sum, merge_deltas
from zoo.layers import Layers, layer_index, lora_factors
from zoo.loading import WEIGHTS_NAME
from zoo.registry import (
    Entry,
    LoraSettings,
    Parent,
    PostStats,
    Registry,
    RegistryError,
    edit_registry,
    file_checksum,
    resolve_inside,
    validate_id,
)

LOW_RANK_METHODS = ("live", "cat", "task_arithmetic")  # the blend is a weighted sum of LoRAs


def export_factors(layers: Layers, blend: Blend, rank: int | None):
    """Per-layer (A, B) at one common rank k, with scaling 1 (alpha = r = k).

    Returns (peft state dict, targeted module paths, energy kept per layer, k, fan_in_fan_out).
    """
    found_layers = []
    for name, layer in layers:
        found = [(lora_factors(layer, u), w) for u, w in blend.weights]
        found = [(f, w) for f, w in found if f is not None]
        if found:
            found_layers.append((name, layer, found))
    if blend.method in LOW_RANK_METHODS:
        full = max(sum(f[0].shape[0] for f, _ in found) for *_, found in found_layers)
    else:
        full = max(
            min(f[1].shape[0], f[0].shape[1]) for *_, found in found_layers for f, _ in found
        )
    k = full if rank is None else min(rank, full)
    state, targets, energies, fan_in_fan_out = {}, set(), [], True
    for name, layer, found in found_layers:
        As = [f[0].float() for f, _ in found]
        Bs = [f[1].float() for f, _ in found]
        scaled = [w * f[2] for f, w in found]
        if blend.method in LOW_RANK_METHODS:
            A, B, energy = factorize_weighted_sum(As, Bs, scaled, k)
        else:
            deltas = [b @ a * f[2] for a, b, (f, _) in zip(As, Bs, found, strict=True)]
            merged = merge_deltas(
                deltas,
                [w for _, w in found],
                blend.method,
                blend.density,
                blend.seed,
                layer_index=layer_index(name),
            )
            A, B, energy = factorize_dense(merged, k, method="full")
        prefix = f"base_model.model.{name}"
        state[f"{prefix}.lora_A.weight"] = A.contiguous()
        state[f"{prefix}.lora_B.weight"] = B.contiguous()
        targets.add(name)
        energies.append(energy)
        fan_in_fan_out = layer.fan_in_fan_out
    return state, targets, energies, k, fan_in_fan_out


def write_folder(
    folder: Path, state, targets, k: int, fan_in_fan_out: bool, base_key, tokenizer
) -> None:
    """adapter_model.safetensors + adapter_config.json + tokenizer + generation_config.json."""
    from peft import LoraConfig
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    save_file({key: t.cpu() for key, t in state.items()}, str(folder / WEIGHTS_NAME))
    config = LoraConfig(
        r=k,
        lora_alpha=k,  # scale 1: the factors already hold the blend's scales
        lora_dropout=0.0,
        target_modules=sorted(targets),  # full module paths: exact matches only
        fan_in_fan_out=fan_in_fan_out,
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_key[0],
        revision=base_key[1],
    )
    config.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    eos = tokenizer.eos_token_id
    GenerationConfig(
        do_sample=True, top_p=0.95, max_new_tokens=40, eos_token_id=eos, pad_token_id=eos
    ).save_pretrained(str(folder))
    json.loads((folder / "adapter_config.json").read_text())  # written and parseable


def export_blend(
    registry_path: Path,
    registry: Registry,
    layers: Layers,
    blend: Blend,
    entry_id: str,
    rank: int | None,
    base_key: tuple[str, str | None],
    tokenizer,
) -> Entry:
    """Write `<zoo>/adapters/<entry_id>/` atomically and register the cyborg entry.

    The caller has checked the blend (a weight method, >= 2 loaded users) and that `entry_id` is
    free; its adapters are the LoRA layers in `layers`."""
    validate_id(entry_id)  # before any path is built from it: '..' or 'a/b' never reach disk
    parents = [registry.get(u) for u in blend.users]
    state, targets, energies, k, fan_in_fan_out = export_factors(layers, blend, rank)
    final = resolve_inside(registry.root, Path("adapters") / entry_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry_id}.", dir=final.parent))
    moved = False
    try:
        write_folder(tmp, state, targets, k, fan_in_fan_out, base_key, tokenizer)
        stats: dict[str, PostStats] = {}
        for parent in parents:
            stats.update(parent.stats)
        entry = Entry(
            id=entry_id,
            kind="cyborg",
            handles=[h for p in parents for h in p.handles],
            display_names=[d for p in parents for d in p.display_names],
            base_model=base_key[0],
            base_revision=base_key[1],
            avatars=[a for p in parents for a in p.avatars],
            source="blend",
            stats=stats,
            lora=LoraSettings(
                r=k,
                alpha=k,
                dropout=0.0,
                target_modules=sorted({t.rsplit(".", 1)[-1] for t in targets}),
            ),
            adapter_path=f"adapters/{entry_id}",
            checksum=file_checksum(tmp / WEIGHTS_NAME),
            parents=[Parent(u, w) for u, w in blend.weights],
            blend={
                "method": blend.method,
                "density": blend.density,
                "seed": blend.seed,
                "rank": k,
                "energy_kept": min(energies) if energies else 1.0,
                "blend_id": blend.id,
            },
        )
        # Check and publish under the registry lock, against the registry on disk (another
        # process may have registered this id since the engine read it). An existing folder is
        # never deleted: it may be another writer's adapter on its way to being registered.
        with edit_registry(registry_path) as current:
            if entry_id in current:
                raise RegistryError(f"{entry_id!r} is already in the zoo; pick another entry_id")
            if final.exists():
                raise RegistryError(
                    f"{final} exists but is not registered (a crashed run?); "
                    "remove it or pick another entry_id"
                )
            os.replace(tmp, final)
            moved = True
            current.entries[entry_id] = entry
    except BaseException:
        shutil.rmtree(final if moved else tmp, ignore_errors=True)
        raise
    return entry
