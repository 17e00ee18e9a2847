"""Bad inputs the rest of the suite did not cover yet, and "nothing saved is lost" per layer.

    python -m pytest -q tests/test_bad_inputs.py

docs/bad-inputs.md maps every case of the bad-input issue to its test (here or elsewhere). Each case
asserts the error type and a message naming the problem. The end-to-end checks make a layer fail
on top of earlier good work and compare what was saved, byte for byte, before and after:
fetch -> posts.jsonl/profile.json, train -> adapter folder + registry entry, export -> registry,
pull -> adapter folder + registry, push -> registry.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from _adapters import make_adapter, user_entry
from safetensors.torch import load_file, save_file

from training.clean import NotEnoughTextError
from training.sources import SourceError, fetch_posts
from training.sources.network import RetryPolicy
from zoo.blend import Blend, BlendError
from zoo.registry import RegistryError, load_registry, register_entry, validate_id

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SPACE_DIR = Path(__file__).resolve().parents[1] / "spaces" / "huggingtweets"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (lock files aside) -> its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


# ---------------------------------------------------------------------------------------------
# Network sources: the HTTP answers not covered in test_sources_network (Mastodon's, and a 429
# that never ends for Bluesky), on conftest's `server`. Retries never sleep.
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def retry():
    return RetryPolicy(attempts=3, backoff_s=0.5, max_wait_s=5.0, sleep=lambda s: None)


MASTODON_ACCOUNT = {"id": "7", "username": "ada", "acct": "ada", "display_name": "Ada"}
LOOKUP, STATUSES = "/api/v1/accounts/lookup", "/api/v1/accounts/7/statuses"


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (401, {"error": "unauthorized"}, r"private or protected account 'ada@example\.social'.*401"),
        (429, {"error": "Too many requests"}, r"giving up on 'ada@example\.social' after 3 tries: HTTP 429"),
        (500, {"error": "oops"}, r"giving up on 'ada@example\.social' after 3 tries: HTTP 500"),
        (200, b'[{"id": "1", "content": ', r"malformed JSON from .*statuses\?limit=40 for 'ada@example\.social'"),
    ],
    ids=["401", "429", "500", "malformed-json"],
)  # fmt: skip
def test_mastodon_http_errors(server, retry, status, body, message):
    server.routes[LOOKUP] = lambda q: (200, MASTODON_ACCOUNT, {})
    server.routes[STATUSES] = lambda q: (status, body, {"Retry-After": "1"})
    with pytest.raises(SourceError, match=message):
        fetch_posts("mastodon", "ada@example.social", base_url=server.url, retry=retry)
    assert len(server.paths(STATUSES)) == (3 if status in (429, 500) else 1)


def test_bluesky_429_forever_gives_up(server, retry):
    server.routes["/xrpc/app.bsky.actor.getProfile"] = lambda q: (429, {}, {"Retry-After": "9"})
    with pytest.raises(
        SourceError, match=r"giving up on 'ada\.bsky\.social' after 3 tries: HTTP 429"
    ):
        fetch_posts("bluesky", "ada.bsky.social", base_url=server.url, retry=retry)


# ---------------------------------------------------------------------------------------------
# Users whose posts are unusable: only reposts, only short posts (through the train stage, which
# refuses them before loading any model)
# ---------------------------------------------------------------------------------------------
def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"text": f"RT @bob: a fine long post number {i}"} for i in range(50)]
         + [{"text": f"a long repost flagged by the source {i}", "is_repost": True} for i in range(50)],
         r"@only_rt: 0 characters kept from 0 posts \(100 downloaded, 100 reposts and 0 short"),
        ([{"text": w} for w in ("lol", "ok then", "https://t.co/x", "yes!!", "  ", "hm hm")] * 40,
         r"@only_short: 0 characters kept from 0 posts \(240 downloaded, 0 reposts and 240 short"),
    ],
    ids=["only-reposts", "only-short-posts"],
)  # fmt: skip
def test_unusable_accounts_are_refused_before_training(tmp_path, rows, message, monkeypatch):
    from training import train as train_module
    from training.train import TrainConfig, run

    handle = "only_rt" if "only_rt" in message else "only_short"
    posts = write_jsonl(tmp_path / "posts.jsonl", rows)
    monkeypatch.setattr(train_module, "add_lora", lambda *a: pytest.fail("reached training"))
    cfg = TrainConfig(source="jsonl", user=str(posts), handle=handle, base_model="unused",
                      data_dir=str(tmp_path / "data"), registry=str(tmp_path / "zoo" / "r.json"))  # fmt: skip
    with pytest.raises(NotEnoughTextError, match=message):
        run(cfg)
    assert not (tmp_path / "zoo").exists()


def test_unknown_source_in_train_is_named(tmp_path):
    from training.train import TrainConfig, run

    cfg = TrainConfig(source="myspace", user="tom", registry=str(tmp_path / "r.json"),
                      data_dir=str(tmp_path / "data"))  # fmt: skip
    with pytest.raises(ValueError, match="source must be one of .* got 'myspace'"):
        run(cfg)
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# Registry ids: unicode tricks beyond test_registry's
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("\u0430lice", "plain ASCII"),  # Cyrillic a, looks like 'alice'
        ("ali\u200bce", "plain ASCII"),  # zero-width space
        ("\u202eecila", "plain ASCII"),  # right-to-left override
        ("alice\u0301", "plain ASCII"),  # combining accent
        ("ﬁsh", "plain ASCII"),  # ligature, NFKC turns it into 'fish'
        ("alice\x00", "may only hold"),
        ("alice\n", "may only hold"),
        ("%2e%2e%2f", "may only hold"),  # URL-encoded '../'
        ("~alice", "may only hold"),
        ("CON.txt", "may only hold"),
    ],
)
def test_unicode_and_encoding_tricks_in_ids(bad, message):
    with pytest.raises(RegistryError, match=f"adapter id .*{message}"):
        validate_id(bad)
    with pytest.raises(BlendError, match=message):
        Blend.from_weights({bad: 1.0})


# ---------------------------------------------------------------------------------------------
# Adapters: a config that is missing or not JSON, tensors holding NaN
# ---------------------------------------------------------------------------------------------
def break_config_missing(folder: Path) -> None:
    (folder / "adapter_config.json").unlink()


def break_config_json(folder: Path) -> None:
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", ')


def break_nan(folder: Path) -> None:
    path = folder / "adapter_model.safetensors"
    state = load_file(str(path))
    key = sorted(state)[0]
    state[key] = torch.full_like(state[key], math.nan)
    save_file(state, str(path))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (break_config_missing, r"adapter_config\.json is missing"),
        (break_config_json, r"adapter_config\.json is not valid JSON"),
        (break_nan, r"tensor base_model\.model\..* holds NaN or inf"),
    ],
    ids=["config-missing", "config-not-json", "nan-weights"],
)
def test_damaged_adapters_are_refused(
    tmp_path, base, tiny_model_dir, good_adapter, damage, message
):
    from zoo.loading import AdapterLoadError, load_adapter

    folder = tmp_path / "adapters" / "alice"
    shutil.copytree(good_adapter, folder)
    damage(folder)
    register_entry(tmp_path / "registry.json", user_entry("alice", str(tiny_model_dir), None,
                                                          hub_repo="x/y"))  # fmt: skip
    registry = load_registry(tmp_path / "registry.json")
    registry.entries["alice"].adapter_path, registry.entries["alice"].hub_repo = (
        "adapters/alice",
        None,
    )
    with pytest.raises(AdapterLoadError, match=f"'alice'.*{message}"):
        load_adapter(registry, "alice", *base, str(tiny_model_dir))


# ---------------------------------------------------------------------------------------------
# The Space's own checks (API callers skip the widgets' limits)
# ---------------------------------------------------------------------------------------------
def space():
    if str(SPACE_DIR) not in sys.path:
        sys.path.insert(0, str(SPACE_DIR))
    import cyborg_ui

    return cyborg_ui


@pytest.mark.parametrize(
    ("widgets", "error", "message"),
    [
        (([f"u{i}" for i in range(9)], [1.0] * 9, "live", 0.5, 0), BlendError, "at most 8 users, got 9"),
        ((["alice"], [math.nan], "live", 0.5, 0), BlendError, "weight of 'alice' must be finite"),
        ((["alice"], [math.inf], "live", 0.5, 0), BlendError, "weight of 'alice' must be finite"),
        ((["alice"], [2.5], "live", 0.5, 0), BlendError, r"weights must lie in \[-2, 2\]"),
        ((["alice"], [1.0], "svd", 0.5, 0), BlendError, "unknown blend method 'svd'"),
        ((["alice"], [1.0], "ties", 0.0, 0), BlendError, r"density must be a number in \(0, 1\]"),
        ((["alice"], [1.0], "live", 0.5, "x"), BlendError, "seed must be a whole number"),
    ],
    ids=["9-users", "nan", "inf", "out-of-range", "method", "density", "seed"],
)  # fmt: skip
def test_space_blend_widgets_out_of_range(widgets, error, message):
    with pytest.raises(error, match=message):
        space().blend_from_widgets(*widgets)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ((0, 1.0, 0.95, 10, 0), r"number of samples must be in 1\.\.4, got 0"),
        ((1, 1.0, 0.95, 0, 0), r"max new tokens must be in 1\.\.80, got 0"),
        ((1, -0.5, 0.95, 10, 0), r"temperature must be in \[0, 10\]"),
        ((1, math.nan, 0.95, 10, 0), r"temperature must be in \[0, 10\]"),
        ((1, 1.0, 1.5, 10, 0), r"top_p must be in \(0, 1\]"),
        ((1, 1.0, 0.95, 10, -3), "seed must be a non-negative integer"),
    ],
    ids=["samples-0", "tokens-0", "temperature-negative", "temperature-nan", "top-p", "seed"],
)
def test_space_generation_params_out_of_range(params, message):
    with pytest.raises(ValueError, match=message):
        space().sampling_from_widgets(*params)


# ---------------------------------------------------------------------------------------------
# Nothing saved is lost: fetch
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("failure", ["401", "malformed-json", "empty-feed"])
def test_failed_network_fetch_keeps_the_previous_posts(tmp_path, server, failure):
    from test_sources_network import BSKY_PAGES, BSKY_PROFILE

    from training.fetch import FetchConfig, run

    profile, feed = "/xrpc/app.bsky.actor.getProfile", "/xrpc/app.bsky.feed.getAuthorFeed"
    server.routes[profile] = lambda q: (200, BSKY_PROFILE, {})
    server.routes[feed] = lambda q: (200, BSKY_PAGES[q.get("cursor")], {})
    cfg = FetchConfig(source="bluesky", user="ada.bsky.social", base_url=server.url,
                      data_dir=str(tmp_path / "data"))  # fmt: skip
    folder = run(cfg)
    before = snapshot(folder)
    answer = {
        "401": (401, {"error": "AuthMissing"}, {}),
        "malformed-json": (200, b'{"feed": [', {}),
        "empty-feed": (200, {"feed": []}, {}),
    }[failure]
    server.routes[feed] = lambda q: answer
    with pytest.raises(SourceError, match="private or protected|malformed JSON|no posts"):
        run(cfg)
    assert snapshot(folder) == before and len(before) == 2
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


# ---------------------------------------------------------------------------------------------
# Nothing saved is lost: train (a re-train with --overwrite that fails keeps the old adapter)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, fixture_posts, tiny_model_dir):
    from training.train import TrainConfig, run

    tmp = tmp_path_factory.mktemp("trained")
    posts = write_jsonl(tmp / "zippy.jsonl", [{"text": t} for t in fixture_posts])
    cfg = TrainConfig(source="jsonl", user=str(posts), data_dir=str(tmp / "data"),
                      registry=str(tmp / "zoo" / "registry.json"), base_model=str(tiny_model_dir),
                      max_steps=2, write_card=False, device="cpu")  # fmt: skip
    run(cfg)
    return cfg


def break_source(cfg, monkeypatch):
    Path(cfg.user).write_text('{"text": "fine"}\n{"text": \n', encoding="utf-8")
    return SourceError, "line 2: not valid JSON"


def too_little_text(cfg, monkeypatch):
    write_jsonl(Path(cfg.user), [{"text": "just one short little post here"}] * 3)
    return NotEnoughTextError, "not enough text to train on for @zippy"


def interrupt_training(cfg, monkeypatch):
    import transformers

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(transformers.Trainer, "training_step", interrupt)
    return KeyboardInterrupt, ""


def disk_full_while_saving(cfg, monkeypatch):
    from training import train as train_module

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train_module, "save_adapter", full)
    return OSError, "No space left on device"


@pytest.mark.parametrize(
    "failure", [break_source, too_little_text, interrupt_training, disk_full_while_saving]
)
def test_failed_retrain_keeps_adapter_and_entry_byte_identical(
    trained, tmp_path, monkeypatch, failure
):
    from training.train import TrainConfig, run

    zoo = tmp_path / "zoo"
    shutil.copytree(Path(trained.registry).parent, zoo)
    posts = tmp_path / "zippy.jsonl"
    shutil.copy(trained.user, posts)
    cfg = TrainConfig(**(vars(trained) | {"registry": str(zoo / "registry.json"),
                                          "user": str(posts), "overwrite": True}))  # fmt: skip
    before = snapshot(zoo)
    error, message = failure(cfg, monkeypatch)
    with pytest.raises(error, match=message):
        run(cfg)
    assert snapshot(zoo) == before
    assert sorted(p.name for p in (zoo / "adapters").iterdir()) == ["zippy"]  # no temp folders


# ---------------------------------------------------------------------------------------------
# Nothing saved is lost: export (engine) and pull / push (hub)
# ---------------------------------------------------------------------------------------------
def test_failed_export_leaves_the_registry_and_folders_unchanged(zoo_copy, monkeypatch):
    from zoo import export as export_module
    from zoo.engine import Engine, EngineError

    engine = Engine(zoo_copy)
    blend = Blend.from_weights({"alice": 0.6, "bob": 0.4})
    before = snapshot(zoo_copy.parent)
    with pytest.raises(EngineError, match="'alice' is already in the zoo"):
        engine.export(blend, entry_id="alice")
    with pytest.raises(EngineError, match=r"unknown user\(s\) nobody"):
        engine.export(Blend.from_weights({"alice": 0.6, "nobody": 0.4}))

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_module, "write_folder", disk_full)
    with pytest.raises(OSError, match="No space left"):
        engine.export(blend)
    assert snapshot(zoo_copy.parent) == before
    assert sorted(p.name for p in (zoo_copy.parent / "adapters").iterdir()) == [
        "alice",
        "alice_twin",
        "bob",
        "carol",
    ]


def test_export_never_clobbers_an_entry_registered_since_the_engine_loaded(
    zoo_copy, tiny_model_dir
):
    from zoo.engine import Engine, EngineError

    engine = Engine(zoo_copy)
    engine.generate(Blend.from_weights({"alice": 1.0}), "hi", _params())
    # Another process registers 'alice-bob' (say a pull) after the engine read the registry.
    folder = make_adapter(tiny_model_dir, zoo_copy.parent / "adapters" / "alice-bob", seed=7)
    register_entry(zoo_copy, user_entry("alice-bob", str(tiny_model_dir), folder))
    before = snapshot(zoo_copy.parent)
    with pytest.raises((EngineError, RegistryError), match="alice-bob.*already in"):
        engine.export(Blend.from_weights({"alice": 0.5, "bob": 0.5}))
    assert snapshot(zoo_copy.parent) == before


def _params():
    from zoo.engine import SamplingParams

    return SamplingParams(max_new_tokens=2)


@pytest.fixture(scope="module")
def hub_source(tmp_path_factory, tiny_model_dir, hub_model_id):
    """Files of a pushed 'alice' adapter, published to the offline HF cache as someone/alice."""
    from test_hub import make_zoo, publish_to_cache, pushed_files

    root = tmp_path_factory.mktemp("hub")
    adapter = make_adapter(tiny_model_dir, root / "adapter" / "alice", seed=11)
    files = pushed_files(make_zoo(root / "src", adapter, hub_model_id), "alice")
    publish_to_cache("someone/alice", files, sha="5" * 40)
    corrupt = dict(files)
    corrupt["adapter_model.safetensors"] = files["adapter_model.safetensors"][:-8] + b"\0" * 8
    publish_to_cache("someone/alice-corrupt", corrupt, sha="6" * 40)
    return files


def test_failed_pull_overwrite_keeps_the_old_adapter_and_entry(zoo_copy, hub_source, monkeypatch):
    from zoo import hub

    before = snapshot(zoo_copy.parent)
    # A corrupt download is refused before anything is touched.
    with pytest.raises(hub.HubError, match="sha256"):
        hub.pull_adapter(zoo_copy, "someone/alice-corrupt", entry_id="alice", overwrite=True)
    assert snapshot(zoo_copy.parent) == before

    # Registering fails after the new folder is in place (lock timeout, Ctrl-C, disk full...):
    # the old folder comes back, so the old entry's checksum still matches its weights.
    def locked(*args, **kwargs):
        raise RegistryError("could not lock registry.json within 60 s")

    monkeypatch.setattr(hub, "register_entry", locked)
    with pytest.raises(RegistryError, match="could not lock"):
        hub.pull_adapter(zoo_copy, "someone/alice", entry_id="alice", overwrite=True)
    assert snapshot(zoo_copy.parent) == before
    assert sorted(p.name for p in (zoo_copy.parent / "adapters").iterdir()) == [
        "alice",
        "alice_twin",
        "bob",
        "carol",
    ]
    # ...and a new id whose registration fails leaves no orphan folder.
    with pytest.raises(RegistryError, match="could not lock"):
        hub.pull_adapter(zoo_copy, "someone/alice", entry_id="dora")
    assert not (zoo_copy.parent / "adapters" / "dora").exists()
    monkeypatch.undo()
    entry = hub.pull_adapter(zoo_copy, "someone/alice", entry_id="alice", overwrite=True)
    assert load_registry(zoo_copy).get("alice").checksum == entry.checksum


def test_failed_push_leaves_the_registry_unchanged(tmp_path, tiny_model_dir, hub_model_id):
    from test_hub import FakeHfApi, make_zoo

    from zoo.hub import push_adapter

    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter" / "alice", seed=12)
    registry = make_zoo(tmp_path / "zoo", adapter, hub_model_id)
    before = snapshot(registry.parent)

    class Failing(FakeHfApi):
        def create_commit(self, *args, **kwargs):
            raise ConnectionError("the Hub is unreachable")

    with pytest.raises(ConnectionError, match="unreachable"):
        push_adapter(registry, "alice", api=Failing())
    assert snapshot(registry.parent) == before
    assert load_registry(registry).get("alice").hub_revision is None


def test_a_trailing_newline_is_not_a_valid_name(tmp_path):
    """`re.match(r"^...$")` also accepts 'name\\n' ('$' matches before a final newline)."""
    from training.fetch import user_folder
    from zoo.hub import HubError, is_hub_model_id, validate_repo_id

    with pytest.raises(RegistryError, match=r"adapter id 'alice\\n' may only hold"):
        validate_id("alice\n")
    with pytest.raises(HubError, match=r"repo id 'someone/alice\\n' must look like"):
        validate_repo_id("someone/alice\n")
    with pytest.raises(ValueError, match=r"handle 'zippy\\n' cannot be a folder name"):
        user_folder(tmp_path, "zippy\n")
    posts = write_jsonl(tmp_path / "posts.jsonl", [{"text": "hello there you"}])
    with pytest.raises(
        SourceError, match=r"'zippy\\n' \(from posts\.jsonl\) is not a usable handle"
    ):
        fetch_posts("jsonl", str(posts), handle="zippy\n")
    assert not is_hub_model_id("gpt2\n") and is_hub_model_id("gpt2")
