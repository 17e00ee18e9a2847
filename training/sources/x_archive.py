"""The official X/Twitter account archive: the ZIP you download, its extracted folder, or `data/`.

    fetch_posts("x-archive", "twitter-2024-01-01-abc123.zip")

Each `data/*.js` file is `window.YTD.<name>.part0 = [...]`: we strip the assignment and parse
the rest as JSON (never evaluate JavaScript). Zip members are read in memory, never extracted.
Read: `tweets.js` + `tweets-partN.js` (older archives: `tweet.js`, `tweet-partN.js`), long posts
from `note-tweet.js`, the handle and display name from `account.js`, the avatar from `profile.js`.
Retweets are only recognisable by text starting with "RT @". Replies to oneself (threads) are
not marked as replies: they are the account's own writing.
"""

from __future__ import annotations

import codecs
import html
import json
import re
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from training.sources import Post, Profile, SourceError, UserPosts

MAX_MEMBER_BYTES = 1 << 30  # a zip bomb should fail clearly, not eat the machine's memory
_TWEETS_RE = re.compile(r"^tweets?(-part\d+)?\.js$")
_NOTES_RE = re.compile(r"^note-tweet(-part\d+)?\.js$")
_PREFIX_RE = re.compile(r"^\s*window\.YTD\.[A-Za-z0-9_]+\.part\d+\s*=\s*")
_URL_RE = re.compile(r"(https?://|www\.)\S+", re.IGNORECASE)
NOTE_MATCH_WINDOW_S = 10  # a note tweet and its truncated tweet are created together


def fetch(user: str, *, limit: int | None = None, handle: str = "") -> UserPosts:
    files = _open_archive(Path(user))
    tweet_files = sorted(name for name in files if _TWEETS_RE.match(name))
    if not tweet_files:
        raise SourceError(
            f"{user}: no tweets.js (or tweet.js) found; is this an X/Twitter account archive?"
        )
    account = _first_record(files, "account.js", "account")
    avatar = _first_record(files, "profile.js", "profile").get("avatarMediaUrl", "")
    handle = handle or account.get("username", "")
    if not handle:
        raise SourceError(f"{user}: no account.js with a username; pass the handle option")
    own_id = str(account.get("accountId", ""))

    posts = [
        _parse_tweet(item.get("tweet", item), own_id, name)
        for name in tweet_files
        for item in _read_records(files, name)
    ]
    notes = [
        item.get("noteTweet", item)
        for name in sorted(n for n in files if _NOTES_RE.match(n))
        for item in _read_records(files, name)
    ]
    _attach_note_texts(posts, notes)
    posts.sort(key=lambda p: p.created_at, reverse=True)
    profile = Profile(
        handle=handle.lstrip("@"),
        display_name=account.get("accountDisplayName") or handle.lstrip("@"),
        avatar_url=avatar or "",
        source="x-archive",
    )
    return UserPosts(profile=profile, posts=posts[:limit])


def _open_archive(path: Path) -> dict[str, Callable[[], bytes]]:
    """Map the data folder's file names to functions reading their bytes."""
    if path.is_dir():
        data = path / "data" if (path / "data").is_dir() else path
        return {p.name: p.read_bytes for p in data.iterdir() if p.is_file()}
    if not path.exists():
        raise SourceError(f"{path}: no such archive file or folder")
    try:
        archive = zipfile.ZipFile(path)
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise SourceError(
            f"{path}: not a readable zip archive ({error}); is it truncated?"
        ) from error
    if not infos:
        raise SourceError(f"{path}: the archive is empty")
    files: dict[str, Callable[[], bytes]] = {}
    for info in infos:
        member = PurePosixPath(info.filename.replace("\\", "/"))
        if member.is_absolute() or ".." in member.parts:
            raise SourceError(
                f"{path}: refusing an archive with an unsafe entry path {info.filename!r}"
            )
        # Tweets live in `data/` (possibly under one top folder); some tools zip `data/` itself.
        in_data = len(member.parts) == 1 or member.parent.name == "data"
        if not info.is_dir() and in_data and member.name not in files:
            files[member.name] = _member_reader(path, archive, info)
    return files


def _member_reader(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo):
    def read() -> bytes:
        if info.file_size > MAX_MEMBER_BYTES:
            raise SourceError(f"{path}: {info.filename} is too large ({info.file_size} bytes)")
        try:
            return archive.read(info)
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as error:
            # RuntimeError: an encrypted member; NotImplementedError: an unknown compression.
            raise SourceError(
                f"{path}: cannot read {info.filename} ({error}); is it truncated or encrypted?"
            ) from error

    return read


