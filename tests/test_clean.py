"""Cleaning: examples, and hypothesis properties for clean_text and the stats arithmetic."""

import logging
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.clean import (
    CleanResult,
    NotEnoughTextError,
    check_enough_text,
    clean_posts,
    clean_text,
    is_short,
)
from training.sources import Post
from zoo.registry import PostStats

settings.register_profile("clean", max_examples=150, deadline=None)
settings.load_profile("clean")

WORDS = st.from_regex(r"[A-Za-z][A-Za-z0-9']{0,8}", fullmatch=True)
MENTIONS = st.from_regex(r"@[A-Za-z0-9_]{1,15}", fullmatch=True)
HASHTAGS = st.from_regex(r"#[A-Za-z0-9_]{1,12}", fullmatch=True)
EMOJI = st.sampled_from(["🌅", "😅", "👩🏽‍🎨", "🇫🇷", "❤️", "🖋️", "✨"])
URLS = st.sampled_from(
    [
        "https://t.co/Abc123",
        "http://example.com/a?b=c&amp;d=e",
        "www.example.org/shop",
        "HTTPS://EXAMPLE.COM/X",
        "https://",
    ]
)
SPACES = st.sampled_from([" ", "  ", "\n", "\n\n", "\t", " \r\n ", "\u00a0"])
KEPT_TOKENS = st.one_of(WORDS, MENTIONS, HASHTAGS, EMOJI)


def test_clean_text_examples():
    assert (
        clean_text("Hello &amp; welcome https://t.co/abc\n\nnew line www.example.com end")
        == "Hello & welcome new line end"
    )
    assert clean_text("  &lt;3 @bob #art 🌅\n") == "<3 @bob #art 🌅"
    assert clean_text("https://t.co/only") == ""
    assert clean_text("double &amp;amp; escaped") == "double & escaped"


def test_short_rule_is_huggingtweets_boring_tweet():
    assert is_short("lol ok")
    assert is_short("@bob #tag nice")  # only one plain word
    assert is_short("")
    assert not is_short("@bob I love this")
    assert not is_short("three plain words")


def test_clean_posts_counts_each_row_of_the_table():
    posts = [
        Post("RT @bob: a retweet flagged only by its text"),
        Post("a repost flagged by the source", is_repost=True),
        Post("lol ok"),
        Post("https://t.co/x @bob"),
        Post("@bob thanks, that helped a lot", is_reply=True),
        Post("Sunrise sketch &amp; coffee https://t.co/x\n#inktober"),
    ]
    result = clean_posts(posts)
    assert result.stats == PostStats(downloaded=6, retweets=2, short=2, kept=2)
    assert result.texts == ["@bob thanks, that helped a lot", "Sunrise sketch & coffee #inktober"]
    dropped = clean_posts(posts, drop_replies=True)
    assert dropped.stats == PostStats(downloaded=6, retweets=2, short=3, kept=1)
    assert clean_posts([]).stats == PostStats()


def make_result(texts):
    n = len(texts)
    return CleanResult(texts=texts, stats=PostStats(downloaded=n + 3, retweets=2, short=1, kept=n))


def test_check_enough_text_names_the_user_and_numbers():
    with pytest.raises(NotEnoughTextError) as raised:
        check_enough_text("zippy", make_result(["x" * 100] * 10))
    message = str(raised.value)
    assert "@zippy" in message
    assert "1000 characters kept from 10 posts (13 downloaded" in message
    assert "at least 6000" in message
    assert isinstance(raised.value, ValueError)


def test_check_enough_text_warns_under_40000(caplog):
    with caplog.at_level(logging.WARNING, logger="training.clean"):
        check_enough_text("zippy", make_result(["x" * 100] * 100))
    assert "little text for @zippy: 10000 characters" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="training.clean"):
        check_enough_text("zippy", make_result(["x" * 100] * 400))
    assert caplog.text == ""


@given(st.text())
def test_clean_text_is_idempotent_and_tidy(text):
    cleaned = clean_text(text)
    assert clean_text(cleaned) == cleaned
    assert cleaned == " ".join(cleaned.split())  # no newlines, tabs, double or edge spaces
    assert "\n" not in cleaned
    assert not re.search(r"https?://", cleaned, re.IGNORECASE)
    assert not any(word.lower().startswith("www.") for word in cleaned.split())


@given(st.lists(st.one_of(KEPT_TOKENS, URLS, st.just("&amp;")), max_size=20), st.data())
def test_clean_text_keeps_mentions_hashtags_emoji_and_drops_urls(tokens, data):
    separators = [data.draw(SPACES) for _ in tokens]
    text = "".join(sep + token for sep, token in zip(separators, tokens, strict=True))
    expected = [
        "&" if token == "&amp;" else token
        for token in tokens
        if not re.match(r"(https?://|www\.)", token, re.IGNORECASE)
    ]
    assert clean_text(text) == " ".join(expected)


POSTS = st.builds(
    Post,
    text=st.one_of(
        st.text(max_size=40),
        st.lists(st.one_of(KEPT_TOKENS, URLS), max_size=8).map(" ".join),
        st.lists(KEPT_TOKENS, max_size=6).map(lambda t: "RT @bob: " + " ".join(t)),
    ),
    is_repost=st.booleans(),
    is_reply=st.booleans(),
)


@settings(max_examples=60)
@given(st.lists(POSTS, max_size=20), st.booleans())
def test_stats_add_up(posts, drop_replies):
    result = clean_posts(posts, drop_replies=drop_replies)
    stats = result.stats
    assert stats.retweets + stats.short + stats.kept == stats.downloaded == len(posts)
    assert stats.kept == len(result.texts)
    assert stats.retweets == sum(p.is_repost or p.text.startswith("RT @") for p in posts)
    assert all(not is_short(t) and t == clean_text(t) for t in result.texts)
    if drop_replies:
        assert stats.kept <= sum(not p.is_reply for p in posts)
