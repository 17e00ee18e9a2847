"""Shared test fixtures: a hermetic environment and a microscopic GPT-2 built in-process.

Nothing here touches the network. The tiny model is a 2-layer GPT-2 with its own byte-level BPE
tokenizer trained on `fixtures/corpus.txt`; it is saved with `save_pretrained` and every test loads it
back through the real `from_pretrained` path. `hub_model_id` also writes it into a temporary HF cache
so that code which loads a Hub id (`from_pretrained("huggingtweets-test/tiny-gpt2")`) works offline.
"""

import os
import shutil
import tempfile
from pathlib import Path

# Environment first: huggingface_hub, transformers, wandb and gradio read these at import time.
_TMP = Path(tempfile.mkdtemp(prefix="huggingtweets-tests-"))
os.environ.update(
    {
        "HF_HOME": str(_TMP / "hf"),
        "HF_HUB_CACHE": str(_TMP / "hf" / "hub"),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(_TMP / "hf" / "datasets"),
        "WANDB_MODE": "disabled",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(_TMP / "wandb"),
        "WANDB_CACHE_DIR": str(_TMP / "wandb" / "cache"),
        "WANDB_DATA_DIR": str(_TMP / "wandb" / "data"),
        "WANDB_CONFIG_DIR": str(_TMP / "wandb" / "config"),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TQDM_DISABLE": "1",
    }
)
for _var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY"):
    os.environ.pop(_var, None)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

FIXTURES = Path(__file__).parent / "fixtures"
TINY_HUB_ID = "huggingtweets-test/tiny-gpt2"
TINY_HUB_SHA = "0123456789abcdef0123456789abcdef01234567"


def build_tiny_model(out_dir: Path, seed: int = 0, n_layer: int = 2, n_embd: int = 64) -> Path:
    """Train a byte-level BPE on the fixture corpus and save a random tiny GPT-2 beside it."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    eos = "<|endoftext|>"
    bpe = ByteLevelBPETokenizer()
    bpe.train([str(FIXTURES / "corpus.txt")], vocab_size=512, min_frequency=2, special_tokens=[eos])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token=eos, eos_token=eos, unk_token=eos
    )
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=2,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Folder of a saved 2-layer GPT-2 + tokenizer; load it with `from_pretrained(str(path))`."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def hub_model_id(tiny_model_dir) -> str:
    """A Hub id that resolves offline to the tiny model, through a real HF cache layout."""
    repo = Path(os.environ["HF_HUB_CACHE"]) / ("models--" + TINY_HUB_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / TINY_HUB_SHA
    if not snapshot.exists():
        shutil.copytree(tiny_model_dir, snapshot)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(TINY_HUB_SHA)
    return TINY_HUB_ID


@pytest.fixture(scope="session")
def fixture_posts() -> list[str]:
    """The fixture corpus as a list of posts (one per line)."""
    return (FIXTURES / "corpus.txt").read_text(encoding="utf-8").splitlines()


def pytest_collection_modifyitems(config, items):
    """`gpu` tests are collected everywhere (nox -s gpu) and skipped, with a reason, without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
