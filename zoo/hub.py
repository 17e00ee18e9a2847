"""Push an adapter folder to the Hugging Face Hub and pull one back into the zoo.

    huggingtweets push getfiscal --dry-run      # list the exact files and card YAML, no network
    huggingtweets push getfiscal                # one commit to huggingtweets/getfiscal
    huggingtweets pull huggingtweets/getfiscal  # snapshot_download + register

A push uploads the adapter, `README.md`, `predictions.png` and `huggingtweets.json` (the registry
entry, so that a pull restores handles, display names, stats and parents) in ONE commit. The
uploaded `adapter_config.json` and card name the base by its Hub id. The token comes from the
standard Hugging Face login (`hf auth login` or `HF_TOKEN`); this module never reads or logs it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.registry import (
    Entry,
    RegistryError,
    file_checksum,
    load_registry,
    register_entry,
    update_entry,
    validate_id,
)

logger = logging.getLogger(__name__)

METADATA_FILE = "huggingtweets.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
REQUIRED_FILES = (ADAPTER_WEIGHTS, ADAPTER_CONFIG, "README.md", "predictions.png")
# What a pull downloads and copies into the zoo: weights, configs, tokenizer, card, thumbnail.
# Never pickles (*.bin, *.pt) or code (*.py), whatever else the repo holds.
PULL_PATTERNS = ("*.safetensors", "*.json", "*.txt", "*.md", "*.png")
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_REPO_ID_RE = re.compile(rf"^{_NAME}/{_NAME}$")
_BASE_ID_RE = re.compile(rf"^(?:{_NAME}/)?{_NAME}$")


class HubError(ValueError):
    """A push or pull that cannot go ahead (bad repo id, local base, missing or corrupt files)."""


def validate_repo_id(repo_id: str) -> str:
    """Return `repo_id` if it is an `owner/name` Hub id; raise `HubError` otherwise."""
    if not isinstance(repo_id, str) or not _REPO_ID_RE.fullmatch(repo_id) or ".." in repo_id:
        raise HubError(f"repo id {repo_id!r} must look like 'owner/name' (no '..', no spaces)")
    if len(repo_id) > 96:
        raise HubError(f"repo id {repo_id!r} is longer than 96 characters")
    return repo_id


def is_hub_model_id(model: str) -> bool:
    """Whether `model` names a Hub model ('gpt2', 'owner/name') rather than a local folder."""
    return bool(_BASE_ID_RE.fullmatch(model)) and ".." not in model and not Path(model).exists()


@dataclass
class PushFile:
    path_in_repo: str
    size: int
    sha256: str
    content: bytes = field(repr=False)


@dataclass
class PushResult:
    repo_id: str
    files: list[PushFile]
    commit_sha: str | None  # None for a dry run
    card_yaml: str
    dry_run: bool = False

    def __str__(self) -> str:
        head = "would commit to" if self.dry_run else f"committed {self.commit_sha} to"
        lines = [f"{head} https://huggingface.co/{self.repo_id}:"]
        lines += [f"  {f.path_in_repo:32} {f.size:>10} B  sha256:{f.sha256}" for f in self.files]
        lines += ["README.md front matter:", *("  " + line for line in self.card_yaml.splitlines())]
        return "\n".join(lines)


def _hub_card(text: str, local_ref: str | None, repo_id: str, base_id: str) -> tuple[str, str]:
    """The card as it should read on the Hub: base and thumbnail by URL, snippet by repo id."""
    from huggingface_hub import ModelCard

    card = ModelCard(text)
    card.data.base_model = base_id
    card.data.thumbnail = f"https://huggingface.co/{repo_id}/resolve/main/predictions.png"
    if local_ref:
        # cards.render writes the snippet's model as a JSON string literal of the local path.
        card.text = card.text.replace(
            f"model={json.dumps(local_ref)}", f"model={json.dumps(repo_id)}"
        ).replace("; run it from the zoo folder that holds `registry.json`", "")
    return str(card), card.data.to_yaml()


def _collect_files(
    folder: Path, entry: Entry, repo_id: str, base_id: str, card_text: str | None
) -> tuple[list[PushFile], str]:
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        hint = " (write the card first: cards.write_card / `huggingtweets card`)"
        raise HubError(f"{folder} lacks {', '.join(missing)}" + hint)
    weights = folder / ADAPTER_WEIGHTS
    checksum = file_checksum(weights)
    if entry.checksum and entry.checksum != checksum:
        raise HubError(f"{weights} does not match the registry checksum {entry.checksum}")

    contents: dict[str, bytes] = {}
    for path in sorted(folder.iterdir()):
        # Top-level regular files only: a symlink could point anywhere, dotfiles are local state.
        if path.is_symlink() or not path.is_file() or path.name.startswith("."):
            continue
        contents[path.name] = path.read_bytes()
    config = json.loads(contents[ADAPTER_CONFIG])
    config["base_model_name_or_path"] = base_id
    contents[ADAPTER_CONFIG] = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
    readme = card_text if card_text is not None else contents["README.md"].decode("utf-8")
    readme, card_yaml = _hub_card(readme, entry.adapter_path, repo_id, base_id)
    contents["README.md"] = readme.encode("utf-8")
    metadata = entry.to_dict()
    metadata.update(
        base_model=base_id,
        adapter_path=None,
        hub_repo=repo_id,
        hub_revision=None,
        checksum=checksum,
    )
    metadata["avatars"] = [a for a in entry.avatars if a.startswith(("http://", "https://"))]
    contents[METADATA_FILE] = (json.dumps(metadata, indent=2, ensure_ascii=False) + "\n").encode()
    files = [
        PushFile(name, len(data), hashlib.sha256(data).hexdigest(), data)
        for name, data in sorted(contents.items())
    ]
    return files, card_yaml


def push_adapter(
    registry_path: str | Path,
    entry_id: str,
    namespace: str = "huggingtweets",
    private: bool = False,
    dry_run: bool = False,
    api: Any = None,
    base_model_id: str | None = None,
    card_text: str | None = None,
) -> PushResult:
    """Create `<namespace>/<id>` (if needed) and upload the adapter folder in one commit.

    `base_model_id` names the base on the Hub when the entry's base is a local folder.
    `card_text` replaces the folder's README.md (e.g. a card rendered for the Hub repo).
    """
    registry = load_registry(registry_path)
    entry = registry.get(entry_id)
    folder = registry.adapter_dir(entry_id)
    repo_id = validate_repo_id(f"{namespace}/{entry.id}")
    base_id = base_model_id or entry.base_model
    if not is_hub_model_id(base_id):
        raise HubError(
            f"{entry.id!r} is built on the local base {base_id!r}, which the Hub cannot resolve; "
            "push the base first and pass base_model_id='owner/name'"
        )
    files, card_yaml = _collect_files(folder, entry, repo_id, base_id, card_text)
    if dry_run:
        result = PushResult(repo_id, files, None, card_yaml, dry_run=True)
        logger.info("%s", result)
        return result

    from huggingface_hub import CommitOperationAdd, HfApi

    api = api or HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    operations = [CommitOperationAdd(f.path_in_repo, f.content) for f in files]
    info = api.create_commit(
        repo_id,
        operations=operations,
        commit_message=f"Upload huggingtweets adapter {entry.id}",
        repo_type="model",
    )
    commit_sha = info.oid

    def record(e: Entry) -> None:
        e.hub_repo, e.hub_revision = repo_id, commit_sha

    update_entry(registry_path, entry.id, record)
    result = PushResult(repo_id, files, commit_sha, card_yaml)
    logger.info("%s", result)
    return result


def _read_front_matter(readme: Path) -> dict[str, Any]:
    if not readme.is_file():
        return {}
    from huggingface_hub import ModelCard

    return ModelCard(readme.read_text(encoding="utf-8"), ignore_metadata_errors=True).data.to_dict()


def pull_adapter(
    registry_path: str | Path,
    repo_id: str,
    revision: str | None = None,
    entry_id: str | None = None,
    overwrite: bool = False,
) -> Entry:
    """Download `repo_id` (cached, so `HF_HUB_OFFLINE=1` works after one download) into
    `<zoo>/adapters/<id>/` and register it."""
    from huggingface_hub import snapshot_download

    validate_repo_id(repo_id)
    snapshot = Path(
        snapshot_download(
            repo_id=repo_id,
            revision=revision,
            repo_type="model",
            allow_patterns=list(PULL_PATTERNS),
        )
    )
    if not (snapshot / ADAPTER_WEIGHTS).is_file() or not (snapshot / ADAPTER_CONFIG).is_file():
        raise HubError(f"{repo_id} holds no PEFT adapter ({ADAPTER_WEIGHTS}, {ADAPTER_CONFIG})")
    commit = snapshot.name if re.fullmatch(r"[0-9a-f]{40}", snapshot.name) else revision

    metadata: dict[str, Any] = {}
    if (snapshot / METADATA_FILE).is_file():
        try:
            metadata = json.loads((snapshot / METADATA_FILE).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise HubError(f"{repo_id}/{METADATA_FILE} is not valid JSON: {e}") from e
        if not isinstance(metadata, dict):
            raise HubError(f"{repo_id}/{METADATA_FILE} must hold an object")
    name = repo_id.split("/")[1]
    entry_id = validate_id(entry_id or metadata.get("id") or name)
    config = json.loads((snapshot / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    base = (
        _read_front_matter(snapshot / "README.md").get("base_model")
        or metadata.get("base_model")
        or config.get("base_model_name_or_path")
    )
    if isinstance(base, list):  # the card format allows several bases; a LoRA has one
        base = base[0]
    if not metadata:  # a repo from elsewhere: one account named after the repo
        metadata = {"kind": "user", "handles": [name], "display_names": [name], "source": "hub"}
    metadata.update(
        id=entry_id,
        base_model=base,
        adapter_path=f"adapters/{entry_id}",
        hub_repo=repo_id,
        hub_revision=commit,
    )
    expected = metadata.pop("checksum", None)
    actual = file_checksum(snapshot / ADAPTER_WEIGHTS)
    if expected and expected != actual:
        raise HubError(f"{repo_id}: {ADAPTER_WEIGHTS} is {actual}, its metadata says {expected}")
    try:
        entry = Entry.from_dict({**metadata, "checksum": actual})
    except RegistryError as e:
        raise HubError(f"{repo_id}/{METADATA_FILE} does not describe a valid entry: {e}") from e

    registry = load_registry(registry_path)
    if entry_id in registry and not overwrite:
        raise HubError(f"{entry_id!r} is already in {registry.path}; pass overwrite=True")
    target = registry.root / "adapters" / entry_id
    target.parent.mkdir(parents=True, exist_ok=True)
    # Copy next to the target, then swap it in: a failed copy never leaves half a folder. An
    # existing folder is moved aside and put back if registering fails (lock timeout, Ctrl-C...),
    # so an overwrite that does not complete keeps the old adapter and its entry in agreement.
    staging = Path(tempfile.mkdtemp(prefix=f".{entry_id}.", dir=target.parent))
    aside = target.with_name(f".{entry_id}.old-{uuid.uuid4().hex[:8]}")
    had_old = placed = False
    try:
        for path in snapshot.iterdir():
            allowed = any(fnmatch.fnmatch(path.name, p) for p in PULL_PATTERNS)
            if path.is_file() and allowed and not path.name.startswith("."):
                shutil.copyfile(path, staging / path.name)  # follows the cache's blob symlinks
        if file_checksum(staging / ADAPTER_WEIGHTS) != actual:
            raise HubError(f"{ADAPTER_WEIGHTS} changed while copying from {snapshot}")
        had_old = target.exists()
        if had_old:
            os.replace(target, aside)
        staging.rename(target)
        placed = True
        register_entry(registry_path, entry, overwrite=overwrite)
    except BaseException:
        if placed:
            shutil.rmtree(target, ignore_errors=True)
        if had_old:
            os.replace(aside, target)
        raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    if had_old:
        shutil.rmtree(aside, ignore_errors=True)
    logger.info("pulled %s@%s into %s", repo_id, commit, target)
    return entry
