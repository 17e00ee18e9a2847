"""Test helpers: real PEFT adapters with non-zero B on the tiny model, a tmp zoo, a dense reference.

A fresh LoRA has B = 0 and proves nothing, so adapters are built with `init_lora_weights=False`
(random A and B) from a fixed seed. `reference_model` applies W0 + sum_i w_i dW_i by hand from the
saved A/B tensors, independently of peft and of the engine.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from zoo.registry import Entry, PostStats, file_checksum, register_entry

TARGETS = ("c_attn", "c_proj", "c_fc")


def make_adapter(base_dir: Path, out_dir: Path, seed: int, r: int = 4, alpha: int = 8,
                 targets=TARGETS) -> Path:  # fmt: skip
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    torch.manual_seed(seed)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=list(targets),
        init_lora_weights=False,
        fan_in_fan_out=True,
        task_type="CAUSAL_LM",
    )
    get_peft_model(base, config).save_pretrained(str(out_dir))
    AutoTokenizer.from_pretrained(str(base_dir)).save_pretrained(str(out_dir))
    return out_dir


def user_entry(entry_id: str, base_model: str, folder: Path | None, **extra) -> Entry:
    return Entry(
        id=entry_id,
        kind="user",
        handles=[entry_id],
        display_names=[entry_id.title()],
        base_model=base_model,
        stats={entry_id: PostStats(downloaded=10, retweets=2, short=3, kept=5)},
        adapter_path=f"adapters/{entry_id}" if folder is not None else None,
        checksum=file_checksum(folder / "adapter_model.safetensors") if folder else None,
        **extra,
    )


def build_zoo(root: Path, base_dir: Path) -> Path:
    """A zoo with alice, bob, carol (c_attn only, r=2) and alice_twin (alice's weights)."""
    adapters = root / "adapters"
    make_adapter(base_dir, adapters / "alice", seed=1)
    make_adapter(base_dir, adapters / "bob", seed=2)
    make_adapter(base_dir, adapters / "carol", seed=3, r=2, alpha=4, targets=("c_attn",))
    shutil.copytree(adapters / "alice", adapters / "alice_twin")
    registry = root / "registry.json"
    for name in ("alice", "bob", "carol", "alice_twin"):
        register_entry(registry, user_entry(name, str(base_dir), adapters / name))
    return registry


def reference_model(base_dir: Path, folders: dict[Path, float] | None = None, deltas=None):
    """The base with W0 + sum_i w_i (alpha_i / r_i) B_i A_i added by hand (or given deltas)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir)).eval()
    modules = dict(model.named_modules())
    with torch.no_grad():
        for folder, weight in (folders or {}).items():
            config = json.loads((folder / "adapter_config.json").read_text())
            scale = config["lora_alpha"] / config["r"]
            state = load_file(str(folder / "adapter_model.safetensors"))
            for key, A in state.items():
                if ".lora_A." not in key:
                    continue
                B = state[key.replace(".lora_A.", ".lora_B.")]
                name = key.removeprefix("base_model.model.").split(".lora_A.")[0]
                modules[name].weight += weight * scale * (B @ A).T  # Conv1D is [in, out]
        for name, delta in (deltas or {}).items():
            modules[name].weight += delta.T
    return model


def lora_layers(folder: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """{module name: (A, B, alpha / r)} of a saved adapter."""
    config = json.loads((folder / "adapter_config.json").read_text())
    state = load_file(str(folder / "adapter_model.safetensors"))
    out = {}
    for key, A in state.items():
        if ".lora_A." in key:
            name = key.removeprefix("base_model.model.").split(".lora_A.")[0]
            B = state[key.replace(".lora_A.", ".lora_B.")]
            out[name] = (A, B, config["lora_alpha"] / config["r"])
    return out


def logprobs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