def decode_text(raw: bytes, name: str) -> str:
    """UTF-8 (with or without BOM) or UTF-16 with a BOM; anything else is a clear error."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    elif raw[1:2] == b"\x00" and raw[:1] != b"\x00":  # BOM-less UTF-16 of ASCII-led text
        encoding = "utf-16-le"
    elif raw[:1] == b"\x00" and raw[1:2] != b"\x00":
        encoding = "utf-16-be"
    else:
        encoding = "utf-8-sig"
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as error:
        raise SourceError(
            f"{name} is not UTF-8 or UTF-16 text (byte {error.start}); re-download the archive"
        ) from error


def _read_records(files: dict[str, Callable[[], bytes]], name: str) -> list[dict]:
    text = decode_text(files[name](), name)
    prefix = _PREFIX_RE.match(text)
    if prefix:
        text = text[prefix.end() :]
    elif not text.lstrip().startswith("["):
        raise SourceError(f"{name} does not start with 'window.YTD.<name>.part0 = [' or '['")
    try:
        records = json.loads(text.strip().rstrip(";"))
    except json.JSONDecodeError as error:
        raise SourceError(
            f"{name} holds broken JSON (line {error.lineno}, column {error.colno}: {error.msg})"
        ) from error
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise SourceError(f"{name} should hold a JSON list of objects")
    return records


def _first_record(files: dict[str, Callable[[], bytes]], name: str, key: str) -> dict:
    if name not in files:
        return {}
    records = _read_records(files, name)
    record = records[0].get(key, {}) if records else {}
    return record if isinstance(record, dict) else {}


def _parse_tweet(tweet: object, own_id: str, file_name: str) -> Post:
    if not isinstance(tweet, dict):
        raise SourceError(f"{file_name}: expected tweet objects, got {tweet!r:.80}")
    text = tweet.get("full_text", tweet.get("text"))
    if not isinstance(text, str):
        raise SourceError(f"{file_name}: tweet {tweet.get('id_str', '?')} has no full_text")
    reply_to_user = str(tweet.get("in_reply_to_user_id_str") or "")
    is_reply = bool(tweet.get("in_reply_to_status_id_str") or reply_to_user)
    return Post(
        text=text,
        id=str(tweet.get("id_str") or tweet.get("id") or ""),
        created_at=_iso_time(str(tweet.get("created_at", ""))),
        is_repost=text.startswith("RT @"),
        is_reply=is_reply and not (own_id and reply_to_user == own_id),
    )


def _iso_time(value: str) -> str:
    """'Wed Oct 10 20:19:24 +0000 2018' or '2023-03-01T12:00:00.000Z' -> ISO 8601 in UTC."""
    for parse in (
        lambda v: datetime.strptime(v, "%a %b %d %H:%M:%S %z %Y"),
        lambda v: datetime.fromisoformat(v.replace("Z", "+00:00")),
    ):
        try:
            return parse(value).astimezone(UTC).isoformat()
        except ValueError:
            continue
    return value


def _comparable(text: str) -> str:
    text = _URL_RE.sub(" ", html.unescape(text))
    return " ".join(text.split()).rstrip("…").rstrip(".").strip()


def _attach_note_texts(posts: list[Post], notes: list[dict]) -> None:
    """Give truncated long posts the full text of the note tweet created with them.

    A note and its tweet share (to the second, give or take) a creation time, and the tweet's
    text is a prefix of the note's once links and the trailing ellipsis are removed.
    """
    by_second: dict[int, list[tuple[str, str]]] = {}
    for note in notes:
        if not isinstance(note, dict) or not isinstance(note.get("core"), dict):
            continue
        text = note["core"].get("text")
        created = _iso_time(str(note.get("createdAt", "")))
        try:
            second = int(datetime.fromisoformat(created).timestamp())
        except ValueError:
            continue
        if isinstance(text, str) and text:
            by_second.setdefault(second, []).append((text, _comparable(text)))
    if not by_second:
        return
    for post in posts:
        try:
            second = int(datetime.fromisoformat(post.created_at).timestamp())
        except ValueError:
            continue
        prefix = _comparable(post.text)
        for delta in range(-NOTE_MATCH_WINDOW_S, NOTE_MATCH_WINDOW_S + 1):
            match = next(
                (
                    t
                    for t, c in by_second.get(second + delta, [])
                    if prefix and c.startswith(prefix)
                ),
                None,
            )
            if match is not None and len(match) > len(post.text):
                post.text = match
                break
