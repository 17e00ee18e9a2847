"""zoo.hub: push (dry run and through a hand-written fake HfApi) and pull from an offline HF cache."""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from _adapters import make_adapter
from safetensors.torch import load_file

from cards import write_card
from zoo.hub import HubError, PushResult, pull_adapter, push_adapter, validate_repo_id
from zoo.registry import Entry, Parent, PostStats, file_checksum, load_registry, register_entry

SAMPLES = [("My dream is", "to fly"), ("I think that", "cats rule")]
FAKE_SHA = "feedfacefeedfacefeedfacefeedfacefeedface"


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_model_dir) -> Path:
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "alice", seed=0)


def make_zoo(root: Path, adapter_dir: Path, base_model: str, kind: str = "user") -> Path:
    import shutil

    registry_path = root / "registry.json"
    entry_id = "alice" if kind == "user" else "alice-bob"
    shutil.copytree(adapter_dir, root / "adapters" / entry_id)
    handles = ["alice"] if kind == "user" else ["alice", "bob"]
    entry = Entry(
        id=entry_id,
        kind=kind,
        handles=handles,
        display_names=["Alice </div>"] + (["Bob"] if kind == "cyborg" else []),
        base_model=base_model,
        avatars=["avatars/alice.png"],
        source="bluesky",
        stats={h: PostStats(10, 2, 3, 5) for h in handles},
        metrics={"adapter_perplexity": 12.5},
        adapter_path=f"adapters/{entry_id}",
        checksum=file_checksum(adapter_dir / "adapter_model.safetensors"),
        parents=[Parent("alice", 0.6), Parent("bob", 0.4)] if kind == "cyborg" else [],
    )
    register_entry(registry_path, entry)
    write_card(registry_path, entry_id, samples=SAMPLES)
    return registry_path


@pytest.fixture
def zoo(tmp_path, adapter_dir, hub_model_id) -> Path:
    return make_zoo(tmp_path / "zoo", adapter_dir, base_model=hub_model_id)


def card_meta(text: str) -> dict:
    return yaml.safe_load(text.split("---\n")[1])


def test_dry_run_lists_the_exact_commit(zoo, hub_model_id, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", None)  # any network client use would fail
    before = zoo.read_text()
    result = push_adapter(zoo, "alice", dry_run=True)
    assert isinstance(result, PushResult) and result.dry_run and result.commit_sha is None
    assert result.repo_id == "huggingtweets/alice"
    folder = zoo.parent / "adapters" / "alice"
    expected = {p.name for p in folder.iterdir()} | {"huggingtweets.json"}
    assert {f.path_in_repo for f in result.files} == expected
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "predictions.png"} <= (
        expected
    )
    files = {f.path_in_repo: f for f in result.files}
    weights = files["adapter_model.safetensors"]
    assert "sha256:" + weights.sha256 == file_checksum(folder / "adapter_model.safetensors")
    assert weights.size == (folder / "adapter_model.safetensors").stat().st_size
    config = json.loads(files["adapter_config.json"].content)
    assert config["base_model_name_or_path"] == hub_model_id  # was the local tiny folder
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] != (
        hub_model_id
    )
    readme = files["README.md"].content.decode()
    meta = card_meta(readme)
    assert meta["base_model"] == hub_model_id
    assert meta["thumbnail"] == (
        "https://huggingface.co/huggingtweets/alice/resolve/main/predictions.png"
    )
    assert 'model="huggingtweets/alice"' in readme and "adapters/alice" not in readme
    assert yaml.safe_load(result.card_yaml) == meta
    metadata = json.loads(files["huggingtweets.json"].content)
    assert metadata["display_names"] == ["Alice </div>"] and metadata["avatars"] == []
    assert "huggingtweets/alice" in str(result) and weights.sha256 in str(result)
    assert zoo.read_text() == before  # a dry run records nothing


def test_local_base_needs_a_hub_id(tmp_path, adapter_dir, tiny_model_dir):
    registry_path = make_zoo(tmp_path, adapter_dir, base_model=str(tiny_model_dir))
    with pytest.raises(HubError, match="base_model_id"):
        push_adapter(registry_path, "alice", dry_run=True)
    result = push_adapter(
        registry_path, "alice", dry_run=True, base_model_id="openai-community/gpt2"
    )
    config = json.loads(
        next(f for f in result.files if f.path_in_repo == "adapter_config.json").content
    )
    assert config["base_model_name_or_path"] == "openai-community/gpt2"


def test_cli_push_dry_run_takes_the_base_hub_id(tmp_path, adapter_dir, tiny_model_dir, capsys):
    from training.cli import main

    registry_path = make_zoo(tmp_path, adapter_dir, base_model=str(tiny_model_dir))
    argv = ["push", "alice", "--registry", str(registry_path), "--dry-run"]
    assert main(argv) == 2
    assert "base_model_id" in capsys.readouterr().err
    assert main([*argv, "--base-model-id", "openai-community/gpt2"]) == 0
    assert "huggingtweets/alice" in capsys.readouterr().out


