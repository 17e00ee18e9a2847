"""`huggingtweets demo`: build a small but real offline zoo, then open the Space on it.

    huggingtweets demo                              # first run: minutes on a laptop CPU; then seconds
    huggingtweets demo --build-only                 # build (or check) the zoo, print its summary
    huggingtweets demo --rebuild                    # pretrain the base and every adapter again
    huggingtweets demo --base openai-community/gpt2 # the real GPT-2, when a hub is reachable

No model hub is needed: the base is a tiny GPT-2 pretrained here from text shipped in packages
(`training.pretrain`: Shakespeare + fortunes that are not demo accounts), and each demo account is
a `fortune` category trained through exactly the path a real account takes
(`training.train.run(TrainConfig(source="fortune", user=...))`: fetch, clean, split, LoRA, metrics,
registry entry, card). The zoo lives in its own folder (default `$XDG_CACHE_HOME/huggingtweets/demo`,
i.e. `~/.cache/huggingtweets/demo`) with its own `registry.json`, `base/`, `adapters/` and `data/`.

Everything is cached: the base is kept while `<zoo>/base` is complete, and an account already
registered on the current base is not trained again, so a second `huggingtweets demo` goes
straight to the Space.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from training.pretrain import DEMO_ACCOUNTS, PretrainConfig, is_complete
from zoo.registry import Registry, load_registry

logger = logging.getLogger(__name__)

# A LoRA on a 5 M-parameter base needs a larger step than train's GPT-2 default to find a voice.
TINY_BASE_LEARNING_RATE = 1e-2  # 2e-3 left 3 of 8 adapters worse than another


def default_zoo_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "huggingtweets" / "demo"


@dataclass
class DemoConfig:
    zoo_dir: str = field(
        default="",
        metadata={"help": "demo zoo folder (default $XDG_CACHE_HOME/huggingtweets/demo)"},
    )
    accounts: list[str] = field(
        default_factory=lambda: list(DEMO_ACCOUNTS),
        metadata={"help": "fortune categories to train as demo accounts"},
    )
    base: str = field(
        default="",
        metadata={
            "help": "base model: '' = the tiny offline base pretrained into <zoo>/base, "
            "or a Hub id / folder such as openai-community/gpt2"
        },
    )
    rebuild: bool = field(default=False, metadata={"help": "pretrain and train everything again"})
    pretrain_steps: int = field(
        default=PretrainConfig.steps, metadata={"help": "optimizer steps for the tiny base"}
    )
    steps: int = field(
        default=100,
        metadata={
            "help": "optimizer steps per account: one budget for small and large accounts (at 2 "
            "epochs wisdom's 426 posts got a quarter of people's steps and lost to its adapter)"
        },
    )
    batch_size: int = field(default=8, metadata={"help": "blocks per adapter training step"})
    learning_rate: float | None = field(
        default=None,
        metadata={
            "help": f"LoRA learning rate (default {TINY_BASE_LEARNING_RATE} on the tiny base, "
            "train's own default on a real base)"
        },
    )
    r: int = field(default=8, metadata={"help": "LoRA rank"})
    seed: int = field(default=0, metadata={"help": "seed for pretraining and every adapter"})
    device: Literal["auto", "cpu", "cuda"] = field(
        default="auto", metadata={"help": "'auto' uses CUDA when present"}
    )
    write_cards: bool = field(
        default=True, metadata={"help": "write each adapter's README.md + predictions.png"}
    )
    build_only: bool = field(
        default=False, metadata={"help": "build the zoo and print its summary; no Space"}
    )
    host: str = field(default="127.0.0.1", metadata={"help": "address the Space listens on"})
    port: int = field(default=7860, metadata={"help": "port the Space listens on"})
    share: bool = field(default=False, metadata={"help": "create a public gradio.live link"})

    def __post_init__(self):
        self.zoo_dir = str(Path(self.zoo_dir or default_zoo_dir()).expanduser())
        if not self.accounts:
            raise ValueError("accounts must name at least one fortune category")
        if len(set(self.accounts)) != len(self.accounts):
            raise ValueError(f"accounts must not repeat: {self.accounts!r}")
        checks = {
            "pretrain_steps": self.pretrain_steps >= 1,
            "steps": self.steps >= 1,
            "batch_size": self.batch_size >= 1,
            "learning_rate": self.learning_rate is None or 0 < self.learning_rate < 1,
            "r": self.r >= 1,
            "port": 0 <= self.port < 65536,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"bad {name}: {getattr(self, name)!r}")

    @property
    def registry_path(self) -> Path:
        return Path(self.zoo_dir) / "registry.json"

    @property
    def base_dir(self) -> Path:
        return Path(self.zoo_dir) / "base"


# -------------------------------------------------------------------------------------- build


def build_base(cfg: DemoConfig, pretrain: PretrainConfig | None = None) -> tuple[str, bool]:
    """The base model id or folder, and whether it was (re)built by this call."""
    if cfg.base:
        return cfg.base, False
    if is_complete(cfg.base_dir) and not cfg.rebuild:
        logger.info("tiny base: cached at %s", cfg.base_dir)
        return str(cfg.base_dir.resolve()), False
    from training import pretrain as pretrain_stage

    if pretrain is None:
        pretrain = PretrainConfig(steps=cfg.pretrain_steps, seed=cfg.seed, device=cfg.device)
    # The demo accounts never leak into the base: each adapter has its own voice to learn.
    pretrain.exclude = sorted(set(pretrain.exclude) | set(cfg.accounts))
    pretrain.out_dir = str(cfg.base_dir)
    logger.info("pretraining the tiny offline base into %s", cfg.base_dir)
    return str(pretrain_stage.run(pretrain).resolve()), True


def is_cached(registry: Registry, account: str, base: str) -> bool:
    """Registered on this base with its adapter folder in place."""
    if account not in registry:
        return False
    entry = registry.get(account)
    folder = registry.root / (entry.adapter_path or "")
    return entry.base_model == base and (folder / "adapter_model.safetensors").is_file()


def build_demo_zoo(
    cfg: DemoConfig,
    pretrain: PretrainConfig | None = None,
    train_overrides: dict | None = None,
) -> Registry:
    """Pretrain the base (cached) and train every account not yet registered on it.

    `pretrain` replaces the base's default `PretrainConfig` and `train_overrides` sets extra
    `TrainConfig` fields (tests use both for microscopic sizes).
    """

    started = time.perf_counter()
    zoo = Path(cfg.zoo_dir)
    zoo.mkdir(parents=True, exist_ok=True)
    base, base_built = build_base(cfg, pretrain)
    registry = load_registry(cfg.registry_path)
    todo = [
        a for a in cfg.accounts if cfg.rebuild or base_built or not is_cached(registry, a, base)
    ]
    if not todo:
        logger.info("demo zoo: all %d accounts cached in %s", len(cfg.accounts), zoo)
        return registry

    learning_rate = cfg.learning_rate or (None if cfg.base else TINY_BASE_LEARNING_RATE)
    options = {"learning_rate": learning_rate} if learning_rate else {}
    options.update(train_overrides or {})
    # The demo is offline: W&B stays off unless the user chose a mode (train would otherwise
    # write offline runs into the current folder for every toy account).
    set_wandb = "WANDB_MODE" not in os.environ
    if set_wandb:
        os.environ["WANDB_MODE"] = "disabled"
    try:
        _train_accounts(cfg, todo, base, options)
    finally:
        if set_wandb:
            os.environ.pop("WANDB_MODE", None)
    logger.info(
        "demo zoo: trained %d of %d accounts in %.0f s",
        len(todo),
        len(cfg.accounts),
        time.perf_counter() - started,
    )
    return load_registry(cfg.registry_path)


def _train_accounts(cfg: DemoConfig, todo: list[str], base: str, options: dict) -> None:
    from tqdm.auto import tqdm

    from training.train import TrainConfig
    from training.train import run as train_account

    zoo = Path(cfg.zoo_dir)
    bar = tqdm(todo, desc="demo accounts", unit="account")
    for account in bar:
        bar.set_postfix(account=account)
        train_account(
            TrainConfig(
                source="fortune",
                user=account,
                base_model=base,
                registry=str(cfg.registry_path),
                data_dir=str(zoo / "data"),
                r=cfg.r,
                alpha=2 * cfg.r,
                max_steps=cfg.steps,  # Trainer: max_steps overrides epochs
                batch_size=cfg.batch_size,
                seed=cfg.seed,
                # A registered account is trained again only when stale (rebuild, new base).
                overwrite=True,
                write_card=cfg.write_cards,
                device=cfg.device,
                **options,
            )
        )


def format_summary(registry: Registry, accounts: list[str] | None = None) -> str:
    """One row per account: posts kept, base -> adapter perplexity, train seconds."""
    rows = [("account", "posts kept", "base ppl", "adapter ppl", "train s")]
    for entry in registry:
        if accounts is not None and entry.id not in accounts:
            continue
        m = entry.metrics
        rows.append(
            (
                entry.id,
                str(sum(s.kept for s in entry.stats.values())),
                f"{m.get('base_perplexity', float('nan')):.1f}",
                f"{m.get('adapter_perplexity', float('nan')):.1f}",
                f"{m.get('train_seconds', float('nan')):.1f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- evaluate


@dataclass
class PerplexityMatrix:
    """`values[i][j]`: held-out perplexity of adapter `adapters[i]` on account `accounts[j]`.
    The row "base" is the base model without any adapter."""

    adapters: list[str]
    accounts: list[str]
    values: list[list[float]]

    def own_is_best(self) -> dict[str, bool]:
        """Per account: is its own adapter the best (lowest perplexity) on its validation split?"""
        out = {}
        for j, account in enumerate(self.accounts):
            column = {a: self.values[i][j] for i, a in enumerate(self.adapters) if a != "base"}
            out[account] = account in column and min(column, key=column.get) == account
        return out

    def format(self) -> str:
        """A text table; the diagonal (adapter on its own account) is marked with '*'."""
        width = max(8, *(len(a) for a in self.accounts)) + 1
        name_w = max(len(a) for a in self.adapters)
        lines = [" " * name_w + "".join(a.rjust(width) for a in self.accounts)]
        for i, adapter in enumerate(self.adapters):
            cells = []
            for j, account in enumerate(self.accounts):
                mark = "*" if adapter == account else " "
                cells.append(f"{self.values[i][j]:.1f}{mark}".rjust(width))
            lines.append(adapter.ljust(name_w) + "".join(cells))
        return "\n".join(lines)


def perplexity_matrix(
    registry_path: str | Path,
    data_dir: str | Path | None = None,
    batch_size: int = 8,
    device: str = "cpu",
) -> PerplexityMatrix:
    """Held-out perplexity of every user adapter (and the bare base) on every account's
    validation split, as saved by `training.train` under `<data_dir>/<id>/dataset` (default
    `<registry folder>/data`, where the demo puts it). All entries must share one base."""
    from peft import PeftModel

    from training.dataset import dataset_dir, load_dataset, tokenize_dataset
    from training.evaluate import evaluate_loss
    from zoo.loading import load_base

    registry = load_registry(registry_path)
    entries = [e for e in registry if e.kind == "user"]
    if not entries:
        raise ValueError(f"{registry_path} has no user adapters")
    bases = {(e.base_model, e.base_revision) for e in entries}
    if len(bases) != 1:
        raise ValueError(f"adapters in {registry_path} use different bases: {sorted(bases)}")
    base_id, revision = bases.pop()
    data_dir = Path(data_dir) if data_dir else registry.root / "data"

    model, tokenizer = load_base(base_id, revision, device)
    block_size = min(128, model.config.max_position_embeddings)
    splits = {
        e.id: tokenize_dataset(load_dataset(dataset_dir(data_dir, e.id)), tokenizer, block_size)[
            "validation"
        ]
        for e in entries
    }
    accounts = list(splits)
    peft_model = None
    for e in entries:
        folder = str(registry.adapter_dir(e.id))
        if peft_model is None:
            peft_model = PeftModel.from_pretrained(model, folder, adapter_name=e.id)
        else:
            peft_model.load_adapter(folder, adapter_name=e.id)
    peft_model.to(device).eval()

    def row() -> list[float]:
        return [evaluate_loss(peft_model, splits[a], batch_size).perplexity for a in accounts]

    values = []
    with peft_model.disable_adapter():
        values.append(row())
    for e in entries:
        peft_model.set_adapter(e.id)
        values.append(row())
    return PerplexityMatrix(
        adapters=["base", *(e.id for e in entries)], accounts=accounts, values=values
    )


# --------------------------------------------------------------------------------------- run


def run(cfg: DemoConfig) -> str | None:
    """Build the demo zoo (cached), then serve the Space on it (unless `build_only`)."""
    registry = build_demo_zoo(cfg)
    summary = f"demo zoo {cfg.registry_path}\n" + format_summary(registry, cfg.accounts)
    if cfg.build_only:
        return summary
    logger.info("%s", summary)
    from training.cli import launch_space  # puts spaces/huggingtweets on sys.path, imports the UI

    logger.info("opening the Space on http://%s:%d", cfg.host, cfg.port)
    launch_space(cfg.registry_path, host=cfg.host, port=cfg.port, share=cfg.share)
    return None
