"""The zoo catalogue: `registry.json`. This module is the only code that reads or writes it.

A registry is a JSON file `{"version": 1, "entries": {id: entry}}` beside the adapters it lists.
Local adapter paths are stored relative to the registry's folder, so a zoo folder can be moved.

Writes are atomic (temp file + fsync + rename) under a file lock, and the previous good version is
kept as `registry.json.bak`. A malformed registry raises `RegistryError` and is never overwritten.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_BASE_MODEL = "openai-community/gpt2"
MAX_ID_LENGTH = 96
# Ids are handles: ASCII letters, digits, '_' and '-' (the cyborg id joins handles with '-').
_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")

Kind = Literal["user", "cyborg"]


class RegistryError(ValueError):
    """The registry file or an entry in it is invalid."""


def validate_id(entry_id: str) -> str:
    """Return `entry_id` if it is a safe id (also a folder name); raise `RegistryError` otherwise."""
    if not isinstance(entry_id, str) or not entry_id:
        raise RegistryError("adapter id must be a non-empty string")
    if unicodedata.normalize("NFKC", entry_id) != entry_id or not entry_id.isascii():
        raise RegistryError(
            f"adapter id {entry_id!r} must be plain ASCII (letters, digits, _ and -)"
        )
    if len(entry_id) > MAX_ID_LENGTH:
        raise RegistryError(f"adapter id {entry_id!r} is longer than {MAX_ID_LENGTH} characters")
    if not _ID_RE.fullmatch(entry_id):  # not .match: '$' also matches before a final newline
        raise RegistryError(
            f"adapter id {entry_id!r} may only hold letters, digits, '_' and '-' "
            "(no slashes, dots or spaces)"
        )
    return entry_id


def id_from_handles(handles: list[str]) -> str:
    """The canonical id of one handle or of a cyborg of several (joined by '-', like huggingtweets).

    Characters an id may not hold become '_' (`jay.bsky.team` -> `jay_bsky_team`,
    `name@mastodon.social` -> `name_mastodon_social`); non-ASCII handles are refused.
    """
    handles = [validate_handle(h.strip()).lstrip("@") for h in handles]
    cleaned = [re.sub(r"[^A-Za-z0-9_-]", "_", h).lower() for h in handles]
    for handle, clean in zip(handles, cleaned, strict=True):
        if not handle.isascii() or not clean.strip("_-"):
            raise RegistryError(f"handle {handle!r} cannot be turned into an adapter id")
    return validate_id("-".join(cleaned))


def validate_handle(handle: str) -> str:
    """Handles are shown everywhere: printable, one line, no markup characters, <= 100 chars."""
    if not isinstance(handle, str) or not handle or len(handle) > 100:
        raise RegistryError(f"handle {handle!r} must be 1-100 characters")
    if any(not c.isprintable() or c.isspace() or c in "<>\"'`&/\\" for c in handle):
        raise RegistryError(f"handle {handle!r} holds spaces, control or markup characters")
    return handle


@dataclass
class PostStats:
    """Per-user data counts, exactly the rows of the card's data table."""

    downloaded: int = 0
    retweets: int = 0
    short: int = 0
    kept: int = 0

    def __post_init__(self):
        for name in ("downloaded", "retweets", "short", "kept"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise RegistryError(f"stats.{name} must be a non-negative integer, got {value!r}")
        if self.retweets + self.short + self.kept != self.downloaded:
            raise RegistryError(
                f"stats do not add up: retweets {self.retweets} + short {self.short} + kept "
                f"{self.kept} != downloaded {self.downloaded}"
            )


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["c_attn", "c_proj", "c_fc"])


@dataclass
class Parent:
    """One parent of a cyborg and its blend weight."""

    id: str
    weight: float

    def __post_init__(self):
        validate_id(self.id)
        if not isinstance(self.weight, int | float) or not math.isfinite(self.weight):
            raise RegistryError(f"parent {self.id!r} weight must be a finite number")


