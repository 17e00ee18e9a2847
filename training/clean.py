"""Cleaning, as huggingtweets did it: drop reposts and short posts, strip links, one line per post.

    result = clean_posts(user_posts.posts)          # CleanResult(texts, stats)
    check_enough_text("zippy", result)              # NotEnoughTextError below 6000 characters

`clean_text` unescapes HTML entities, removes URLs (http, https, www.), and collapses all
whitespace (newlines too) into single spaces; mentions, hashtags and emoji stay.

The "short" rule is huggingtweets' `boring_tweet`: a post is short when its cleaned text has fewer
than 3 words that contain none of "http", "@" or "#" (links, mentions and hashtags are not
writing). It is applied to the cleaned text because that is what the model trains on; an empty
cleaned text is therefore short too. Reposts (flagged by the source, or text starting "RT @")
are counted as retweets. With `drop_replies=True` replies are counted as short, so that
`retweets + short + kept == downloaded` always holds (the card's table adds up).
"""

from __future__ import annotations

import html
import logging
import re
from dataclasses import dataclass

from training.sources import Post
from zoo.registry import PostStats

logger = logging.getLogger(__name__)

MIN_CHARACTERS = 6000  # below this there is too little to learn a voice from
WARN_CHARACTERS = 40000
MIN_PLAIN_WORDS = 3
_URL_RE = re.compile(r"(?:https?://|\bwww\.)\S*", re.IGNORECASE)
_MARKERS = ("http", "@", "#")


class NotEnoughTextError(ValueError):
    """Too little text survives cleaning to train on."""


@dataclass
class CleanResult:
    texts: list[str]
    stats: PostStats


def clean_text(text: str) -> str:
    # Unescape to a fixed point so that cleaning is idempotent ("&amp;amp;" is "&" in the end);
    # each pass that changes the text shortens it, so this ends.
    while (unescaped := html.unescape(text)) != text:
        text = unescaped
    text = _URL_RE.sub(" ", text)
    return " ".join(text.split())


def is_short(cleaned: str) -> bool:
    """huggingtweets' `boring_tweet` on cleaned text (see the module docstring)."""
    plain = [w for w in cleaned.split() if not any(m in w.lower() for m in _MARKERS)]
    return len(plain) < MIN_PLAIN_WORDS


def is_repost(post: Post) -> bool:
    return post.is_repost or post.text.lstrip().startswith("RT @")


def clean_posts(posts: list[Post], drop_replies: bool = False) -> CleanResult:
    texts, retweets = [], 0
    for post in posts:
        if is_repost(post):
            retweets += 1
            continue
        if drop_replies and post.is_reply:
            continue  # counted as short below
        cleaned = clean_text(post.text)
        if not is_short(cleaned):
            texts.append(cleaned)
    short = len(posts) - retweets - len(texts)
    stats = PostStats(downloaded=len(posts), retweets=retweets, short=short, kept=len(texts))
    return CleanResult(texts=texts, stats=stats)


def check_enough_text(handle: str, result: CleanResult) -> None:
    characters = sum(len(t) for t in result.texts)
    stats = result.stats
    summary = (
        f"@{handle}: {characters} characters kept from {stats.kept} posts "
        f"({stats.downloaded} downloaded, {stats.retweets} reposts and {stats.short} short posts "
        "dropped)"
    )
    if characters < MIN_CHARACTERS:
        raise NotEnoughTextError(
            f"not enough text to train on for {summary}; need at least {MIN_CHARACTERS} "
            "characters: fetch more posts (raise --limit) or pick a more talkative account"
        )
    if characters < WARN_CHARACTERS:
        logger.warning(
            "little text for %s; under %d characters the model may mostly repeat itself",
            summary,
            WARN_CHARACTERS,
        )
