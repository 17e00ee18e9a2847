"""Bluesky and Mastodon sources against a real HTTP server on 127.0.0.1 serving recorded-shape JSON.

The server is conftest's `server` fixture (`_http.LocalServer`). Retries never sleep: a
`RetryPolicy` whose `sleep` records the waits it was asked for.
"""

import itertools
import socket

import pytest

from training.sources import SourceError, fetch_posts
from training.sources.mastodon import html_to_text, parse_account
from training.sources.network import RetryPolicy


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def retry(sleeps) -> RetryPolicy:
    return RetryPolicy(attempts=3, backoff_s=0.5, max_wait_s=5.0, sleep=sleeps.append)


def ok(body, headers=None):
    return lambda query: (200, body, headers or {})


# --- Bluesky -------------------------------------------------------------------------------------

PROFILE = "/xrpc/app.bsky.actor.getProfile"
FEED = "/xrpc/app.bsky.feed.getAuthorFeed"
BSKY_PROFILE = {
    "did": "did:plc:ada123",
    "handle": "ada.bsky.social",
    "displayName": "Ada Sketches",
    "avatar": "https://cdn.bsky.app/img/avatar/plain/did:plc:ada123/bafk@jpeg",
    "followersCount": 42,
}


def bsky_item(n, text, repost=False, reply=False):
    record = {"$type": "app.bsky.feed.post", "text": text, "createdAt": f"2024-05-0{n}T10:00:00Z"}
    if reply:
        record["reply"] = {"root": {"uri": "at://x/1"}, "parent": {"uri": "at://x/1"}}
    item = {
        "post": {
            "uri": f"at://did:plc:ada123/app.bsky.feed.post/{n}",
            "cid": f"bafy{n}",
            "author": {"did": "did:plc:other" if repost else "did:plc:ada123"},
            "record": record,
            "indexedAt": f"2024-05-0{n}T10:00:01Z",
        }
    }
    if repost:
        item["reason"] = {
            "$type": "app.bsky.feed.defs#reasonRepost",
            "by": {"did": "did:plc:ada123"},
        }
    return item


BSKY_PAGES = {
    None: {
        "feed": [
            bsky_item(9, "Ink test on the new paper, it bleeds a little 🖋️"),
            bsky_item(8, "somebody else's great post", repost=True),
            bsky_item(7, "@bob.bsky.social agreed, hatching beats smudging", reply=True),
        ],
        "cursor": "2024-05-07T10:00:00Z::c1",
    },
    "2024-05-07T10:00:00Z::c1": {
        "feed": [bsky_item(6, "Sketchbook tour tonight #art"), bsky_item(5, "lol")],
        "cursor": "2024-05-05T10:00:00Z::c2",
    },
    "2024-05-05T10:00:00Z::c2": {"feed": [], "cursor": "2024-05-05T10:00:00Z::c3"},
}


def serve_bluesky(server, pages=BSKY_PAGES):
    server.routes[PROFILE] = ok(BSKY_PROFILE)
    server.routes[FEED] = lambda q: (200, pages[q.get("cursor")], {})


def test_bluesky_pages_through_the_cursor(server, retry):
    serve_bluesky(server)
    user_posts = fetch_posts("bluesky", "@ada.bsky.social", base_url=server.url, retry=retry)
    assert user_posts.profile.handle == "ada.bsky.social"
    assert user_posts.profile.display_name == "Ada Sketches"
    assert user_posts.profile.avatar_url == BSKY_PROFILE["avatar"]
    assert user_posts.profile.source == "bluesky"
    posts = user_posts.posts
    assert [p.id.rsplit("/", 1)[1] for p in posts] == ["9", "8", "7", "6", "5"]
    assert [p.is_repost for p in posts] == [False, True, False, False, False]
    assert [p.is_reply for p in posts] == [False, False, True, False, False]
    assert posts[0].text == "Ink test on the new paper, it bleeds a little 🖋️"
    assert posts[0].created_at == "2024-05-09T10:00:00Z"
    feed_queries = server.paths(FEED)
    assert [q.get("cursor") for q in feed_queries] == [None, *list(BSKY_PAGES)[1:]]
    assert all(q["actor"] == "ada.bsky.social" and q["limit"] == "100" for q in feed_queries)