@dataclass
class Entry:
    """One adapter in the zoo: a single account (`user`) or a blend of several (`cyborg`)."""

    id: str
    kind: Kind
    handles: list[str]
    display_names: list[str]
    base_model: str = DEFAULT_BASE_MODEL
    base_revision: str | None = None
    avatars: list[str] = field(default_factory=list)  # URL or path relative to the registry
    source: str = ""  # post source ("x-archive", "bluesky", "fortune", ...) or "blend"
    stats: dict[str, PostStats] = field(default_factory=dict)  # handle -> stats
    lora: LoraSettings = field(default_factory=LoraSettings)
    metrics: dict[str, float] = field(default_factory=dict)  # base_perplexity, adapter_perplexity..
    wandb: dict[str, str] = field(
        default_factory=dict
    )  # project, entity, preprocess_run, train_run
    adapter_path: str | None = None  # local folder, relative to the registry's folder
    hub_repo: str | None = None  # "huggingtweets/<id>" once pushed or pulled
    hub_revision: str | None = None
    checksum: str | None = None  # "sha256:<hex>" of adapter_model.safetensors
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    parents: list[Parent] = field(default_factory=list)  # cyborgs only
    blend: dict[str, Any] = field(default_factory=dict)  # cyborgs: method, params, rank, energy

    def __post_init__(self):
        validate_id(self.id)
        if self.kind not in ("user", "cyborg"):
            raise RegistryError(f"entry {self.id!r}: kind must be 'user' or 'cyborg'")
        if not self.handles:
            raise RegistryError(f"entry {self.id!r}: needs at least one handle")
        for handle in self.handles:
            validate_handle(handle)
        if len(self.display_names) != len(self.handles):
            raise RegistryError(f"entry {self.id!r}: one display name per handle")
        if self.kind == "user" and len(self.handles) != 1:
            raise RegistryError(f"entry {self.id!r}: a user entry has exactly one handle")
        if self.kind == "cyborg" and len(self.parents) < 2:
            raise RegistryError(f"entry {self.id!r}: a cyborg needs at least two parents")
        if self.adapter_path is None and self.hub_repo is None:
            raise RegistryError(f"entry {self.id!r}: needs an adapter_path or a hub_repo")
        if self.adapter_path is not None:
            p = Path(self.adapter_path)
            if p.is_absolute() or ".." in p.parts:
                raise RegistryError(
                    f"entry {self.id!r}: adapter_path must be relative and inside the zoo folder"
                )
        for key, value in self.metrics.items():
            if not isinstance(value, int | float):
                raise RegistryError(f"entry {self.id!r}: metric {key!r} must be a number")

    @property
    def display_name(self) -> str:
        return " & ".join(self.display_names)

    @property
    def handle_line(self) -> str:
        return "@" + "-".join(self.handles)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Entry:
        if not isinstance(data, dict):
            raise RegistryError(f"entry must be an object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise RegistryError(f"entry {data.get('id')!r} has unknown fields {sorted(unknown)}")
        try:
            data = dict(data)
            data["stats"] = {h: PostStats(**s) for h, s in data.get("stats", {}).items()}
            data["lora"] = LoraSettings(**data.get("lora", {}))
            data["parents"] = [Parent(**p) for p in data.get("parents", [])]
            return cls(**data)
        except TypeError as e:
            raise RegistryError(f"entry {data.get('id')!r} is malformed: {e}") from e


@dataclass
class Registry:
    """A loaded registry: where it lives and its entries (in insertion order)."""

    path: Path
    entries: dict[str, Entry] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.path.parent

    def __contains__(self, entry_id: str) -> bool:
        return entry_id in self.entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries.values())

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, entry_id: str) -> Entry:
        if entry_id not in self.entries:
            known = ", ".join(self.entries) or "none"
            raise KeyError(f"no adapter {entry_id!r} in {self.path} (known: {known})")
        return self.entries[entry_id]

    def adapter_dir(self, entry_id: str) -> Path:
        """The local folder of an entry's adapter (download it first for Hub-only entries)."""
        entry = self.get(entry_id)
        if entry.adapter_path is None:
            raise RegistryError(f"{entry_id!r} lives on the Hub ({entry.hub_repo}); pull it first")
        return resolve_inside(self.root, entry.adapter_path)