class FakeHfApi:
    """Records calls; answers like HfApi without a network."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def create_commit(self, repo_id, operations, **kwargs):
        self.calls.append(("create_commit", repo_id, operations, kwargs))
        return SimpleNamespace(oid=FAKE_SHA, commit_url=f"https://huggingface.co/{repo_id}")


def test_push_makes_one_commit_and_records_the_revision(zoo):
    api = FakeHfApi()
    result = push_adapter(zoo, "alice", namespace="me", private=True, api=api)
    assert [c[0] for c in api.calls] == ["create_repo", "create_commit"]
    assert api.calls[0][1] == "me/alice" and api.calls[0][2]["exist_ok"] is True
    assert api.calls[0][2]["private"] is True
    operations = api.calls[1][2]
    assert sorted(op.path_in_repo for op in operations) == sorted(
        f.path_in_repo for f in result.files
    )
    assert result.commit_sha == FAKE_SHA
    entry = load_registry(zoo).get("alice")
    assert (entry.hub_repo, entry.hub_revision) == ("me/alice", FAKE_SHA)


def publish_to_cache(repo_id: str, files: dict[str, bytes], sha: str = FAKE_SHA) -> None:
    """Lay files out as huggingface_hub's cache would after a download (refs + snapshot)."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(sha)


def pushed_files(registry_path: Path, entry_id: str) -> dict[str, bytes]:
    result = push_adapter(registry_path, entry_id, dry_run=True)
    return {f.path_in_repo: f.content for f in result.files}


def test_pull_from_offline_cache_registers_a_loadable_entry(
    tmp_path, adapter_dir, hub_model_id, tiny_model_dir
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    source = make_zoo(tmp_path / "source", adapter_dir, hub_model_id, kind="cyborg")
    publish_to_cache("huggingtweets/alice-bob", pushed_files(source, "alice-bob"))

    target = tmp_path / "target" / "registry.json"
    entry = pull_adapter(target, "huggingtweets/alice-bob")
    assert entry.kind == "cyborg" and entry.handles == ["alice", "bob"]
    assert entry.display_names == ["Alice </div>", "Bob"]
    assert [p.id for p in entry.parents] == ["alice", "bob"]
    assert entry.stats["bob"] == PostStats(10, 2, 3, 5)
    assert (entry.hub_repo, entry.hub_revision) == ("huggingtweets/alice-bob", FAKE_SHA)
    assert entry.base_model == hub_model_id
    registry = load_registry(target)
    folder = registry.adapter_dir("alice-bob")
    assert folder == (tmp_path / "target" / "adapters" / "alice-bob").resolve()
    assert registry.get("alice-bob").checksum == file_checksum(folder / "adapter_model.safetensors")

    base = AutoModelForCausalLM.from_pretrained(entry.base_model)  # the Hub id, offline
    model = PeftModel.from_pretrained(base, str(folder))
    expected = load_file(str(adapter_dir / "adapter_model.safetensors"))
    loaded = {k.replace(".default", ""): v for k, v in model.state_dict().items() if "lora_" in k}
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert all(v.abs().sum() > 0 for k, v in loaded.items() if "lora_B" in k)  # not a no-op


def test_pull_without_metadata_falls_back_to_the_repo_name(tmp_path, adapter_dir, hub_model_id):
    source = make_zoo(tmp_path / "source", adapter_dir, hub_model_id)
    files = pushed_files(source, "alice")
    del files["huggingtweets.json"]
    publish_to_cache("someone/carol_x", files, sha="1" * 40)
    entry = pull_adapter(tmp_path / "t" / "registry.json", "someone/carol_x")
    assert (entry.id, entry.kind, entry.handles) == ("carol_x", "user", ["carol_x"])
    assert entry.base_model == hub_model_id and entry.hub_revision == "1" * 40


def test_pull_rejects_a_corrupt_adapter(tmp_path, adapter_dir, hub_model_id):
    source = make_zoo(tmp_path / "source", adapter_dir, hub_model_id)
    files = pushed_files(source, "alice")
    files["adapter_model.safetensors"] = files["adapter_model.safetensors"][:-8] + b"\0" * 8
    publish_to_cache("someone/dave", files, sha="2" * 40)
    target = tmp_path / "t" / "registry.json"
    with pytest.raises(HubError, match="sha256"):
        pull_adapter(target, "someone/dave")
    assert not target.exists() and not (target.parent / "adapters" / "alice").exists()


@pytest.mark.parametrize("repo_id", ["../x", "a/b/c", "a/..", "alice", "a/b c", "a/.x", "ａ/b"])
def test_bad_repo_ids_are_rejected(repo_id):
    with pytest.raises(HubError):
        validate_repo_id(repo_id)
