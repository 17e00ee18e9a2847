"""jsonl/csv file sources, fortune demo accounts and the `fetch_posts` dispatcher."""

import subprocess
import sys

import pytest

from training.sources import SOURCES, Post, SourceError, fetch_posts
from training.sources.fortune import list_categories, split_fortunes


def test_sources_and_unknown_source():
    assert SOURCES == ("x-archive", "bluesky", "mastodon", "x-api", "jsonl", "csv", "fortune")
    with pytest.raises(SourceError, match="unknown source 'myspace'; choose one of: x-archive, "):
        fetch_posts("myspace", "tom")


def test_sources_import_lazily():
    # In a fresh interpreter: this one has tweepy imported by other test modules already.
    code = (
        "import sys; from training.sources import fetch_posts; fetch_posts('fortune', 'zippy', "
        "limit=1); assert 'tweepy' not in sys.modules and 'httpx' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_bad_limit_and_user():
    with pytest.raises(SourceError, match="limit must be a positive integer"):
        fetch_posts("fortune", "zippy", limit=0)
    with pytest.raises(SourceError, match="needs a user"):
        fetch_posts("fortune", "  ")


def test_jsonl(tmp_path):
    path = tmp_path / "ada.jsonl"
    path.write_text(
        '{"text": "first post with &amp; stuff", "id": 1, "created_at": "2024-01-02", "is_reply": "yes"}\n'
        "\n"
        '{"text": "RT @bob: hi", "date": "2024-01-01", "is_repost": true}\n'
        '{"text": "plain", "is_repost": 0}\n',
        encoding="utf-8",
    )
    user_posts = fetch_posts("jsonl", str(path))
    assert user_posts.profile.handle == "ada"
    assert user_posts.profile.source == "jsonl"
    assert user_posts.posts == [
        Post("first post with &amp; stuff", "1", "2024-01-02", False, True),
        Post("RT @bob: hi", "", "2024-01-01", True, False),
        Post("plain", "", "", False, False),
    ]
    assert len(fetch_posts("jsonl", str(path), limit=2).posts) == 2
    named = fetch_posts("jsonl", str(path), handle="@ada_l", display_name="Ada L")
    assert (named.profile.handle, named.profile.display_name) == ("ada_l", "Ada L")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\n{"text": "broken\n', r"line 2: not valid JSON"),
        ('{"text": "ok"}\n["a list"]\n', r"line 2: expected a JSON object"),
        ('{"id": 3}\n', r"line 1: missing or non-text 'text' value"),
        (
            '{"text": "ok", "is_reply": "maybe"}\n',
            r"line 1: is_reply must be true/false, 1/0 or yes/no, got 'maybe'",
        ),
        ("\n\n", r"no posts in the file"),
    ],
)
def test_jsonl_bad_rows(tmp_path, content, message):
    path = tmp_path / "ada.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SourceError, match=message):
        fetch_posts("jsonl", str(path))


def test_csv(tmp_path):
    path = tmp_path / "posts.csv"
    path.write_text(
        "id,date,text,is_repost,is_reply\n"
        '1,2024-01-02,"multi\nline, with comma",no,1\n'
        "2,2024-01-01,second,TRUE,false\n",
        encoding="utf-8-sig",
    )
    user_posts = fetch_posts("csv", str(path), handle="ada")
    assert user_posts.posts == [
        Post("multi\nline, with comma", "1", "2024-01-02", False, True),
        Post("second", "2", "2024-01-01", True, False),
    ]
    assert user_posts.profile.source == "csv"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("id,body\n1,hello\n", r"no 'text' column \(columns: id, body\)"),
        (
            "text,is_repost\nhello,no\nworld,perhaps\n",
            r"line 3: is_repost must be .* got 'perhaps'",
        ),
        ("text\nhello\nhi,extra\n", r"line 3: more fields than columns"),
        ("", r"no 'text' column"),
    ],
)
def test_csv_bad_rows(tmp_path, content, message):
    path = tmp_path / "ada.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SourceError, match=message):
        fetch_posts("csv", str(path))


def test_file_errors(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        fetch_posts("jsonl", str(tmp_path / "missing.jsonl"))
    latin = tmp_path / "ada.csv"
    latin.write_bytes("text\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(SourceError, match=r"not UTF-8 text \(byte 8\)"):
        fetch_posts("csv", str(latin))
    spaced = tmp_path / "my posts.jsonl"
    spaced.write_text('{"text": "hello"}\n', encoding="utf-8")
    with pytest.raises(SourceError, match="'my posts' .* pass the handle option"):
        fetch_posts("jsonl", str(spaced))


def test_fortune_categories():
    categories = list_categories()
    assert {"zippy", "wisdom", "startrek"} <= set(categories)
    assert "LICENSE" not in categories
    user_posts = fetch_posts("fortune", "Zippy")
    assert user_posts.profile.handle == "zippy"
    assert user_posts.profile.display_name == "Zippy (fortune)"
    assert user_posts.profile.avatar_url == ""
    assert user_posts.profile.source == "fortune"
    assert len(user_posts.posts) > 500
    assert user_posts.posts[0].text.startswith("A can of ASPARAGUS")
    assert any("\n" in p.text for p in user_posts.posts)  # newlines kept; cleaning collapses
    assert all(line != "%" for p in user_posts.posts for line in p.text.splitlines())
    assert fetch_posts("fortune", "songs-poems").profile.display_name == "Songs Poems (fortune)"


def test_fortune_unknown_category_lists_choices():
    with pytest.raises(SourceError, match=r"unknown fortune category 'zipy'; available: .*zippy"):
        fetch_posts("fortune", "zipy")


def test_split_fortunes():
    assert split_fortunes("one\n%\ntwo\nlines\n%\n\n%\nthree\n") == ["one", "two\nlines", "three"]
