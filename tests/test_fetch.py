"""The fetch stage: config validation, saving and loading a user's posts, atomic overwrites."""

import dataclasses
import json
import os
from types import SimpleNamespace

import pytest
import tweepy

import training.fetch
from training.fetch import FetchConfig, load_user_posts, run, save_user_posts
from training.sources import Post, Profile, SourceError, UserPosts


def test_docstring_has_a_runnable_example():
    assert "huggingtweets fetch --source fortune --user zippy" in training.fetch.__doc__


def test_every_field_has_help():
    assert all(f.metadata.get("help") for f in dataclasses.fields(FetchConfig))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "myspace", "user": "tom"}, "source must be one of .* got 'myspace'"),
        ({"source": "fortune", "user": " "}, "user must be set"),
        (
            {"source": "fortune", "user": "zippy", "limit": 0},
            "limit must be a positive integer, got 0",
        ),
        (
            {"source": "bluesky", "user": "a", "base_url": "ftp://x"},
            "base_url must start with http",
        ),
        ({"source": "fortune", "user": "zippy", "base_url": "http://x"}, "base_url only applies"),
        (
            {"source": "bluesky", "user": "a", "bearer_token": "t"},
            "bearer_token only applies to x-api",
        ),
        ({"source": "fortune", "user": "zippy", "handle": "z"}, "handle only applies"),
        ({"source": "fortune", "user": "zippy", "data_dir": ""}, "data_dir must be a folder"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FetchConfig(**kwargs)


def test_run_saves_and_loads_back(tmp_path):
    folder = run(FetchConfig(source="fortune", user="zippy", data_dir=str(tmp_path), limit=50))
    assert folder == tmp_path / "zippy"
    assert sorted(p.name for p in folder.iterdir()) == ["posts.jsonl", "profile.json"]
    profile = json.loads((folder / "profile.json").read_text(encoding="utf-8"))
    assert profile["handle"] == "zippy" and profile["post_count"] == 50
    loaded = load_user_posts(folder)
    assert loaded.profile == Profile("zippy", "Zippy (fortune)", "", "fortune")
    assert len(loaded.posts) == 50
    assert loaded.posts[0].text.startswith("A can of ASPARAGUS")


def test_round_trip_keeps_unicode_and_flags(tmp_path):
    user_posts = UserPosts(
        Profile("ada", "Ada 🌙", "https://x/a.jpg", "jsonl"),
        [
            Post("héllo\nworld 🌅", "1", "2024-01-01T00:00:00+00:00", True, False),
            Post("b", is_reply=True),
        ],
    )
    folder = save_user_posts(user_posts, tmp_path)
    assert load_user_posts(folder) == user_posts
    assert "🌅" in (folder / "posts.jsonl").read_text(encoding="utf-8")


def test_failed_fetch_keeps_the_earlier_good_one(tmp_path):
    folder = run(FetchConfig(source="fortune", user="zippy", data_dir=str(tmp_path), limit=5))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    bad = tmp_path / "zippy.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(SourceError, match="line 2: not valid JSON"):
        run(FetchConfig(source="jsonl", user=str(bad), data_dir=str(tmp_path)))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_interrupted_write_leaves_old_files_and_no_temp_files(tmp_path, monkeypatch):
    folder = run(FetchConfig(source="fortune", user="zippy", data_dir=str(tmp_path), limit=5))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    real_fsync, calls = os.fsync, []

    def disk_full(fd):  # the posts file is written, the profile is not
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run(FetchConfig(source="fortune", user="zippy", data_dir=str(tmp_path), limit=7))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert len(calls) == 2


def test_bearer_token_is_never_saved(tmp_path, monkeypatch):
    secret = "AAAA-very-secret-token"
    seen = {}

    class Client:
        def __init__(self, bearer_token, **kwargs):
            seen["token"] = bearer_token

        def get_user(self, *, username, user_fields):
            return tweepy.Response(SimpleNamespace(id=1, username=username, name="Ada"), {}, [], {})

        def get_users_tweets(self, user_id, **kwargs):
            return tweepy.Response([SimpleNamespace(id=5, text="hello there world")], {}, [], {})

    monkeypatch.setattr(tweepy, "Client", Client)
    cfg = FetchConfig(source="x-api", user="ada", data_dir=str(tmp_path), bearer_token=secret)
    assert secret not in repr(cfg)
    folder = run(cfg)
    assert seen["token"] == secret
    assert all(secret not in p.read_text(encoding="utf-8") for p in folder.iterdir())


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"profile\.json not found; run `huggingtweets fetch"
    ):
        load_user_posts(tmp_path / "nobody")
    folder = save_user_posts(UserPosts(Profile("ada"), [Post("a"), Post("b")]), tmp_path)
    (folder / "posts.jsonl").write_text('{"text": "a"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"posts\.jsonl line 2 is corrupt"):
        load_user_posts(folder)
    (folder / "posts.jsonl").write_text('{"text": 3}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 1: 'text' is not a string"):
        load_user_posts(folder)
    (folder / "profile.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"profile\.json is corrupt"):
        load_user_posts(folder)
    (folder / "profile.json").write_text('{"display_name": "no handle"}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"profile\.json is corrupt"):
        load_user_posts(folder)


def test_unsafe_handles_are_refused(tmp_path):
    for handle in ("../evil", "a/b", "", ".."):
        with pytest.raises(ValueError, match="cannot be a folder name"):
            save_user_posts(UserPosts(Profile(handle), [Post("x")]), tmp_path)
