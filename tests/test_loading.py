"""zoo.loading: the base through from_pretrained, adapters validated before they touch a model."""

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from _adapters import make_adapter, user_entry
from conftest import build_tiny_model

from zoo.loading import AdapterLoadError, load_adapter, load_base
from zoo.registry import load_registry, register_entry

SHA = "fedcba9876543210fedcba9876543210fedcba98"


def zoo_with(tmp_path, base_dir, folder, entry_id="alice", checksum=True):
    """A registry holding one local entry whose folder is a copy of `folder`."""
    target = tmp_path / "adapters" / entry_id
    shutil.copytree(folder, target)
    entry = user_entry(entry_id, str(base_dir), target)
    if not checksum:
        entry.checksum = None
    register_entry(tmp_path / "registry.json", entry)
    return load_registry(tmp_path / "registry.json"), target


def load(registry, base, base_dir, entry_id="alice"):
    model, tokenizer = base
    return load_adapter(registry, entry_id, model, tokenizer, str(base_dir))


def test_load_base_from_folder_and_offline_hub_id(base, hub_model_id, tiny_model_dir):
    model, tokenizer = base
    assert not model.training and tokenizer.eos_token == "<|endoftext|>"
    hub_model, _ = load_base(hub_model_id)
    ids = torch.tensor([[0, 5, 9]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, hub_model(ids).logits)


def test_load_local_adapter(tmp_path, base, tiny_model_dir, good_adapter):
    registry, folder = zoo_with(tmp_path, tiny_model_dir, good_adapter)
    adapter = load(registry, base, tiny_model_dir)
    assert adapter.id == "alice" and adapter.folder == folder
    assert adapter.config.r == 4 and adapter.config.fan_in_fan_out
    b = next(t for k, t in adapter.state.items() if k.endswith("lora_B.weight"))
    assert b.abs().max() > 0  # a real adapter, not a fresh no-op


def test_load_hub_adapter_from_offline_cache(tmp_path, base, tiny_model_dir, good_adapter):
    repo = Path(os.environ["HF_HUB_CACHE"]) / "models--huggingtweets--alice-test"
    shutil.copytree(good_adapter, repo / "snapshots" / SHA)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SHA)
    entry = user_entry("alice", str(tiny_model_dir), None, hub_repo="huggingtweets/alice-test")
    register_entry(tmp_path / "registry.json", entry)
    adapter = load(load_registry(tmp_path / "registry.json"), base, tiny_model_dir)
    assert adapter.folder == repo / "snapshots" / SHA and adapter.state

    missing = user_entry("bob", str(tiny_model_dir), None, hub_repo="huggingtweets/nobody")
    register_entry(tmp_path / "registry.json", missing)
    with pytest.raises(AdapterLoadError, match="'bob'.*could not fetch huggingtweets/nobody"):
        load(load_registry(tmp_path / "registry.json"), base, tiny_model_dir, "bob")


def test_missing_folder_and_unknown_entry(tmp_path, base, tiny_model_dir, good_adapter):
    registry, folder = zoo_with(tmp_path, tiny_model_dir, good_adapter)
    shutil.rmtree(folder)
    with pytest.raises(AdapterLoadError, match="'alice'.*does not exist"):
        load(registry, base, tiny_model_dir)
    with pytest.raises(AdapterLoadError, match="'zed'.*not in the registry"):
        load(registry, base, tiny_model_dir, "zed")


def test_corrupted_safetensors(tmp_path, base, tiny_model_dir, good_adapter):
    registry, folder = zoo_with(tmp_path, tiny_model_dir, good_adapter, checksum=False)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(AdapterLoadError, match="'alice'.*not a readable safetensors"):
        load(registry, base, tiny_model_dir)


def test_checksum_mismatch(tmp_path, base, tiny_model_dir, good_adapter):
    registry, folder = zoo_with(tmp_path, tiny_model_dir, good_adapter)
    other = make_adapter(tiny_model_dir, tmp_path / "other", seed=5)
    shutil.copy(other / "adapter_model.safetensors", folder / "adapter_model.safetensors")
    with pytest.raises(AdapterLoadError, match="'alice'.*checksum mismatch"):
        load(registry, base, tiny_model_dir)


def test_pickle_weights_are_refused(tmp_path, base, tiny_model_dir, good_adapter):
    registry, folder = zoo_with(tmp_path, tiny_model_dir, good_adapter, checksum=False)
    (folder / "adapter_model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, folder / "adapter_model.bin")
    with pytest.raises(AdapterLoadError, match="'alice'.*pickle weights are refused"):
        load(registry, base, tiny_model_dir)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"surprise_field": 1}, r"unknown fields \['surprise_field'\]"),
        ({"peft_type": "IA3"}, "peft_type is 'IA3'"),
        ({"use_dora": True}, "use_dora"),
    ],
)
def test_bad_adapter_config(tmp_path, base, tiny_model_dir, good_adapter, change, match):
    registry, folder = zoo_with(tmp_path, tiny_model_dir, good_adapter)
    path = folder / "adapter_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | change))
    with pytest.raises(AdapterLoadError, match=f"'alice'.*{match}"):
        load(registry, base, tiny_model_dir)


def test_other_base_name_is_a_warning_when_shapes_fit(
    tmp_path, base, tiny_model_dir, good_adapter, caplog
):
    registry, folder = zoo_with(tmp_path, tiny_model_dir, good_adapter)
    path = folder / "adapter_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"base_model_name_or_path": "x/y"}))
    with caplog.at_level(logging.WARNING, logger="zoo.loading"):
        assert load(registry, base, tiny_model_dir).state
    assert "trained on 'x/y'" in caplog.text


def test_adapter_for_another_shape_is_refused(tmp_path, base, tiny_model_dir):
    other_base = build_tiny_model(tmp_path / "wide", n_embd=32)
    folder = make_adapter(other_base, tmp_path / "wide-adapter", seed=1)
    registry, _ = zoo_with(tmp_path / "zoo", tiny_model_dir, folder)
    with pytest.raises(AdapterLoadError, match="'alice' does not fit base.*shape"):
        load(registry, base, tiny_model_dir)


def test_adapter_with_another_vocabulary_is_refused(tmp_path, base, tiny_model_dir, good_adapter):
    registry, folder = zoo_with(tmp_path, tiny_model_dir, good_adapter)
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    first, second = list(vocab)[10:12]
    vocab[first], vocab[second] = vocab[second], vocab[first]  # same size, other ids
    path.write_text(json.dumps(data))
    with pytest.raises(AdapterLoadError, match="'alice'.*vocabulary"):
        load(registry, base, tiny_model_dir)


def test_resolve_device():
    from zoo.loading import resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        for device in ("cuda", "cuda:1"):
            with pytest.raises(ValueError, match="CUDA is not available"):
                resolve_device(device)
