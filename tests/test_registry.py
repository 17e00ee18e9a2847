import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

from zoo.registry import (
    Entry,
    Parent,
    PostStats,
    RegistryError,
    edit_registry,
    id_from_handles,
    load_registry,
    register_entry,
    remove_entry,
    resolve_inside,
    update_entry,
    validate_id,
)


def make_entry(entry_id: str = "getfiscal", **overrides) -> Entry:
    fields = dict(
        id=entry_id,
        kind="user",
        handles=[entry_id],
        display_names=["Don Hughes"],
        source="x-archive",
        stats={entry_id: PostStats(downloaded=3221, retweets=1002, short=409, kept=1810)},
        metrics={"base_perplexity": 80.5, "adapter_perplexity": 31.2},
        adapter_path=f"adapters/{entry_id}",
    )
    fields.update(overrides)
    return Entry(**fields)


def test_round_trip_keeps_every_field(tmp_path):
    path = tmp_path / "registry.json"
    user = make_entry(checksum="sha256:abc", wandb={"project": "huggingtweets", "train_run": "x1"})
    cyborg = make_entry(
        "getfiscal-soup",
        kind="cyborg",
        handles=["getfiscal", "soup"],
        display_names=["Don Hughes", "Soup"],
        parents=[Parent("getfiscal", 0.7), Parent("soup", -0.3)],
        blend={"method": "live", "rank": 16, "energy_kept": 0.98},
        source="blend",
        stats={},
    )
    register_entry(path, user)
    register_entry(path, cyborg)
    loaded = load_registry(path)
    assert list(loaded.entries) == ["getfiscal", "getfiscal-soup"]
    assert loaded.get("getfiscal") == user
    assert loaded.get("getfiscal-soup") == cyborg
    assert loaded.get("getfiscal-soup").display_name == "Don Hughes & Soup"
    assert loaded.get("getfiscal-soup").handle_line == "@getfiscal-soup"
    assert loaded.adapter_dir("getfiscal") == (tmp_path / "adapters" / "getfiscal").resolve()
    assert json.loads(path.read_text())["version"] == 1


def test_missing_registry_is_empty(tmp_path):
    assert len(load_registry(tmp_path / "nope.json")) == 0


def test_duplicate_needs_overwrite(tmp_path):
    path = tmp_path / "registry.json"
    register_entry(path, make_entry())
    with pytest.raises(RegistryError, match="already in"):
        register_entry(path, make_entry())
    register_entry(path, make_entry(display_names=["New Name"]), overwrite=True)
    assert load_registry(path).get("getfiscal").display_names == ["New Name"]


def test_update_and_remove(tmp_path):
    path = tmp_path / "registry.json"
    register_entry(path, make_entry())
    update_entry(path, "getfiscal", lambda e: setattr(e, "hub_repo", "huggingtweets/getfiscal"))
    assert load_registry(path).get("getfiscal").hub_repo == "huggingtweets/getfiscal"
    with pytest.raises(RegistryError, match="adapter id"):
        update_entry(path, "getfiscal", lambda e: setattr(e, "id", "../evil"))
    assert load_registry(path).get("getfiscal").id == "getfiscal"
    remove_entry(path, "getfiscal")
    assert "getfiscal" not in load_registry(path)
    with pytest.raises(KeyError, match="no adapter 'ghost'"):
        remove_entry(path, "ghost")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "../etc",
        "a/b",
        "a\\b",
        "..",
        ".hidden",
        "a b",
        "ｇｅｔｆｉｓｃａｌ",
        "caf\u00e9",
        "x" * 97,
        "-x",
    ],
)
def test_bad_ids_are_refused(bad):
    with pytest.raises(RegistryError):
        validate_id(bad)


def test_id_from_handles():
    assert id_from_handles(["@Marylandmudflap", "sniping_soup"]) == "marylandmudflap-sniping_soup"
    assert id_from_handles(["jay.bsky.team"]) == "jay_bsky_team"
    assert id_from_handles(["@Gargron@mastodon.social"]) == "gargron_mastodon_social"
    for bad in (["ｇｅｔｆｉｓｃａｌ"], ["..."], [""], ["../x"], ["a b"]):
        with pytest.raises(RegistryError):
            id_from_handles(bad)


