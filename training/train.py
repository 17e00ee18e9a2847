"""Fetch one account's posts, clean them, train a LoRA adapter on GPT-2 and register it in the zoo.

    huggingtweets train --source bluesky --user jay.bsky.team
    huggingtweets train --data data/jay_bsky_team --overwrite          # re-use a previous fetch
    # tiny CPU example (seconds): a local base folder, e.g. from `huggingtweets pretrain`
    huggingtweets train --source fortune --user zippy --base-model /tmp/tiny-base --max-steps 20

The recipe (`run`): seed -> posts -> clean -> split -> W&B preprocess run -> tokenizer + base ->
LoRA -> Trainer -> base vs adapter perplexity -> adapter folder -> registry entry -> card.

The adapter folder `<registry folder>/adapters/<id>/` is written to a temporary sibling and renamed
into place, and the registry entry is added only after that, so an interrupted run (Ctrl-C
included) leaves neither a half adapter nor an entry. It loads with plain transformers:

    from transformers import GenerationConfig, pipeline
    pipe = pipeline("text-generation", model="adapters/<id>")   # base + adapter from the folder
    sampling = GenerationConfig.from_pretrained("adapters/<id>")  # do_sample, top_p 0.95, 40 tokens
    pipe(pipe.tokenizer.eos_token + "My dream is", generation_config=sampling)

Posts were trained as `EOS post EOS post ...`, so a prompt starts with EOS (huggingtweets' prompt
prefix); pass it in the text as above or as `pipe(prompt, prefix=pipe.tokenizer.eos_token)`.
The pipeline takes the base model's generation config, hence `generation_config=` above.

W&B: `WANDB_MODE=disabled` turns it off. If WANDB_MODE is unset and no API key or login is found,
the runs are written offline (`wandb sync` uploads them later) instead of prompting for a login.
"""

from __future__ import annotations

import json
import logging
import math
import netrc
import os
import shutil
import tempfile
import time
import uuid
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from zoo.registry import (
    DEFAULT_BASE_MODEL,
    Entry,
    LoraSettings,
    file_checksum,
    id_from_handles,
    load_registry,
    register_entry,
)

logger = logging.getLogger(__name__)

TARGET_MODULES = ["c_attn", "c_proj", "c_fc"]  # GPT-2 attention qkv, projections and MLP
EXAMPLE_PROMPTS = ["My dream is", "I think that", "The best thing about today is", "Why"]


