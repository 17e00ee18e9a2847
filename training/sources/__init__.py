"""Post sources: one module per place an account's posts can come from, all returning `UserPosts`.

    from training.sources import fetch_posts
    user_posts = fetch_posts("fortune", "zippy", limit=100)        # offline demo account
    user_posts = fetch_posts("x-archive", "twitter-archive.zip")   # your own X/Twitter archive

Each source module is imported only when it is used, so optional dependencies (tweepy for
`x-api`) are needed only by the people who use them.
"""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass, field
from typing import Literal, get_args

SourceName = Literal["x-archive", "bluesky", "mastodon", "x-api", "jsonl", "csv", "fortune"]
SOURCES: tuple[str, ...] = get_args(SourceName)

# source name -> (module in this package, function taking (user, *, limit, **options))
_FETCHERS = {
    "x-archive": ("x_archive", "fetch"),
    "bluesky": ("bluesky", "fetch"),
    "mastodon": ("mastodon", "fetch"),
    "x-api": ("x_api", "fetch"),
    "jsonl": ("files", "fetch_jsonl"),
    "csv": ("files", "fetch_csv"),
    "fortune": ("fortune", "fetch"),
}


class SourceError(RuntimeError):
    """A user-facing problem with a source: unknown user, private account, empty feed, bad file..."""


@dataclass
class Post:
    text: str  # raw text as the source gives it (HTML allowed; clean.py cleans)
    id: str = ""
    created_at: str = ""  # ISO 8601 when known
    is_repost: bool = False  # retweet / repost / boost
    is_reply: bool = False


@dataclass
class Profile:
    handle: str  # without '@'
    display_name: str = ""
    avatar_url: str = ""
    source: str = ""  # one of SOURCES


# A handle that is also a plain folder name under the data dir (fetch saves `<data_dir>/<handle>`).
_FOLDER_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def is_folder_name(handle: str) -> bool:
    return bool(_FOLDER_NAME_RE.fullmatch(handle)) and ".." not in handle


@dataclass
class UserPosts:
    profile: Profile
    posts: list[Post] = field(default_factory=list)


def fetch_posts(source: str, user: str, *, limit: int | None = None, **options) -> UserPosts:
    """Fetch `user`'s posts (newest first where the source knows dates) from `source`.

    `user` is a handle for network sources, a path for file sources (x-archive zip or folder,
    jsonl, csv) and a category for `fortune`. `limit` caps the number of posts downloaded
    (reposts included, as they count in the card's table). Raises `SourceError`.
    """
    if source not in _FETCHERS:
        raise SourceError(f"unknown source {source!r}; choose one of: {', '.join(SOURCES)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise SourceError(f"limit must be a positive integer or None, got {limit!r}")
    if not isinstance(user, str) or not user.strip():
        raise SourceError(
            f"source {source!r} needs a user (handle, path or category), got {user!r}"
        )
    module_name, function_name = _FETCHERS[source]
    module = importlib.import_module(f"{__name__}.{module_name}")
    fetch = getattr(module, function_name)
    accepted = set(inspect.signature(fetch).parameters) - {"user", "limit"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise SourceError(
            f"source {source!r} does not take option(s) {', '.join(unknown)}; "
            f"it takes: {', '.join(sorted(accepted)) or 'none'}"
        )
    user_posts = fetch(user.strip(), limit=limit, **options)
    if not user_posts.posts:
        raise SourceError(f"no posts found for {user!r} ({source})")
    if limit is not None:
        user_posts.posts = user_posts.posts[:limit]
    return user_posts
