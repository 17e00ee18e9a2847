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


def micro_pretrain(**overrides):
    """A `PretrainConfig` for a 1-layer, 32-wide GPT-2 that pretrains in seconds on CPU."""
    from training.pretrain import PretrainConfig

    settings = dict(
        vocab_size=300,
        n_layer=1,
        n_head=2,
        n_embd=32,
        steps=30,
        batch_size=4,
        learning_rate=1e-2,
        warmup_steps=3,
        max_chars=30_000,
        eval_batches=4,
        device="cpu",
    )
    settings.update(overrides)
    return PretrainConfig(**settings)


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


@pytest.fixture(scope="module")
def blend_zoo(tmp_path_factory, tiny_model_dir) -> Path:
    """`_adapters.build_zoo` (alice, bob, carol, alice_twin) once per module: its registry path."""
    from _adapters import build_zoo

    return build_zoo(tmp_path_factory.mktemp("blend-zoo") / "zoo", tiny_model_dir)


@pytest.fixture
def zoo_copy(blend_zoo, tmp_path) -> Path:
    """A private copy of `blend_zoo` a test may break or write to: its registry path."""
    shutil.copytree(blend_zoo.parent, tmp_path / "zoo")
    return tmp_path / "zoo" / "registry.json"


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    """The tiny model loaded by `zoo.loading.load_base`: (model, tokenizer)."""
    from zoo.loading import load_base

    return load_base(str(tiny_model_dir))


@pytest.fixture(scope="module")
def good_adapter(tmp_path_factory, tiny_model_dir) -> Path:
    """A valid LoRA folder on the tiny model (`_adapters.make_adapter`, seed 1)."""
    from _adapters import make_adapter

    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("good") / "alice", seed=1)


@pytest.fixture(scope="module")
def http_server():
    """One `_http.LocalServer` per module, serving from a daemon thread."""
    import threading

    from _http import LocalServer

    local = LocalServer()
    thread = threading.Thread(target=local.httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield local
    local.httpd.shutdown()
    local.httpd.server_close()


@pytest.fixture
def server(http_server, monkeypatch):
    """The module's server with no routes and no requests yet; no proxy for 127.0.0.1."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    http_server.routes.clear()
    http_server.requests.clear()
    return http_server


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