@pytest.mark.parametrize("bad", ["", "a b", "<script>", 'x"y', "a/b", "tab\t", "z" * 101])
def test_bad_handles_are_refused(bad):
    with pytest.raises(RegistryError, match="handle"):
        make_entry(handles=[bad])


def test_entry_validation_messages():
    with pytest.raises(RegistryError, match="do not add up"):
        PostStats(downloaded=10, retweets=1, short=1, kept=1)
    with pytest.raises(RegistryError, match="at least two parents"):
        make_entry("a-b", kind="cyborg", handles=["a", "b"], display_names=["A", "B"])
    with pytest.raises(RegistryError, match="inside the zoo folder"):
        make_entry(adapter_path="../outside")
    with pytest.raises(RegistryError, match="inside the zoo folder"):
        make_entry(adapter_path="/etc")
    with pytest.raises(RegistryError, match="adapter_path or a hub_repo"):
        make_entry(adapter_path=None)
    with pytest.raises(RegistryError, match="finite"):
        Parent("a", float("nan"))


def test_resolve_inside_refuses_symlink_escape(tmp_path):
    (tmp_path / "zoo").mkdir()
    (tmp_path / "zoo" / "link").symlink_to(tmp_path)
    with pytest.raises(RegistryError, match="escapes"):
        resolve_inside(tmp_path / "zoo", "link/other")


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ("[]", "must be an object"),
        ('{"version": 2, "entries": {}}', "schema version"),
        ('{"version": 1, "entries": []}', "'entries' must be an object"),
        ('{"version": 1, "entries": {"a": {"id": "b"}}}', "malformed"),
        (
            '{"version": 1, "entries": {"a": {"id": "a", "kind": "user", "handles": ["a"], '
            '"display_names": ["A"], "adapter_path": "adapters/a", "colour": "red"}}}',
            "unknown fields",
        ),
    ],
)
def test_broken_registry_is_a_clear_error_and_never_overwritten(tmp_path, content, message):
    path = tmp_path / "registry.json"
    path.write_text(content)
    with pytest.raises(RegistryError, match=message):
        load_registry(path)
    with pytest.raises(RegistryError, match=message):
        register_entry(path, make_entry())
    assert path.read_text() == content


def test_backup_keeps_previous_version(tmp_path):
    path = tmp_path / "registry.json"
    register_entry(path, make_entry("a"))
    register_entry(path, make_entry("b"))
    assert list(load_registry(tmp_path / "registry.json.bak").entries) == ["a"]


def test_failed_edit_writes_nothing(tmp_path):
    path = tmp_path / "registry.json"
    register_entry(path, make_entry("a"))
    before = path.read_bytes()
    with pytest.raises(RuntimeError), edit_registry(path) as registry:
        registry.entries.clear()
        raise RuntimeError("boom")
    assert path.read_bytes() == before


def _register_many(path: str, worker: int, count: int) -> None:
    for i in range(count):
        register_entry(path, make_entry(f"w{worker}-n{i}"))


def test_concurrent_processes_lose_no_entry(tmp_path):
    path = tmp_path / "registry.json"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_register_many, args=(str(path), w, 25)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    registry = load_registry(path)
    assert len(registry) == 200
    assert {e.id for e in registry} == {f"w{w}-n{i}" for w in range(8) for i in range(25)}


def _register_forever(path: str, done_file: str) -> None:
    for i in range(10_000):
        register_entry(path, make_entry(f"k{i}"))
        # The marker must survive the SIGKILL too: write it beside, then rename (atomic).
        Path(done_file + ".tmp").write_text(str(i))
        os.replace(done_file + ".tmp", done_file)


def test_sigkill_mid_write_leaves_valid_registry(tmp_path):
    path = tmp_path / "registry.json"
    done = tmp_path / "done.txt"
    ctx = mp.get_context("fork")
    for round_ in range(3):
        proc = ctx.Process(target=_register_forever, args=(str(path), str(done)))
        proc.start()
        deadline = time.time() + 30
        while not done.exists() and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.05 + 0.03 * round_)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        completed = int(done.read_text())
        registry = load_registry(path)  # parses: the file is never half-written
        ids = {e.id for e in registry}
        assert {f"k{i}" for i in range(completed + 1)} <= ids
        # The lock file left behind by the killed process must not block the next writer.
        register_entry(path, make_entry(f"after{round_}"))
        path.unlink()
        done.unlink()