def test_bluesky_limit_asks_only_for_what_it_needs(server, retry):
    serve_bluesky(server)
    posts = fetch_posts("bluesky", "ada.bsky.social", limit=4, base_url=server.url, retry=retry)
    assert len(posts.posts) == 4
    assert [q["limit"] for q in server.paths(FEED)] == ["4", "1"]


def test_bluesky_unknown_user(server, retry):
    server.routes[PROFILE] = lambda q: (
        400,
        {"error": "InvalidRequest", "message": "Profile not found"},
        {},
    )
    with pytest.raises(SourceError, match="unknown user 'nobody.bsky.social'"):
        fetch_posts("bluesky", "nobody.bsky.social", base_url=server.url, retry=retry)


def test_404_is_an_unknown_user(server, retry):
    with pytest.raises(SourceError, match=r"unknown user 'ghost.bsky.social' \(HTTP 404"):
        fetch_posts("bluesky", "ghost.bsky.social", base_url=server.url, retry=retry)


def test_401_is_a_private_account(server, retry):
    server.routes[PROFILE] = ok(BSKY_PROFILE)
    server.routes[FEED] = lambda q: (401, {"error": "AuthMissing"}, {})
    with pytest.raises(SourceError, match="private or protected account 'ada.bsky.social'"):
        fetch_posts("bluesky", "ada.bsky.social", base_url=server.url, retry=retry)


def test_429_honours_retry_after_then_succeeds(server, retry, sleeps):
    calls = itertools.count()
    server.routes[PROFILE] = lambda q: (
        (429, {"error": "RateLimitExceeded"}, {"Retry-After": "2"})
        if next(calls) == 0
        else (200, BSKY_PROFILE, {})
    )
    server.routes[FEED] = lambda q: (200, BSKY_PAGES[q.get("cursor")], {})
    posts = fetch_posts("bluesky", "ada.bsky.social", base_url=server.url, retry=retry)
    assert len(posts.posts) == 5
    assert sleeps == [2.0]


def test_retry_after_is_capped(server, sleeps):
    calls = itertools.count()
    server.routes[PROFILE] = lambda q: (
        (429, {}, {"Retry-After": "3600"}) if next(calls) == 0 else (200, BSKY_PROFILE, {})
    )
    server.routes[FEED] = lambda q: (200, BSKY_PAGES[q.get("cursor")], {})
    retry = RetryPolicy(attempts=2, max_wait_s=7.0, sleep=sleeps.append)
    fetch_posts("bluesky", "ada.bsky.social", base_url=server.url, retry=retry)
    assert sleeps == [7.0]


def test_500_forever_gives_up_with_backoff(server, retry, sleeps):
    server.routes[PROFILE] = lambda q: (500, {"error": "InternalServerError"}, {})
    with pytest.raises(
        SourceError, match=r"giving up on 'ada.bsky.social' after 3 tries: HTTP 500"
    ):
        fetch_posts("bluesky", "ada.bsky.social", base_url=server.url, retry=retry)
    assert sleeps == [0.5, 1.0]
    assert len(server.paths(PROFILE)) == 3


