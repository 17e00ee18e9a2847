"""The training stage end to end on the tiny GPT-2: one real LoRA run shared by the module."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import GenerationConfig, pipeline, set_seed

from training import train as train_module
from training.train import TrainConfig, resolve_wandb_mode, run
from zoo.registry import file_checksum, load_registry

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def posts_file(tmp_path_factory, fixture_posts) -> Path:
    path = tmp_path_factory.mktemp("posts") / "zippy.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in fixture_posts))
    return path


def make_config(tmp: Path, posts_file: Path, base_model: str, **overrides) -> TrainConfig:
    values = dict(
        source="jsonl",
        user=str(posts_file),
        data_dir=str(tmp / "data"),
        registry=str(tmp / "zoo" / "registry.json"),
        base_model=base_model,
        learning_rate=5e-3,
        max_steps=30,
        batch_size=8,
        write_card=False,
        device="cpu",
    )
    return TrainConfig(**(values | overrides))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, posts_file, hub_model_id):
    """Train once through the offline Hub id (the real `from_pretrained` path)."""
    tmp = tmp_path_factory.mktemp("run")
    cfg = make_config(tmp, posts_file, hub_model_id, write_card=True)
    entry = run(cfg)
    return cfg, entry


def test_adapter_beats_base_on_validation(trained):
    _, entry = trained
    m = entry.metrics
    assert set(m) == {
        "base_loss",
        "base_perplexity",
        "adapter_loss",
        "adapter_perplexity",
        "train_seconds",
    }
    # Random 2-layer base: ~6.25 nats/token; 30 LoRA steps at 5e-3 reach ~6.1.
    assert 6.0 < m["base_loss"] < 6.5
    assert m["adapter_loss"] < m["base_loss"] - 0.05
    assert m["adapter_perplexity"] == pytest.approx(torch.tensor(m["adapter_loss"]).exp().item())
    assert 0 < m["train_seconds"] < 30


def test_registry_entry_round_trips(trained):
    cfg, entry = trained
    registry = load_registry(cfg.registry)
    assert list(registry.entries) == ["zippy"]
    assert registry.get("zippy").to_dict() == entry.to_dict()
    assert entry.kind == "user" and entry.handles == ["zippy"]
    assert entry.adapter_path == "adapters/zippy"
    assert entry.base_model == "huggingtweets-test/tiny-gpt2"
    assert entry.source == "jsonl"
    assert entry.stats["zippy"].kept == entry.stats["zippy"].downloaded - entry.stats["zippy"].short
    assert entry.lora.r == 8 and entry.lora.target_modules == ["c_attn", "c_proj", "c_fc"]
    assert entry.wandb == {}  # WANDB_MODE=disabled in tests
    folder = registry.adapter_dir("zippy")
    assert entry.checksum == file_checksum(folder / "adapter_model.safetensors")
    assert (Path(cfg.data_dir) / "zippy" / "posts.jsonl").is_file()
    assert (Path(cfg.data_dir) / "zippy" / "dataset" / "dataset_dict.json").is_file()


def test_adapter_folder_contents(trained):
    cfg, _ = trained
    adapters = Path(cfg.registry).parent / "adapters"
    assert [p.name for p in adapters.iterdir()] == ["zippy"]  # no staging leftovers
    folder = adapters / "zippy"
    names = {p.name for p in folder.iterdir()}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "README.md",  # the card (write_card=True)
        "predictions.png",
    } <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "huggingtweets-test/tiny-gpt2"
    assert config["fan_in_fan_out"] is True and config["task_type"] == "CAUSAL_LM"
    assert sorted(config["target_modules"]) == ["c_attn", "c_fc", "c_proj"]
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["do_sample"] is True and generation["top_p"] == 0.95
    assert generation["max_new_tokens"] == 40
    assert generation["eos_token_id"] == generation["pad_token_id"] == 0
    weights = load_file(folder / "adapter_model.safetensors")
    assert len(weights) == 2 * 4 * 2  # A, B x (c_attn, attn.c_proj, c_fc, mlp.c_proj) x 2 layers
    assert all(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k)  # trained, not no-op


def generate(model: str, seed: int = 0) -> str:
    pipe = pipeline("text-generation", model=model)
    set_seed(seed)
    prompt = pipe.tokenizer.eos_token + "I think"
    out = pipe(prompt, max_new_tokens=20, do_sample=True, top_p=0.95)
    return out[0]["generated_text"][len(prompt) :]


@pytest.mark.parametrize("base", ["hub_id", "local_folder"])
def test_pipeline_loads_base_plus_adapter(trained, tiny_model_dir, tmp_path, base):
    cfg, _ = trained
    folder = Path(cfg.registry).parent / "adapters" / "zippy"
    base_model = "huggingtweets-test/tiny-gpt2"
    if base == "local_folder":
        copy = shutil.copytree(folder, tmp_path / "zippy")
        config = json.loads((copy / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = base_model = str(tiny_model_dir)
        (copy / "adapter_config.json").write_text(json.dumps(config))
        folder = copy
    pipe = pipeline("text-generation", model=str(folder))
    # The adapter's tensors are really loaded (transformers' load report is not to be trusted).
    saved = load_file(folder / "adapter_model.safetensors")
    state = pipe.model.state_dict()
    for key, value in saved.items():
        loaded = state[key.removeprefix("base_model.model.").replace(".weight", ".default.weight")]
        assert torch.equal(loaded, value), key
    with_adapter = generate(str(folder))
    assert with_adapter and with_adapter == generate(str(folder))  # same seed, same text
    assert with_adapter != generate(base_model)
    # Sampling settings travel in generation_config.json; pass them to the pipeline call.
    set_seed(0)
    text = pipe(
        "I think",
        prefix=pipe.tokenizer.eos_token,
        generation_config=GenerationConfig.from_pretrained(folder),
    )
    assert text[0]["generated_text"].startswith("I think")


def test_existing_id_is_refused_before_training(trained, posts_file, monkeypatch):
    cfg, _ = trained
    monkeypatch.setattr(train_module, "make_trainer", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ValueError, match="'zippy' is already in .*--overwrite"):
        run(cfg)
    with pytest.raises(ValueError, match="'zippy' is already in"):
        run(make_config(Path(cfg.registry).parents[1], posts_file, "unused", handle="Zippy"))


def test_interrupted_training_leaves_nothing(tmp_path, posts_file, tiny_model_dir, monkeypatch):
    calls = []
    original = transformers.Trainer.training_step

    def interrupt(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", interrupt)
    cfg = make_config(tmp_path, posts_file, str(tiny_model_dir), max_steps=10)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    assert len(calls) == 3
    assert len(load_registry(cfg.registry)) == 0
    adapters = tmp_path / "zoo" / "adapters"
    assert not adapters.exists() or not any(adapters.iterdir())


def test_interrupt_while_publishing_keeps_old_adapter(
    trained, posts_file, tiny_model_dir, monkeypatch
):
    cfg, entry = trained
    folder = Path(cfg.registry).parent / "adapters" / "zippy"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "register_entry", interrupt)
    again = TrainConfig(**(vars(cfg) | {"overwrite": True, "max_steps": 1}))
    with pytest.raises(KeyboardInterrupt):
        run(again)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in folder.parent.iterdir()] == ["zippy"]
    assert load_registry(cfg.registry).get("zippy").to_dict() == entry.to_dict()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"source": "", "user": ""}, "need --source and --user"),
        ({"data": "somewhere"}, "either --data or --source"),
        ({"r": 0}, "bad r: 0"),
        ({"dropout": 1.0}, "bad dropout"),
        ({"learning_rate": float("nan")}, "bad learning_rate"),
        ({"epochs": 0}, "bad epochs"),
        ({"max_steps": 0}, "bad max_steps"),
        ({"batch_size": 0}, "bad batch_size"),
        ({"block_size": 1}, "bad block_size"),
        ({"validation_fraction": 0.0}, "bad validation_fraction"),
        ({"handle": "a/b"}, "handle .a/b."),
        ({"device": "tpu"}, "device must be"),
    ],
)
def test_bad_config_values_are_named(overrides, message):
    values = {"source": "fortune", "user": "zippy"} | overrides
    with pytest.raises(ValueError, match=message):
        TrainConfig(**values)


def test_block_size_above_model_positions_is_refused(tmp_path, posts_file, tiny_model_dir):
    cfg = make_config(tmp_path, posts_file, str(tiny_model_dir), block_size=256)
    with pytest.raises(ValueError, match="block_size 256 exceeds the model's 128 positions"):
        run(cfg)


def test_wandb_mode_defaults_to_offline_without_credentials(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode() is None
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "missing"))
    assert resolve_wandb_mode() == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password secret\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert resolve_wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_wandb_mode() == "offline"


def test_wandb_offline_runs_log_artifacts(tmp_path, posts_file, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    cfg = make_config(tmp_path, posts_file, str(tiny_model_dir), max_steps=2)
    entry = run(cfg)
    assert set(entry.wandb) == {"project", "preprocess_run", "train_run"}
    runs = sorted((tmp_path / "wandb" / "wandb").glob("offline-run-*"))
    assert [r.name.split("-")[-1] for r in runs] == [
        entry.wandb["preprocess_run"],
        entry.wandb["train_run"],
    ]
    import wandb

    wandb.teardown()  # wait for the W&B service to flush the offline run files
    preprocess, train = (next(r.glob("*.wandb")).read_bytes() for r in runs)
    assert b"raw-dataset-zippy" in preprocess and b"train-dataset-zippy" in preprocess
    for logged in (b"finetuned-model-zippy", b"examples", b"train/loss", b"adapter_perplexity"):
        assert logged in train, logged


def test_data_folder_of_a_previous_fetch_trains_under_new_handle(trained, tmp_path):
    cfg, _ = trained
    again = TrainConfig(
        data=str(Path(cfg.data_dir) / "zippy"),
        handle="@Zippy2",
        data_dir=str(tmp_path / "data"),
        registry=str(tmp_path / "registry.json"),
        base_model=cfg.base_model,
        max_steps=1,
        write_card=False,
        device="cpu",
    )
    entry = run(again)
    assert entry.id == "zippy2" and entry.handles == ["Zippy2"]
    assert (tmp_path / "adapters" / "zippy2" / "adapter_model.safetensors").is_file()


def test_cuda_requested_without_cuda_is_refused(tmp_path, posts_file, tiny_model_dir):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    with pytest.raises(ValueError, match="device='cuda' but CUDA is not available"):
        run(make_config(tmp_path, posts_file, str(tiny_model_dir), device="cuda"))


@pytest.mark.gpu
def test_cuda_training_uses_mixed_precision(tmp_path, posts_file, tiny_model_dir, monkeypatch):
    seen = {}
    original = train_module.make_trainer

    def spy(*args, **kwargs):
        seen["trainer"] = trainer = original(*args, **kwargs)
        return trainer

    monkeypatch.setattr(train_module, "make_trainer", spy)
    entry = run(make_config(tmp_path, posts_file, str(tiny_model_dir), device="cuda"))
    args = seen["trainer"].args
    assert args.bf16 or args.fp16
    assert next(seen["trainer"].model.parameters()).device.type == "cuda"
    assert entry.metrics["adapter_loss"] < entry.metrics["base_loss"] - 0.05


def test_fetch_options_reach_the_fetch(tmp_path, posts_file, tiny_model_dir):
    """--limit and --handle go through the fetch stage: 50 posts are too little text to train."""
    from training.clean import NotEnoughTextError

    cfg = make_config(tmp_path, posts_file, str(tiny_model_dir), limit=50, handle="fifty")
    with pytest.raises(NotEnoughTextError, match="fifty") as info:
        run(cfg)
    assert "50" in str(info.value)
    saved = (tmp_path / "data" / "fifty" / "posts.jsonl").read_text().splitlines()
    assert len(saved) == 50
    with pytest.raises(ValueError, match="apply to a fetch"):
        TrainConfig(data=str(tmp_path), limit=5)
