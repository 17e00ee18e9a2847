"""X/Twitter API v2 through tweepy, with your own bearer token (`pip install huggingtweets[x-api]`).

    X_BEARER_TOKEN=... huggingtweets fetch --source x-api --user jack

The token comes from the `bearer_token` option or the X_BEARER_TOKEN environment variable and is
never logged or saved. Tests inject a fake `client` with tweepy's `get_user`/`get_users_tweets`.
The API returns at most the latest 3200 posts of an account.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from tqdm.auto import tqdm

from training.sources import Post, Profile, SourceError, UserPosts

logger = logging.getLogger(__name__)

PAGE_SIZE = 100  # the endpoint's maximum (minimum 5)


def fetch(
    user: str,
    *,
    limit: int | None = None,
    bearer_token: str = "",
    client: Any = None,
    max_pages: int = 40,
) -> UserPosts:
    username = user.strip().lstrip("@")
    errors = _tweepy_errors()
    token = bearer_token or os.environ.get("X_BEARER_TOKEN", "")
    if client is None:
        client = _make_client(token)
    # tweepy logs each request's headers, bearer token included, at DEBUG (`huggingtweets -v`).
    redact = _RedactToken(token)
    tweepy_logger = logging.getLogger("tweepy.client")
    tweepy_logger.addFilter(redact)
    try:
        response = client.get_user(username=username, user_fields=["name", "profile_image_url"])
        account = response.data
        if account is None:
            raise SourceError(f"unknown user {username!r} on X ({_first_error(response)})")
        profile = Profile(
            handle=getattr(account, "username", "") or username,
            display_name=getattr(account, "name", "") or username,
            avatar_url=getattr(account, "profile_image_url", "") or "",
            source="x-api",
        )
        posts = _fetch_tweets(client, account.id, username, limit, max_pages)
    except errors["NotFound"] as error:
        raise SourceError(f"unknown user {username!r} on X ({error})") from error
    except errors["Unauthorized"] as error:
        raise SourceError(f"X API rejected the bearer token (401 Unauthorized): {error}") from error
    except errors["Forbidden"] as error:
        raise SourceError(
            f"private or protected account {username!r}, or your API plan lacks access: {error}"
        ) from error
    except errors["TooManyRequests"] as error:
        raise SourceError(
            f"X API rate limit reached while fetching {username!r}: {error}"
        ) from error
    except errors["TweepyException"] as error:
        raise SourceError(f"X API request for {username!r} failed: {error}") from error
    finally:
        tweepy_logger.removeFilter(redact)
    if not posts:
        raise SourceError(f"no posts for X user {username!r} (protected, or nothing posted)")
    return UserPosts(profile=profile, posts=posts)


class _RedactToken(logging.Filter):
    """Replace the bearer token in log records (tweepy's DEBUG lines print request headers)."""

    def __init__(self, token: str):
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        if self.token and self.token in (message := record.getMessage()):
            record.msg, record.args = message.replace(self.token, "<redacted>"), None
        return True


def _make_client(bearer_token: str):
    if not bearer_token:
        raise SourceError(
            "the x-api source needs a bearer token: pass bearer_token or set X_BEARER_TOKEN"
        )
    try:
        import tweepy
    except ImportError as error:
        raise SourceError(
            "the x-api source needs tweepy: pip install 'huggingtweets[x-api]'"
        ) from error
    return tweepy.Client(bearer_token=bearer_token, wait_on_rate_limit=True)


def _tweepy_errors() -> dict[str, type[BaseException] | tuple]:
    names = ("NotFound", "Unauthorized", "Forbidden", "TooManyRequests", "TweepyException")
    try:
        import tweepy.errors
    except ImportError:  # an injected client without tweepy installed raises none of these
        return dict.fromkeys(names, ())
    return {name: getattr(tweepy.errors, name) for name in names}


def _fetch_tweets(client, user_id, username, limit, max_pages) -> list[Post]:
    posts: list[Post] = []
    token = None
    with tqdm(total=limit, desc=f"x-api @{username}", unit="post", disable=None) as bar:
        for _ in range(max_pages):
            wanted = PAGE_SIZE if limit is None else limit - len(posts)
            response = client.get_users_tweets(
                user_id,
                max_results=max(5, min(PAGE_SIZE, wanted)),
                tweet_fields=["created_at", "referenced_tweets", "note_tweet"],
                pagination_token=token,
            )
            page = [_parse_tweet(t) for t in response.data or []]
            posts.extend(page)
            bar.update(len(page))
            token = (response.meta or {}).get("next_token")
            if not page or not token or (limit is not None and len(posts) >= limit):
                break
    return posts[:limit]


def _parse_tweet(tweet) -> Post:
    note = getattr(tweet, "note_tweet", None) or {}
    text = note.get("text") if isinstance(note, dict) else None
    kinds = {_get(ref, "type") for ref in getattr(tweet, "referenced_tweets", None) or []}
    created = getattr(tweet, "created_at", None)
    return Post(
        text=text or getattr(tweet, "text", "") or "",
        id=str(getattr(tweet, "id", "")),
        created_at=created.isoformat() if hasattr(created, "isoformat") else str(created or ""),
        is_repost="retweeted" in kinds,
        is_reply="replied_to" in kinds,
    )


def _get(obj, key: str):
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _first_error(response) -> str:
    errors = getattr(response, "errors", None) or []
    if errors and isinstance(errors[0], dict):
        return errors[0].get("detail") or errors[0].get("title") or "no details"
    return "no such account"
