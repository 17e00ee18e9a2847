"""Bluesky posts through the public AppView (no login): profile, then the author feed page by page.

    fetch_posts("bluesky", "alice.bsky.social", limit=2000)

Reposts carry `reason.$type == "app.bsky.feed.defs#reasonRepost"`, replies `post.record.reply`.
Paging stops when the cursor is missing or repeats, a page is empty, `limit` is reached, or after
`max_pages` pages (a server that pages forever cannot hang a fetch).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

import httpx
from tqdm.auto import tqdm

from training.sources import Post, Profile, SourceError, UserPosts
from training.sources.network import RetryPolicy, get_json, make_client

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://public.api.bsky.app"
PAGE_SIZE = 100  # the AppView's maximum
REPOST = "app.bsky.feed.defs#reasonRepost"


def fetch(
    user: str,
    *,
    limit: int | None = None,
    base_url: str = DEFAULT_BASE_URL,
    max_pages: int = 200,
    retry: RetryPolicy | None = None,
    client: httpx.Client | None = None,
) -> UserPosts:
    actor = user.strip().lstrip("@")
    base = (base_url or DEFAULT_BASE_URL).rstrip("/")
    with nullcontext(client) if client else make_client() as http:
        profile_json = get_json(
            http,
            f"{base}/xrpc/app.bsky.actor.getProfile",
            {"actor": actor},
            user=actor,
            retry=retry,
            is_unknown_user=_is_unknown_actor,
        )
        if not isinstance(profile_json, dict) or not profile_json.get("handle"):
            raise SourceError(
                f"unexpected Bluesky profile answer for {actor!r}: {profile_json!r:.200}"
            )
        profile = Profile(
            handle=profile_json["handle"],
            display_name=profile_json.get("displayName") or profile_json["handle"],
            avatar_url=profile_json.get("avatar") or "",
            source="bluesky",
        )
        posts = _fetch_feed(http, base, actor, limit, max_pages, retry)
    if not posts:
        raise SourceError(f"no posts for Bluesky user {actor!r}")
    return UserPosts(profile=profile, posts=posts)


def _fetch_feed(http, base, actor, limit, max_pages, retry) -> list[Post]:
    posts: list[Post] = []
    seen: set[tuple[str, bool]] = set()
    cursor, seen_cursors = None, set()
    with tqdm(total=limit, desc=f"bluesky @{actor}", unit="post", disable=None) as bar:
        for _ in range(max_pages):
            page_size = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - len(posts))
            page = get_json(
                http,
                f"{base}/xrpc/app.bsky.feed.getAuthorFeed",
                {"actor": actor, "limit": page_size, "cursor": cursor},
                user=actor,
                retry=retry,
                is_unknown_user=_is_unknown_actor,
            )
            feed = page.get("feed") if isinstance(page, dict) else None
            if not isinstance(feed, list):
                raise SourceError(f"unexpected Bluesky feed answer for {actor!r}: {page!r:.200}")
            for item in feed:
                post = _parse_item(item, actor)
                if post is not None and (post.id, post.is_repost) not in seen:
                    seen.add((post.id, post.is_repost))
                    posts.append(post)
                    bar.update()
            cursor = page.get("cursor")
            if not feed or not cursor or cursor in seen_cursors:
                return posts[:limit]
            if limit is not None and len(posts) >= limit:
                return posts[:limit]
            seen_cursors.add(cursor)
    logger.warning("stopped paging @%s after max_pages=%d pages", actor, max_pages)
    return posts[:limit]


def _parse_item(item: object, actor: str) -> Post | None:
    try:
        post, record = item["post"], item["post"]["record"]
        text = record.get("text", "")
    except (KeyError, TypeError, AttributeError):
        logger.warning("skipping malformed Bluesky feed item for %s: %r", actor, item)
        return None
    reason = item.get("reason") or {}
    return Post(
        text=text if isinstance(text, str) else "",
        id=str(post.get("uri", "")),
        created_at=str(record.get("createdAt", "")),
        is_repost=reason.get("$type") == REPOST,
        is_reply=bool(record.get("reply")),
    )


def _is_unknown_actor(response: httpx.Response) -> bool:
    # The AppView answers 400 {"error": "InvalidRequest", "message": "Profile not found"} and
    # 400 "actor must be a valid did or a handle" for names that cannot exist.
    if response.status_code != 400:
        return False
    text = response.text.lower()
    return "profile not found" in text or "actornotfound" in text or "valid did or a handle" in text
