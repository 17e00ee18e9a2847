"""The X API source with a hand-written fake of tweepy.Client's two methods (the network edge)."""

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
import tweepy

from training.sources import SourceError, fetch_posts


def tweet(n, text, refs=(), note=None):
    return SimpleNamespace(
        id=1700 + n,
        text=text,
        created_at=datetime(2023, 9, n, 12, 0, tzinfo=UTC),
        referenced_tweets=[SimpleNamespace(type=t, id=1) for t in refs] or None,
        note_tweet={"text": note} if note else None,
    )


PAGES = {
    None: (
        [
            tweet(9, "Morning pages done, three spreads of hands today"),
            tweet(8, "RT @bob: perspective is a lie", refs=["retweeted"]),
            tweet(7, "@bob fair point, but the vanishing point disagrees", refs=["replied_to"]),
        ],
        "tok1",
    ),
    "tok1": (
        [
            tweet(
                6,
                "A very long post that the API truncates… https://t.co/x",
                note="A very long post that the API truncates, and here is the rest of it in full.",
            ),
            tweet(5, "quote of a friend", refs=["quoted"]),
        ],
        None,
    ),
}


class FakeClient:
    """Answers like tweepy.Client (v2) for one account; records the calls it got."""

    def __init__(self, pages=PAGES, user=True, raise_on_tweets=None):
        self.pages, self.user, self.raise_on_tweets = pages, user, raise_on_tweets
        self.calls = []

    def get_user(self, *, username, user_fields):
        self.calls.append(("get_user", username, tuple(user_fields)))
        if not self.user:
            errors = [{"title": "Not Found Error", "detail": f"Could not find user: {username}."}]
            return tweepy.Response(None, {}, errors, {})
        account = SimpleNamespace(
            id=42,
            username="ada_sketches",
            name="Ada Sketches",
            profile_image_url="https://pbs.twimg.com/profile_images/1/ada_normal.jpg",
        )
        return tweepy.Response(account, {}, [], {})

    def get_users_tweets(self, user_id, *, max_results, tweet_fields, pagination_token=None):
        self.calls.append(("get_users_tweets", user_id, max_results, pagination_token))
        assert set(tweet_fields) >= {"created_at", "referenced_tweets", "note_tweet"}
        if self.raise_on_tweets:
            raise self.raise_on_tweets
        data, next_token = self.pages[pagination_token]
        meta = {"result_count": len(data)} | ({"next_token": next_token} if next_token else {})
        return tweepy.Response(data, {}, [], meta)


def http_error(cls, status, reason):
    response = SimpleNamespace(
        status_code=status, reason=reason, json=lambda: {"errors": [{"message": reason}]}
    )
    return cls(response)


def test_pages_and_flags():
    client = FakeClient()
    user_posts = fetch_posts("x-api", "@ada_sketches", client=client)
    assert user_posts.profile.handle == "ada_sketches"
    assert user_posts.profile.display_name == "Ada Sketches"
    assert user_posts.profile.avatar_url.endswith("ada_normal.jpg")
    assert user_posts.profile.source == "x-api"
    posts = user_posts.posts
    assert [p.id for p in posts] == ["1709", "1708", "1707", "1706", "1705"]
    assert [p.is_repost for p in posts] == [False, True, False, False, False]
    assert [p.is_reply for p in posts] == [False, False, True, False, False]
    assert posts[3].text.endswith("here is the rest of it in full.")  # note_tweet wins
    assert posts[0].created_at == "2023-09-09T12:00:00+00:00"
    assert client.calls[0] == ("get_user", "ada_sketches", ("name", "profile_image_url"))
    assert [c[3] for c in client.calls[1:]] == [None, "tok1"]
    assert all(c[2] == 100 for c in client.calls[1:])


def test_limit_asks_for_at_least_five():
    client = FakeClient()
    user_posts = fetch_posts("x-api", "ada_sketches", limit=2, client=client)
    assert len(user_posts.posts) == 2
    assert [c[2] for c in client.calls[1:]] == [5]


def test_unknown_user():
    with pytest.raises(SourceError, match=r"unknown user 'nobody' on X \(Could not find user"):
        fetch_posts("x-api", "nobody", client=FakeClient(user=False))


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (http_error(tweepy.errors.Forbidden, 403, "Forbidden"), "private or protected account"),
        (http_error(tweepy.errors.Unauthorized, 401, "Unauthorized"), "rejected the bearer token"),
        (http_error(tweepy.errors.NotFound, 404, "Not Found"), "unknown user 'ada_sketches'"),
        (http_error(tweepy.errors.TooManyRequests, 429, "Too Many"), "rate limit"),
    ],
)
def test_api_errors_are_source_errors(error, message):
    with pytest.raises(SourceError, match=message):
        fetch_posts("x-api", "ada_sketches", client=FakeClient(raise_on_tweets=error))


def test_no_posts():
    with pytest.raises(SourceError, match="no posts for X user 'ada_sketches'"):
        fetch_posts("x-api", "ada_sketches", client=FakeClient(pages={None: ([], None)}))


def test_missing_token_is_explained(monkeypatch):
    monkeypatch.delenv("X_BEARER_TOKEN", raising=False)
    with pytest.raises(
        SourceError, match="needs a bearer token: pass bearer_token or set X_BEARER_TOKEN"
    ):
        fetch_posts("x-api", "ada_sketches")


def test_token_never_appears_in_errors_or_logs(monkeypatch, caplog):
    secret = "AAAAsecret-bearer-token"

    def refuse(self, *args, **kwargs):
        raise http_error(tweepy.errors.Unauthorized, 401, "Unauthorized")

    monkeypatch.setattr(tweepy.Client, "get_user", refuse)
    with pytest.raises(SourceError) as raised:
        fetch_posts("x-api", "ada_sketches", bearer_token=secret)
    assert secret not in str(raised.value)
    assert secret not in caplog.text
