"""A tiny offline zoo for Space and engine tests: LoRA adapters with non-zero B on the tiny GPT-2.

    from tiny_zoo import build_tiny_zoo
    registry_path = build_tiny_zoo(tmp_path, tiny_model_dir)   # alice, bob, carol

Each adapter is a real peft folder (`init_lora_weights=False`, so B != 0 and each adapter really
changes the logits; a fresh LoRA would be a no-op and prove nothing), registered as a `user` entry
with post stats and perplexities. One display name is hostile HTML, to test escaping.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from zoo.registry import Entry, LoraSettings, PostStats, file_checksum, register_entry

TINY_USERS = {
    # id: (display name, stats(downloaded, retweets, short, kept), base ppl, adapter ppl)
    "alice": ("Alice A.", (120, 10, 30, 80), 410.0, 95.5),
    "bob": ("Bob <b>Builder</b>", (200, 50, 50, 100), 410.0, 120.25),
    "carol": ("<script>alert('carol')</script>", (90, 0, 20, 70), 410.0, 88.0),
}
TARGETS = ["c_attn", "c_proj", "c_fc"]


def save_tiny_adapter(base_dir: Path, out_dir: Path, seed: int, r: int = 4) -> Path:
    """A LoRA adapter with random non-zero A and B (scaled so that it moves the logits)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    config = LoraConfig(
        r=r,
        lora_alpha=2 * r,
        target_modules=TARGETS,
        fan_in_fan_out=True,
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    tokenizer.save_pretrained(str(out_dir))
    eos = tokenizer.eos_token_id
    generation = {
        "do_sample": True,
        "top_p": 0.95,
        "max_new_tokens": 40,
        "eos_token_id": eos,
        "pad_token_id": eos,
    }
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2))
    return out_dir


def build_tiny_zoo(root: Path, base_dir: Path, users: tuple[str, ...] = tuple(TINY_USERS)) -> Path:
    """Write `<root>/registry.json` and `<root>/adapters/<id>/` for `users`; return the registry."""
    root = Path(root)
    registry_path = root / "registry.json"
    for seed, user in enumerate(users, start=1):
        name, (downloaded, retweets, short, kept), base_ppl, adapter_ppl = TINY_USERS[user]
        folder = save_tiny_adapter(base_dir, root / "adapters" / user, seed=seed)
        entry = Entry(
            id=user,
            kind="user",
            handles=[user],
            display_names=[name],
            base_model=str(base_dir),
            source="jsonl",
            stats={user: PostStats(downloaded, retweets, short, kept)},
            lora=LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=list(TARGETS)),
            metrics={"base_perplexity": base_ppl, "adapter_perplexity": adapter_ppl},
            adapter_path=f"adapters/{user}",
            checksum=file_checksum(folder / "adapter_model.safetensors"),
        )
        register_entry(registry_path, entry)
    return registry_path