def resolve_inside(root: Path, relative: str | Path) -> Path:
    """`root / relative`, refusing any path that escapes `root` (via '..' or symlinks)."""
    root = Path(root).resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise RegistryError(f"path {str(relative)!r} escapes the zoo folder {root}")
    return target


def file_checksum(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def _parse(path: Path, text: str) -> Registry:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RegistryError(f"{path} is not valid JSON ({e}); fix it or restore {path}.bak") from e
    if not isinstance(data, dict) or "entries" not in data or "version" not in data:
        raise RegistryError(f"{path} must be an object with 'version' and 'entries'")
    if data["version"] != SCHEMA_VERSION:
        raise RegistryError(f"{path} has schema version {data['version']!r}; expected 1")
    if not isinstance(data["entries"], dict):
        raise RegistryError(f"{path}: 'entries' must be an object")
    entries = {}
    for key, raw in data["entries"].items():
        try:
            entry = Entry.from_dict(raw)
        except RegistryError as e:
            raise RegistryError(f"{path}: {e}") from e
        if entry.id != key:
            raise RegistryError(f"{path}: entry key {key!r} differs from its id {entry.id!r}")
        entries[key] = entry
    return Registry(path=path, entries=entries)


def load_registry(path: str | Path) -> Registry:
    """Read a registry; a missing file is an empty registry, a malformed one a `RegistryError`."""
    path = Path(path)
    if not path.exists():
        return Registry(path=path)
    return _parse(path, path.read_text(encoding="utf-8"))


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _serialise(registry: Registry) -> str:
    data = {
        "version": SCHEMA_VERSION,
        "entries": {k: e.to_dict() for k, e in registry.entries.items()},
    }
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


@contextmanager
def edit_registry(path: str | Path, timeout_s: float = 60.0) -> Iterator[Registry]:
    """Lock, load, let the caller change `registry.entries`, then write atomically.

    The previous file is kept as `<name>.bak`. Nothing is written if the body raises or if the
    file on disk is malformed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=timeout_s)
    except Timeout as e:
        raise RegistryError(f"could not lock {path} within {timeout_s:.0f} s") from e
    try:
        old_text = path.read_text(encoding="utf-8") if path.exists() else None
        registry = _parse(path, old_text) if old_text is not None else Registry(path=path)
        yield registry
        for key, entry in registry.entries.items():
            if key != entry.id:
                raise RegistryError(f"entry key {key!r} differs from its id {entry.id!r}")
        if old_text is not None:
            _write_atomic(path.with_name(path.name + ".bak"), old_text)
        _write_atomic(path, _serialise(registry))
    finally:
        lock.release()


def register_entry(path: str | Path, entry: Entry, overwrite: bool = False) -> Entry:
    """Add (or, with `overwrite`, replace) one entry. Returns the entry as stored."""
    with edit_registry(path) as registry:
        if entry.id in registry.entries and not overwrite:
            raise RegistryError(
                f"{entry.id!r} is already in {path}; pass overwrite=True to replace"
            )
        registry.entries[entry.id] = entry
    logger.info("registered %s in %s", entry.id, path)
    return entry


def update_entry(path: str | Path, entry_id: str, change: Callable[[Entry], None]) -> Entry:
    """Apply `change` to one entry in place under the lock and save."""
    with edit_registry(path) as registry:
        entry = registry.get(entry_id)
        change(entry)
        entry.__post_init__()
    return entry


def remove_entry(path: str | Path, entry_id: str) -> None:
    with edit_registry(path) as registry:
        registry.get(entry_id)
        del registry.entries[entry_id]
