"""Fetch stage: download an account's posts from a source and save them under the data folder.

    huggingtweets fetch --source fortune --user zippy          # offline demo, writes data/zippy/
    huggingtweets fetch --source x-archive --user ~/twitter-archive.zip --limit 3000

Writes `<data_dir>/<handle>/posts.jsonl` (one `Post` per line, newest first) and `profile.json`.
Both are written to temporary files and renamed into place, so a failed or interrupted fetch
leaves an earlier good fetch intact. The bearer token is used for the request only, never saved.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from training.sources import (
    SOURCES,
    Post,
    Profile,
    SourceName,
    UserPosts,
    fetch_posts,
    is_folder_name,
)

logger = logging.getLogger(__name__)

POSTS_FILE = "posts.jsonl"
PROFILE_FILE = "profile.json"


@dataclass
class FetchConfig:
    source: SourceName = field(
        default="x-archive", metadata={"help": f"where posts come from: {', '.join(SOURCES)}"}
    )
    user: str = field(
        default="",
        metadata={
            "help": "handle (bluesky, mastodon @name@instance, x-api), path (x-archive zip or "
            "folder, jsonl, csv) or category (fortune)"
        },
    )
    data_dir: str = field(default="data", metadata={"help": "folder holding one folder per handle"})
    limit: int | None = field(
        default=None, metadata={"help": "most posts to download (reposts included); all if unset"}
    )
    handle: str = field(
        default="", metadata={"help": "handle to use for jsonl/csv/x-archive (default: from file)"}
    )
    base_url: str = field(
        default="", metadata={"help": "API base URL for bluesky/mastodon (tests, self-hosting)"}
    )
    bearer_token: str = field(
        default="",
        repr=False,
        metadata={"help": "x-api bearer token (default: $X_BEARER_TOKEN); never saved"},
    )

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if not self.user.strip():
            raise ValueError("user must be set (a handle, a file path or a fortune category)")
        if self.limit is not None and (isinstance(self.limit, bool) or self.limit < 1):
            raise ValueError(f"limit must be a positive integer, got {self.limit!r}")
        if self.base_url and not re.match(r"^https?://[^\s/]+", self.base_url):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if self.base_url and self.source not in ("bluesky", "mastodon"):
            raise ValueError(f"base_url only applies to bluesky and mastodon, not {self.source!r}")
        if self.bearer_token and self.source != "x-api":
            raise ValueError(f"bearer_token only applies to x-api, not {self.source!r}")
        if self.handle and self.source not in ("jsonl", "csv", "x-archive"):
            raise ValueError(
                f"handle only applies to jsonl, csv and x-archive, not {self.source!r}"
            )
        if not self.data_dir:
            raise ValueError("data_dir must be a folder path")


def run(cfg: FetchConfig) -> Path:
    """Fetch `cfg.user`'s posts and save them; return the user's data folder."""
    options = {
        name: getattr(cfg, name)
        for name in ("handle", "base_url", "bearer_token")
        if getattr(cfg, name)
    }
    user_posts = fetch_posts(cfg.source, cfg.user, limit=cfg.limit, **options)
    folder = save_user_posts(user_posts, cfg.data_dir)
    reposts = sum(p.is_repost for p in user_posts.posts)
    logger.info(
        "saved %d posts (%d reposts) of @%s from %s to %s",
        len(user_posts.posts),
        reposts,
        user_posts.profile.handle,
        cfg.source,
        folder,
    )
    return folder


def user_folder(data_dir: str | Path, handle: str) -> Path:
    """`<data_dir>/<handle>`, refusing handles that are not a plain folder name."""
    if not is_folder_name(handle):
        raise ValueError(f"handle {handle!r} cannot be a folder name (letters, digits, _ - . only)")
    return Path(data_dir) / handle


def save_user_posts(user_posts: UserPosts, data_dir: str | Path) -> Path:
    folder = user_folder(data_dir, user_posts.profile.handle)
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(
        json.dumps(dataclasses.asdict(p), ensure_ascii=False) + "\n" for p in user_posts.posts
    )
    profile = dataclasses.asdict(user_posts.profile) | {
        "post_count": len(user_posts.posts),
        "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write_atomic(
        {
            folder / POSTS_FILE: lines,
            folder / PROFILE_FILE: json.dumps(profile, ensure_ascii=False, indent=2) + "\n",
        }
    )
    return folder


def load_user_posts(folder: str | Path) -> UserPosts:
    folder = Path(folder)
    for name in (PROFILE_FILE, POSTS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder / name} not found; run `huggingtweets fetch --source ... --user ...` first"
            )
    try:
        raw = json.loads((folder / PROFILE_FILE).read_text(encoding="utf-8"))
        profile = Profile(
            **{f.name: raw[f.name] for f in dataclasses.fields(Profile) if f.name in raw}
        )
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as error:
        raise ValueError(f"{folder / PROFILE_FILE} is corrupt: {error}") from error
    posts = []
    names = {f.name for f in dataclasses.fields(Post)}
    try:
        text = (folder / POSTS_FILE).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{folder / POSTS_FILE} is corrupt: not UTF-8 ({error})") from error
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            posts.append(Post(**{k: v for k, v in row.items() if k in names}))
        except (json.JSONDecodeError, TypeError, AttributeError) as error:
            raise ValueError(
                f"{folder / POSTS_FILE} line {line_number} is corrupt: {error}"
            ) from error
        if not isinstance(posts[-1].text, str):
            raise ValueError(f"{folder / POSTS_FILE} line {line_number}: 'text' is not a string")
    return UserPosts(profile=profile, posts=posts)


def _write_atomic(contents: dict[Path, str]) -> None:
    """Write every file to a temp file first, then rename them all: a failure changes nothing."""
    temps: list[str] = []
    try:
        for path, content in contents.items():
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temps.append(tmp)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in zip(temps, contents, strict=True):
            os.replace(tmp, path)
    finally:
        for tmp in temps:
            Path(tmp).unlink(missing_ok=True)
