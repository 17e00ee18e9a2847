"""Mastodon posts through an instance's public API (no login).

    fetch_posts("mastodon", "@Gargron@mastodon.social", limit=1000)

The account is looked up with `/api/v1/accounts/lookup?acct=name`, then its statuses are paged
40 at a time with `max_id`. Boosts (`reblog` set) are reposts, `in_reply_to_id` marks replies.
`content` is HTML: paragraphs and `<br>` become newlines, tags go, entities are unescaped.
`Profile.handle` is the account's username without the instance, so that it is a valid zoo id.
"""

from __future__ import annotations

import html
import logging
import re
from contextlib import nullcontext

import httpx
from tqdm.auto import tqdm

from training.sources import Post, Profile, SourceError, UserPosts
from training.sources.network import RetryPolicy, get_json, make_client

logger = logging.getLogger(__name__)

PAGE_SIZE = 40  # the API's maximum
_ACCT_RE = re.compile(r"^@?(?P<name>[A-Za-z0-9_]+)@(?P<instance>[A-Za-z0-9.-]+\.[A-Za-z]{2,})$")
_URL_RE = re.compile(r"^https?://(?P<instance>[A-Za-z0-9.-]+)/@(?P<name>[A-Za-z0-9_]+)/?$")


def parse_account(user: str) -> tuple[str, str]:
    """`@name@instance`, `name@instance` or `https://instance/@name` -> (name, instance)."""
    match = _ACCT_RE.match(user.strip()) or _URL_RE.match(user.strip())
    if not match:
        raise SourceError(
            f"Mastodon user {user!r} should look like @name@instance (e.g. @Gargron@mastodon.social)"
        )
    return match["name"], match["instance"].lower()


def html_to_text(content: str) -> str:
    text = re.sub(r"<br\s*/?>", "\n", content, flags=re.IGNORECASE)
    text = re.sub(r"</p>\s*<p[^>]*>", "\n\n", text, flags=re.IGNORECASE)
    text = re.sub(r"<[^>]*>", "", text)
    return html.unescape(text).strip()


def fetch(
    user: str,
    *,
    limit: int | None = None,
    base_url: str = "",
    max_pages: int = 250,
    retry: RetryPolicy | None = None,
    client: httpx.Client | None = None,
) -> UserPosts:
    name, instance = parse_account(user)
    base = (base_url or f"https://{instance}").rstrip("/")
    acct = f"{name}@{instance}"
    with nullcontext(client) if client else make_client() as http:
        account = get_json(
            http, f"{base}/api/v1/accounts/lookup", {"acct": name}, user=acct, retry=retry
        )
        if not isinstance(account, dict) or not account.get("id"):
            raise SourceError(f"unexpected Mastodon account answer for {acct!r}: {account!r:.200}")
        profile = Profile(
            handle=account.get("username") or name,
            display_name=account.get("display_name") or account.get("username") or name,
            avatar_url=account.get("avatar") or "",
            source="mastodon",
        )
        posts = _fetch_statuses(
            http, f"{base}/api/v1/accounts/{account['id']}/statuses", acct, limit, max_pages, retry
        )
    if not posts and account.get("locked"):
        raise SourceError(f"private or protected account {acct!r}: its posts are followers-only")
    if not posts:
        raise SourceError(f"no posts for Mastodon user {acct!r}")
    return UserPosts(profile=profile, posts=posts)


def _fetch_statuses(http, url, acct, limit, max_pages, retry) -> list[Post]:
    posts: list[Post] = []
    max_id, seen_ids = None, set()
    with tqdm(total=limit, desc=f"mastodon @{acct}", unit="post", disable=None) as bar:
        for _ in range(max_pages):
            page_size = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - len(posts))
            page = get_json(
                http, url, {"limit": page_size, "max_id": max_id}, user=acct, retry=retry
            )
            if not isinstance(page, list):
                raise SourceError(
                    f"unexpected Mastodon statuses answer for {acct!r}: {page!r:.200}"
                )
            new = [p for p in map(_parse_status, page) if p is not None and p.id not in seen_ids]
            seen_ids.update(p.id for p in new)
            posts.extend(new)
            bar.update(len(new))
            if not new or (limit is not None and len(posts) >= limit):
                return posts[:limit]
            max_id = new[-1].id
    logger.warning("stopped paging @%s after max_pages=%d pages", acct, max_pages)
    return posts[:limit]


def _parse_status(status: object) -> Post | None:
    if not isinstance(status, dict) or "id" not in status:
        logger.warning("skipping malformed Mastodon status: %r", status)
        return None
    reblog = status.get("reblog")
    content = (reblog if isinstance(reblog, dict) else status).get("content") or ""
    return Post(
        text=html_to_text(content) if isinstance(content, str) else "",
        id=str(status["id"]),
        created_at=str(status.get("created_at") or ""),
        is_repost=reblog is not None,
        is_reply=status.get("in_reply_to_id") is not None,
    )