@dataclass
class TrainConfig:
    source: str = field(default="", metadata={"help": "post source (see `huggingtweets fetch`)"})
    user: str = field(
        default="", metadata={"help": "account, file path or fortune category for --source"}
    )
    data: str = field(
        default="", metadata={"help": "folder of a previous fetch, instead of --source/--user"}
    )
    handle: str = field(default="", metadata={"help": "registry id / handle override"})
    limit: int | None = field(
        default=None, metadata={"help": "most posts to download (as `huggingtweets fetch`)"}
    )
    base_url: str = field(
        default="",
        metadata={"help": "API base URL for bluesky/mastodon (as `huggingtweets fetch`)"},
    )
    data_dir: str = field(default="data", metadata={"help": "where fetched posts are saved"})
    registry: str = field(default="registry.json", metadata={"help": "registry file to add to"})
    base_model: str = field(
        default=DEFAULT_BASE_MODEL, metadata={"help": "base model: Hub id or local folder"}
    )
    base_revision: str | None = field(
        default=None, metadata={"help": "base model branch, tag or commit"}
    )
    r: int = field(default=8, metadata={"help": "LoRA rank"})
    alpha: int = field(default=16, metadata={"help": "LoRA alpha (scale = alpha / r)"})
    dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    learning_rate: float = field(default=2e-4, metadata={"help": "peak AdamW learning rate"})
    epochs: float = field(default=4.0, metadata={"help": "passes over the training posts"})
    max_steps: int | None = field(
        default=None,
        metadata={"help": "train exactly this many optimizer steps (overrides --epochs)"},
    )
    batch_size: int = field(default=8, metadata={"help": "blocks per optimizer step"})
    block_size: int | None = field(
        default=None, metadata={"help": "tokens per training block (default min(128, model max))"}
    )
    validation_fraction: float = field(
        default=0.1, metadata={"help": "share of posts held out for perplexity"}
    )
    seed: int = field(default=0, metadata={"help": "seed for the split, LoRA init and batches"})
    drop_replies: bool = field(default=False, metadata={"help": "leave replies out"})
    overwrite: bool = field(default=False, metadata={"help": "re-train an id already registered"})
    wandb_project: str = field(default="huggingtweets", metadata={"help": "W&B project"})
    wandb_entity: str | None = field(default=None, metadata={"help": "W&B user or team"})
    write_card: bool = field(default=True, metadata={"help": "write README.md + predictions.png"})
    device: Literal["auto", "cpu", "cuda"] = field(
        default="auto", metadata={"help": "'auto' uses CUDA when present"}
    )

    def __post_init__(self):
        if self.data and (self.source or self.user):
            raise ValueError("give either --data or --source/--user, not both")
        if not self.data and not (self.source and self.user):
            raise ValueError(
                f"need --source and --user (got source={self.source!r}, user={self.user!r}) "
                "or --data <folder of a previous fetch>"
            )
        if self.data and (self.limit or self.base_url):
            raise ValueError("--limit and --base-url apply to a fetch, not to --data")
        if self.data and not Path(self.data).is_dir():
            raise ValueError(f"--data {self.data!r} is not a folder")
        if self.handle:
            id_from_handles([self.handle])  # RegistryError (a ValueError) names the bad handle
        checks = {
            "r": self.r >= 1,
            "alpha": self.alpha > 0,
            "dropout": 0.0 <= self.dropout < 1.0,
            "learning_rate": math.isfinite(self.learning_rate) and 0 < self.learning_rate < 1,
            "epochs": math.isfinite(self.epochs) and self.epochs > 0,
            "max_steps": self.max_steps is None or self.max_steps >= 1,
            "batch_size": self.batch_size >= 1,
            "block_size": self.block_size is None or self.block_size >= 2,
            "validation_fraction": 0.0 < self.validation_fraction < 0.5,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"bad {name}: {getattr(self, name)!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if not self.base_model:
            raise ValueError("base_model must be a Hub id or a local folder")


def run(cfg: TrainConfig) -> Entry:
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.clean import check_enough_text, clean_posts
    from training.dataset import build_dataset, dataset_dir, save_dataset, tokenize_dataset
    from training.evaluate import evaluate_loss
    from training.fetch import FetchConfig, load_user_posts
    from training.fetch import run as fetch
    from zoo.loading import resolve_device

    device = resolve_device(cfg.device)
    transformers.set_seed(cfg.seed)

    # Posts: fetch (and keep a copy under data_dir) or re-use a previous fetch.
    if cfg.handle:
        refuse_existing(cfg.registry, id_from_handles([cfg.handle]), cfg.overwrite)
    if cfg.data:
        user_posts = load_user_posts(cfg.data)
    else:  # the fetch stage itself: same options, validation and on-disk copy under data_dir
        file_source = cfg.source in ("jsonl", "csv", "x-archive")
        fetch_cfg = FetchConfig(
            source=cfg.source,
            user=cfg.user,
            data_dir=cfg.data_dir,
            limit=cfg.limit,
            handle=cfg.handle if file_source else "",
            base_url=cfg.base_url,
        )
        user_posts = load_user_posts(fetch(fetch_cfg))
    profile = user_posts.profile
    handle = (cfg.handle or profile.handle).lstrip("@")
    entry_id = id_from_handles([handle])
    refuse_existing(cfg.registry, entry_id, cfg.overwrite)  # before any heavy work

    cleaned = clean_posts(user_posts.posts, drop_replies=cfg.drop_replies)
    check_enough_text(handle, cleaned)

    # Tokenizer first: the split text carries its EOS.
    base_model = resolve_base(cfg.base_model)
    tokenizer = AutoTokenizer.from_pretrained(base_model, revision=cfg.base_revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 has none; padding is masked anyway
    dataset = build_dataset(cleaned.texts, tokenizer.eos_token, cfg.validation_fraction, cfg.seed)
    save_dataset(dataset, dataset_dir(cfg.data_dir, entry_id))

    wandb_mode = resolve_wandb_mode()
    wandb_ids: dict[str, str] = {}
    if wandb_mode:
        wandb_ids["project"] = cfg.wandb_project
        if cfg.wandb_entity:
            wandb_ids["entity"] = cfg.wandb_entity
        artifacts = log_preprocess_run(cfg, wandb_mode, entry_id, user_posts, cleaned, dataset)
        wandb_ids["preprocess_run"] = artifacts.pop("run_id")

    model = AutoModelForCausalLM.from_pretrained(base_model, revision=cfg.base_revision)
    max_positions = model.config.max_position_embeddings
    block_size = cfg.block_size or min(128, max_positions)
    if block_size > max_positions:
        raise ValueError(f"block_size {block_size} exceeds the model's {max_positions} positions")
    model = add_lora(model, cfg)
    blocks = tokenize_dataset(dataset, tokenizer, block_size)

    hyperparameters = {
        **{k: v for k, v in asdict(cfg).items() if k not in ("wandb_project", "wandb_entity")},
        "block_size": block_size,
        "base_model": base_model,
        "train_blocks": len(blocks["train"]),
        "validation_blocks": len(blocks["validation"]),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    train_run = (
        start_wandb_run(cfg, wandb_mode, entry_id, "train", hyperparameters)
        if wandb_mode
        else nullcontext()
    )
    with train_run as wandb_run:
        if wandb_run is not None:
            wandb_ids["train_run"] = wandb_run.id
            if wandb_run.offline:  # W&B records artifact lineage only online
                wandb_run.config.update({"inputs": [a.name for a in artifacts.values()]})
            else:
                for artifact in artifacts.values():
                    wandb_run.use_artifact(artifact.wait())

        with tempfile.TemporaryDirectory(prefix="huggingtweets-trainer-") as trainer_dir:
            trainer = make_trainer(
                model, tokenizer, blocks["train"], cfg, device, bool(wandb_mode), trainer_dir
            )
            start = time.perf_counter()
            trainer.train()
            train_seconds = time.perf_counter() - start

        model.eval()
        adapter = evaluate_loss(model, blocks["validation"], cfg.batch_size)
        with model.disable_adapter():
            base = evaluate_loss(model, blocks["validation"], cfg.batch_size)
        metrics = {
            "base_loss": base.loss,
            "base_perplexity": base.perplexity,
            "adapter_loss": adapter.loss,
            "adapter_perplexity": adapter.perplexity,
            "train_seconds": round(train_seconds, 3),
        }
        logger.info(
            "validation perplexity: base %.2f -> adapter %.2f (%d tokens)",
            base.perplexity,
            adapter.perplexity,
            adapter.tokens,
        )
        if wandb_run is not None:
            wandb_run.log({f"eval/{k}": v for k, v in metrics.items()})
            wandb_run.summary.update(metrics)
            log_examples(wandb_run, model, tokenizer)

        registry_root = Path(cfg.registry).resolve().parent
        entry = Entry(
            id=entry_id,
            kind="user",
            handles=[handle],
            display_names=[profile.display_name or handle],
            base_model=base_model,
            base_revision=cfg.base_revision,
            avatars=[profile.avatar_url] if profile.avatar_url else [],
            source=profile.source or cfg.source,
            stats={handle: cleaned.stats},
            lora=LoraSettings(
                r=cfg.r, alpha=cfg.alpha, dropout=cfg.dropout, target_modules=list(TARGET_MODULES)
            ),
            metrics=metrics,
            wandb=wandb_ids,
            adapter_path=f"adapters/{entry_id}",
        )
        # Hidden staging folder beside the final one: same filesystem, so the rename is atomic.
        adapters_dir = ensure_dir(registry_root / "adapters")
        with tempfile.TemporaryDirectory(prefix=f".{entry_id}.tmp-", dir=adapters_dir) as tmp:
            staging = Path(tmp) / entry_id
            save_adapter(model, tokenizer, staging)
            entry.checksum = file_checksum(staging / "adapter_model.safetensors")
            publish_adapter(
                staging, registry_root / entry.adapter_path, cfg.registry, entry, cfg.overwrite
            )
        logger.info("registered %s at %s", entry_id, registry_root / entry.adapter_path)

        if cfg.write_card:
            from cards import write_card

            write_card(cfg.registry, entry_id)
        if wandb_run is not None:
            log_adapter_artifact(wandb_run, entry_id, registry_root / entry.adapter_path, metrics)
    return entry


def resolve_base(base_model: str) -> str:
    """A local folder becomes an absolute path, so adapter_config.json works from any cwd."""
    path = Path(base_model).expanduser()
    return str(path.resolve()) if path.is_dir() else base_model


def ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def refuse_existing(registry_path: str | Path, entry_id: str, overwrite: bool) -> None:
    if not overwrite and entry_id in load_registry(registry_path):
        raise ValueError(
            f"{entry_id!r} is already in {registry_path}; pass --overwrite to re-train it "
            "or --handle to register under another id"
        )


def add_lora(model, cfg: TrainConfig):
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(TARGET_MODULES),
        fan_in_fan_out=True,  # GPT-2 stores its projections as Conv1D (in, out)
        revision=cfg.base_revision,
    )
    model = get_peft_model(model, lora)
    trainable, total = model.get_nb_trainable_parameters()
    logger.info("LoRA: %d trainable of %d parameters", trainable, total)
    return model


def make_trainer(model, tokenizer, train_blocks, cfg, device: str, report: bool, output_dir: str):
    import torch
    from transformers import Trainer, TrainingArguments, default_data_collator

    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    args = TrainingArguments(
        output_dir=output_dir,  # a temp folder: nothing is saved there (save_strategy="no")
        per_device_train_batch_size=cfg.batch_size,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,  # a float < 1 is a fraction of the steps
        weight_decay=0.0,
        logging_steps=max(1, min(10, (cfg.max_steps or 10) // 2)),
        save_strategy="no",
        eval_strategy="no",  # base vs adapter is measured once at the end
        report_to=["wandb"] if report else "none",
        seed=cfg.seed,
        bf16=bf16,
        fp16=device == "cuda" and not bf16,
        use_cpu=device == "cpu",
        dataloader_pin_memory=device == "cuda",
        disable_tqdm=False,
    )
    return Trainer(
        model=model,
        args=args,
        train_dataset=train_blocks,
        data_collator=default_data_collator,
        processing_class=tokenizer,
    )


def save_adapter(model, tokenizer, folder: Path) -> None:
    """adapter_model.safetensors + adapter_config.json + tokenizer + generation_config.json."""
    from transformers import GenerationConfig

    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    GenerationConfig(
        do_sample=True,
        top_p=0.95,
        max_new_tokens=40,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(str(folder))
    if not (folder / "adapter_model.safetensors").is_file():
        raise RuntimeError(f"peft did not write {folder / 'adapter_model.safetensors'}")


def publish_adapter(
    staging: Path, final: Path, registry_path: str | Path, entry: Entry, overwrite: bool
) -> None:
    """Rename `staging` to `final` and register `entry`; on any failure undo both halves.

    Registering re-checks `overwrite` under the registry lock, so an id registered by someone
    else while we trained is refused (RegistryError) rather than silently replaced.

    An old folder being overwritten is moved aside first and restored if registering fails.
    """
    aside = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    had_old = final.exists()
    if had_old:
        os.replace(final, aside)
    try:
        os.replace(staging, final)
        register_entry(registry_path, entry, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        if had_old:
            os.replace(aside, final)
        raise
    if had_old:
        shutil.rmtree(aside, ignore_errors=True)


# --- Weights & Biases (imported only on this path) -----------------------------------------------


def resolve_wandb_mode() -> str | None:
    """None when W&B is disabled; else the mode for `wandb.init` (offline without credentials)."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode == "disabled":
        return None
    if mode:
        return mode
    if has_wandb_credentials():
        return "online"
    logger.info("W&B: no API key or login found, logging offline (upload later with `wandb sync`)")
    return "offline"


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def start_wandb_run(cfg: TrainConfig, mode: str, entry_id: str, job: str, config: dict):
    import wandb

    return wandb.init(
        project=cfg.wandb_project,
        entity=cfg.wandb_entity,
        name=f"@{entry_id}-{job}",
        job_type=job,
        mode=mode,
        config=config,
    )


def log_preprocess_run(cfg, mode, entry_id, user_posts, cleaned, dataset) -> dict[str, Any]:
    """`@<id>-preprocess`: raw posts (jsonl) and the cleaned split as artifacts."""
    import wandb

    config = {"source": cfg.source, "user": cfg.user, "drop_replies": cfg.drop_replies}
    with (
        start_wandb_run(cfg, mode, entry_id, "preprocess", config) as wandb_run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        raw_path = Path(tmp) / "posts.jsonl"
        with raw_path.open("w", encoding="utf-8") as f:
            for post in user_posts.posts:
                f.write(json.dumps(asdict(post), ensure_ascii=False) + "\n")
        raw = wandb.Artifact(f"raw-dataset-{entry_id}", type="raw-dataset")
        raw.add_file(str(raw_path))
        wandb_run.log_artifact(raw)

        train = wandb.Artifact(
            f"train-dataset-{entry_id}", type="train-dataset", metadata=asdict(cleaned.stats)
        )
        for split, ds in dataset.items():
            split_path = Path(tmp) / f"{split}.jsonl"
            ds.to_json(str(split_path))
            train.add_file(str(split_path))
        wandb_run.log_artifact(train)
        wandb_run.summary.update(asdict(cleaned.stats))
        return {"raw": raw, "train": train, "run_id": wandb_run.id}


def log_examples(wandb_run, model, tokenizer) -> None:
    import torch
    import wandb

    table = wandb.Table(columns=["prompt", "prediction"])
    device = next(model.parameters()).device
    for prompt in EXAMPLE_PROMPTS:
        ids = tokenizer(tokenizer.eos_token + prompt, return_tensors="pt").to(device)
        with torch.no_grad():
            out = model.generate(
                **ids,
                do_sample=True,
                top_p=0.95,
                max_new_tokens=40,
                pad_token_id=ids.input_ids[0, 0],
            )
        table.add_data(
            prompt, tokenizer.decode(out[0, ids.input_ids.shape[1] :], skip_special_tokens=True)
        )
    wandb_run.log({"examples": table})


def log_adapter_artifact(wandb_run, entry_id: str, folder: Path, metrics: dict) -> None:
    import wandb

    artifact = wandb.Artifact(
        f"finetuned-model-{entry_id}", type="finetuned-model", metadata=metrics
    )
    artifact.add_dir(str(folder))
    wandb_run.log_artifact(artifact)
