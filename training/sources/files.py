"""Posts from a plain file: JSON Lines (`jsonl`) or CSV (`csv`), one post per line/row.

    fetch_posts("jsonl", "exports/alice.jsonl")              # handle "alice" (the file stem)
    fetch_posts("csv", "posts.csv", handle="alice", display_name="Alice")

Columns/keys: `text` (required); optional `id`, `created_at` (or `date`), `is_repost`, `is_reply`
(true/false, 1/0, yes/no). Bad rows fail with their line number.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

from training.sources import Post, Profile, SourceError, UserPosts, is_folder_name

_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f", ""}


def fetch_jsonl(
    user: str,
    *,
    limit: int | None = None,
    handle: str = "",
    display_name: str = "",
    avatar_url: str = "",
) -> UserPosts:
    path = Path(user)
    posts = []
    for line_number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise SourceError(f"{path} line {line_number}: not valid JSON ({error.msg})") from error
        if not isinstance(row, dict):
            raise SourceError(
                f"{path} line {line_number}: expected a JSON object with a 'text' key"
            )
        posts.append(_parse_row(row, path, line_number))
        if limit is not None and len(posts) >= limit:
            break
    return _user_posts(path, posts, "jsonl", handle, display_name, avatar_url)


def fetch_csv(
    user: str,
    *,
    limit: int | None = None,
    handle: str = "",
    display_name: str = "",
    avatar_url: str = "",
) -> UserPosts:
    path = Path(user)
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    if not reader.fieldnames or "text" not in reader.fieldnames:
        raise SourceError(
            f"{path}: no 'text' column (columns: {', '.join(reader.fieldnames or [])})"
        )
    posts = []
    rows: Iterator[dict] = iter(reader)
    while limit is None or len(posts) < limit:
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as error:
            raise SourceError(f"{path} line {reader.line_num}: {error}") from error
        if None in row:
            raise SourceError(f"{path} line {reader.line_num}: more fields than columns")
        posts.append(_parse_row(row, path, reader.line_num))
    return _user_posts(path, posts, "csv", handle, display_name, avatar_url)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as error:
        raise SourceError(f"{path}: no such file") from error
    except IsADirectoryError as error:
        raise SourceError(f"{path}: is a folder, expected a file") from error
    except UnicodeDecodeError as error:
        raise SourceError(f"{path}: not UTF-8 text (byte {error.start})") from error


def _parse_row(row: dict, path: Path, line_number: int) -> Post:
    text = row.get("text")
    if not isinstance(text, str):
        raise SourceError(f"{path} line {line_number}: missing or non-text 'text' value")
    created = row.get("created_at") or row.get("date") or ""
    return Post(
        text=text,
        id=str(row.get("id") or ""),
        created_at=str(created),
        is_repost=_parse_bool(row.get("is_repost"), "is_repost", path, line_number),
        is_reply=_parse_bool(row.get("is_reply"), "is_reply", path, line_number),
    )


def _parse_bool(value: object, name: str, path: Path, line_number: int) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    word = str(value).strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise SourceError(
        f"{path} line {line_number}: {name} must be true/false, 1/0 or yes/no, got {value!r}"
    )


def _user_posts(
    path: Path,
    posts: list[Post],
    source: str,
    handle: str = "",
    display_name: str = "",
    avatar_url: str = "",
) -> UserPosts:
    handle = (handle or path.stem).lstrip("@")
    if not is_folder_name(handle):
        raise SourceError(
            f"{handle!r} (from {path.name}) is not a usable handle; pass the handle option "
            "(letters, digits, '_', '-' and '.')"
        )
    if not posts:
        raise SourceError(f"{path}: no posts in the file")
    profile = Profile(
        handle=handle, display_name=display_name or handle, avatar_url=avatar_url, source=source
    )
    return UserPosts(profile=profile, posts=posts)