def test_connection_refused_is_retried_then_reported(retry, sleeps, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(
        SourceError, match="giving up on 'ada.bsky.social' after 3 tries: ConnectError"
    ):
        fetch_posts("bluesky", "ada.bsky.social", base_url=f"http://127.0.0.1:{port}", retry=retry)
    assert len(sleeps) == 2


def test_malformed_json(server, retry):
    server.routes[PROFILE] = ok(BSKY_PROFILE)
    server.routes[FEED] = ok(b'{"feed": [ {"post": ')
    with pytest.raises(SourceError, match="malformed JSON from .*getAuthorFeed"):
        fetch_posts("bluesky", "ada.bsky.social", base_url=server.url, retry=retry)


def test_empty_feed_is_no_posts(server, retry):
    serve_bluesky(server, {None: {"feed": []}})
    with pytest.raises(SourceError, match="no posts for Bluesky user 'ada.bsky.social'"):
        fetch_posts("bluesky", "ada.bsky.social", base_url=server.url, retry=retry)


def test_endless_paging_stops_at_max_pages(server, retry):
    pages = itertools.count()

    def feed(query):
        n = next(pages)
        return 200, {"feed": [bsky_item(n % 9 + 1, f"post number {n}")], "cursor": f"c{n}"}, {}

    server.routes[PROFILE] = ok(BSKY_PROFILE)
    # every page has a new cursor and the same post uri pattern repeats: dedupe by uri
    server.routes[FEED] = feed
    user_posts = fetch_posts(
        "bluesky", "ada.bsky.social", base_url=server.url, retry=retry, max_pages=12
    )
    assert len(server.paths(FEED)) == 12
    assert len(user_posts.posts) == 9


def test_repeating_cursor_stops(server, retry):
    server.routes[PROFILE] = ok(BSKY_PROFILE)
    server.routes[FEED] = ok({"feed": [bsky_item(1, "the same page again")], "cursor": "same"})
    user_posts = fetch_posts("bluesky", "ada.bsky.social", base_url=server.url, retry=retry)
    assert len(server.paths(FEED)) == 2
    assert len(user_posts.posts) == 1


# --- Mastodon ------------------------------------------------------------------------------------

LOOKUP = "/api/v1/accounts/lookup"
STATUSES = "/api/v1/accounts/109000000000000001/statuses"
ACCOUNT = {
    "id": "109000000000000001",
    "username": "ada",
    "acct": "ada",
    "display_name": "Ada :inkpot:",
    "locked": False,
    "avatar": "https://files.example.social/accounts/avatars/109/original/ada.png",
}


def status(n, content, reblog=None, reply_to=None):
    return {
        "id": str(1000 + n),
        "created_at": f"2024-06-{n:02d}T08:00:00.000Z",
        "in_reply_to_id": reply_to,
        "in_reply_to_account_id": "5" if reply_to else None,
        "content": "" if reblog else content,
        "reblog": {"id": "77", "content": content, "account": {"acct": "bob@else.where"}}
        if reblog
        else None,
        "visibility": "public",
    }


MENTION = (
    '<span class="h-card" translate="no"><a href="https://example.social/@bob" '
    'class="u-url mention">@<span>bob</span></a></span>'
)
LINK = (
    '<a href="https://example.com/zine/spring" target="_blank" rel="nofollow noopener">'
    '<span class="invisible">https://</span><span class="">example.com/zine/spring</span>'
    '<span class="invisible"></span></a>'
)
MASTODON_PAGES = {
    None: [
        status(30, "<p>New zine is out &amp; it is tiny 📚</p><p>Get it here: " + LINK + "</p>"),
        status(29, "<p>first line<br>second line<br />third</p>", reblog=True),
        status(28, "<p>" + MENTION + " thanks for the tip!</p>", reply_to="999"),
    ],
    "1028": [
        status(
            27,
            '<p>Ink of the week <a href="https://example.social/tags/ink" class="mention hashtag">'
            "#<span>ink</span></a></p>",
        )
    ],
    "1027": [],
}


def serve_mastodon(server, account=ACCOUNT, pages=MASTODON_PAGES):
    server.routes[LOOKUP] = ok(account)
    server.routes[STATUSES] = lambda q: (200, pages[q.get("max_id")], {})


def test_mastodon_pages_with_max_id_and_converts_html(server, retry):
    serve_mastodon(server)
    user_posts = fetch_posts("mastodon", "@ada@example.social", base_url=server.url, retry=retry)
    assert user_posts.profile.handle == "ada"
    assert user_posts.profile.display_name == "Ada :inkpot:"
    assert user_posts.profile.avatar_url == ACCOUNT["avatar"]
    assert user_posts.profile.source == "mastodon"
    posts = user_posts.posts
    assert [p.id for p in posts] == ["1030", "1029", "1028", "1027"]
    assert posts[0].text == (
        "New zine is out & it is tiny 📚\n\nGet it here: https://example.com/zine/spring"
    )
    assert posts[1].text == "first line\nsecond line\nthird"
    assert [p.is_repost for p in posts] == [False, True, False, False]
    assert [p.is_reply for p in posts] == [False, False, True, False]
    assert posts[2].text == "@bob thanks for the tip!"
    assert posts[3].text == "Ink of the week #ink"
    assert server.paths(LOOKUP) == [{"acct": "ada"}]
    assert [q.get("max_id") for q in server.paths(STATUSES)] == [None, "1028", "1027"]
    assert {q["limit"] for q in server.paths(STATUSES)} == {"40"}


def test_mastodon_account_formats():
    assert parse_account("@Ada@Example.Social") == ("Ada", "example.social")
    assert parse_account("ada@example.social") == ("ada", "example.social")
    assert parse_account("https://example.social/@ada") == ("ada", "example.social")
    with pytest.raises(SourceError, match=r"should look like @name@instance"):
        parse_account("ada")
    with pytest.raises(SourceError, match=r"should look like @name@instance"):
        parse_account("ada@evil.example/../x")


def test_html_to_text_unescapes_once_tags_go():
    assert html_to_text("<p>a &lt;b&gt; c</p><p>d</p>") == "a <b> c\n\nd"


def test_mastodon_unknown_user(server, retry):
    server.routes[LOOKUP] = lambda q: (404, {"error": "Record not found"}, {})
    with pytest.raises(SourceError, match="unknown user 'nobody@example.social'"):
        fetch_posts("mastodon", "nobody@example.social", base_url=server.url, retry=retry)


def test_mastodon_locked_account_with_no_visible_posts(server, retry):
    serve_mastodon(server, account=ACCOUNT | {"locked": True}, pages={None: []})
    with pytest.raises(SourceError, match="private or protected account 'ada@example.social'"):
        fetch_posts("mastodon", "ada@example.social", base_url=server.url, retry=retry)


def test_mastodon_403_and_empty(server, retry):
    serve_mastodon(server, pages={None: []})
    with pytest.raises(SourceError, match="no posts for Mastodon user 'ada@example.social'"):
        fetch_posts("mastodon", "ada@example.social", base_url=server.url, retry=retry)
    server.routes[STATUSES] = lambda q: (403, {"error": "This action is not allowed"}, {})
    with pytest.raises(SourceError, match="private or protected account 'ada@example.social'"):
        fetch_posts("mastodon", "ada@example.social", base_url=server.url, retry=retry)


def test_mastodon_endless_paging_terminates(server, retry):
    counter = itertools.count()
    serve_mastodon(server)
    server.routes[STATUSES] = lambda q: (200, [status(1, f"<p>post {next(counter)}</p>")], {})
    # The same status id every time: no new posts, so paging stops after the second page.
    user_posts = fetch_posts("mastodon", "ada@example.social", base_url=server.url, retry=retry)
    assert len(user_posts.posts) == 1
    assert len(server.paths(STATUSES)) == 2

    server.routes[STATUSES] = lambda q: (200, [status(1, "x") | {"id": str(next(counter))}], {})
    user_posts = fetch_posts(
        "mastodon", "ada@example.social", base_url=server.url, retry=retry, max_pages=7
    )
    assert len(user_posts.posts) == 7


def test_mastodon_limit(server, retry):
    serve_mastodon(server)
    user_posts = fetch_posts(
        "mastodon", "ada@example.social", limit=2, base_url=server.url, retry=retry
    )
    assert [p.id for p in user_posts.posts] == ["1030", "1029"]
    assert [q["limit"] for q in server.paths(STATUSES)] == ["2"]


def test_unknown_option_is_a_clear_error():
    with pytest.raises(SourceError, match="source 'fortune' does not take option.*base_url"):
        fetch_posts("fortune", "zippy", base_url="http://127.0.0.1:1")
