"""The X/Twitter archive source on a hand-written archive (tests/fixtures/x_archive), zipped here."""

import codecs
import shutil
import zipfile
from pathlib import Path

import pytest

from training.clean import clean_posts
from training.sources import SourceError, fetch_posts

ARCHIVE = Path(__file__).parent / "fixtures" / "x_archive"


def zip_folder(folder: Path, zip_path: Path, top: str = "") -> Path:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, top + path.relative_to(folder).as_posix())
    return zip_path


@pytest.fixture
def archive_zip(tmp_path) -> Path:
    return zip_folder(ARCHIVE, tmp_path / "twitter-2023-03-04-abc.zip")


def by_id(user_posts):
    return {p.id: p for p in user_posts.posts}


def test_zip_reads_all_parts_profile_and_flags(archive_zip):
    user_posts = fetch_posts("x-archive", str(archive_zip))
    profile = user_posts.profile
    assert (profile.handle, profile.display_name, profile.source) == (
        "ada_sketches",
        "Ada 🌙 Sketches",
        "x-archive",
    )
    assert profile.avatar_url == "https://pbs.twimg.com/profile_images/1234567890/ada_400x400.jpg"
    posts = by_id(user_posts)
    assert len(posts) == 11  # 7 in tweets.js + 4 in tweets-part1.js
    assert {i for i, p in posts.items() if p.is_repost} == {
        "1631400000000000003",
        "1630700000000000011",
    }
    # Replies to others are replies; the second half of a self-thread is not.
    assert {i for i, p in posts.items() if p.is_reply} == {
        "1631300000000000004",
        "1631100000000000006",
    }
    assert posts["1631500000000000002"].created_at == "2023-03-02T18:40:11+00:00"
    assert "&amp;" in posts["1631500000000000002"].text  # raw text; cleaning unescapes
    dates = [p.created_at for p in user_posts.posts]
    assert dates == sorted(dates, reverse=True)


def test_note_tweet_replaces_truncated_text_only_for_its_tweet(archive_zip):
    posts = by_id(fetch_posts("x-archive", str(archive_zip)))
    long = posts["1631600000000000001"].text
    assert long.startswith("Long thoughts on drawing hands")
    assert long.endswith("Draw fifty boxes before breakfast and the hands will follow.")
    assert "t.co" not in long
    assert not any("deleted long ago" in p.text for p in posts.values())


def test_folder_data_folder_and_top_level_zip_folder_agree(archive_zip, tmp_path):
    expected = fetch_posts("x-archive", str(archive_zip)).posts
    assert fetch_posts("x-archive", str(ARCHIVE)).posts == expected
    assert fetch_posts("x-archive", str(ARCHIVE / "data")).posts == expected
    nested = zip_folder(ARCHIVE, tmp_path / "nested.zip", top="twitter-archive/")
    assert fetch_posts("x-archive", str(nested)).posts == expected


def test_older_archive_names_and_limit(tmp_path):
    data = tmp_path / "old" / "data"
    shutil.copytree(ARCHIVE / "data", data)
    (data / "tweets.js").rename(data / "tweet.js")
    (data / "tweets-part1.js").rename(data / "tweet-part1.js")
    user_posts = fetch_posts("x-archive", str(tmp_path / "old"), limit=3)
    assert [p.id for p in user_posts.posts] == [
        "1631600000000000001",
        "1631500000000000002",
        "1631400000000000003",
    ]


def test_clean_stats_on_the_archive(archive_zip):
    result = clean_posts(fetch_posts("x-archive", str(archive_zip)).posts)
    assert (result.stats.downloaded, result.stats.retweets) == (11, 2)
    # "lol ok" and "@bob_draws <link>" are short.
    assert (result.stats.short, result.stats.kept) == (2, 7)
    sunrise = next(t for t in result.texts if t.startswith("Sunrise"))
    assert sunrise == (
        "Sunrise sketch done 🌅 watercolour & ink, 20 minutes before the coffee kicked in #inktober"
    )
    shop = next(t for t in result.texts if t.startswith("Visit"))
    assert "www." not in shop and "&amp;" not in shop
    assert any("1. Buy the good paper 2. Draw every day" in t for t in result.texts)
    assert (
        clean_posts(fetch_posts("x-archive", str(archive_zip)).posts, drop_replies=True).stats.kept
        == 6
    )


def test_utf16_with_bom_is_decoded(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(ARCHIVE / "data", data)
    text = (data / "tweets.js").read_text(encoding="utf-8")
    (data / "tweets.js").write_bytes(codecs.BOM_UTF16_LE + text.encode("utf-16-le"))
    posts = by_id(fetch_posts("x-archive", str(tmp_path)))
    assert "🌅" in posts["1631500000000000002"].text


def test_handle_option_overrides_account(archive_zip):
    assert fetch_posts("x-archive", str(archive_zip), handle="ada").profile.handle == "ada"


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return path


def test_bad_archives_give_clear_errors(tmp_path, archive_zip):
    not_zip = tmp_path / "notes.zip"
    not_zip.write_text("hello")
    with pytest.raises(SourceError, match="not a readable zip archive"):
        fetch_posts("x-archive", str(not_zip))

    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(archive_zip.read_bytes()[:2000])
    with pytest.raises(SourceError, match="truncated"):
        fetch_posts("x-archive", str(truncated))

    with pytest.raises(SourceError, match="the archive is empty"):
        fetch_posts("x-archive", str(write_zip(tmp_path / "empty.zip", {})))

    no_tweets = write_zip(tmp_path / "no_tweets.zip", {"data/account.js": b"[]"})
    with pytest.raises(SourceError, match=r"no tweets\.js .* account archive"):
        fetch_posts("x-archive", str(no_tweets))

    with pytest.raises(SourceError, match="no such archive"):
        fetch_posts("x-archive", str(tmp_path / "missing.zip"))


def test_broken_json_names_the_file(tmp_path):
    broken = write_zip(
        tmp_path / "broken.zip",
        {"data/tweets.js": b'window.YTD.tweets.part0 = [ {"tweet": {"full_text": "hi"}, ]'},
    )
    with pytest.raises(SourceError, match=r"tweets\.js holds broken JSON \(line 1"):
        fetch_posts("x-archive", str(broken), handle="ada")


def test_javascript_is_never_evaluated(tmp_path):
    hostile = write_zip(
        tmp_path / "hostile.zip", {"data/tweets.js": b"fetch('https://evil.example'); [ ]"}
    )
    with pytest.raises(SourceError, match=r"tweets\.js does not start with 'window\.YTD"):
        fetch_posts("x-archive", str(hostile), handle="ada")


def test_undecodable_bytes_are_a_clear_error(tmp_path):
    latin = write_zip(
        tmp_path / "latin.zip",
        {
            "data/tweets.js": 'window.YTD.tweets.part0 = [{"tweet": {"full_text": "café"}}]'.encode(
                "latin-1"
            )
        },
    )
    with pytest.raises(SourceError, match=r"tweets\.js is not UTF-8 or UTF-16 text"):
        fetch_posts("x-archive", str(latin), handle="ada")


def test_zip_slip_entries_are_refused(tmp_path):
    evil = write_zip(
        tmp_path / "evil.zip",
        {"data/tweets.js": b"[]", "../../etc/evil.js": b"[]"},
    )
    with pytest.raises(SourceError, match=r"unsafe entry path '\.\./\.\./etc/evil\.js'"):
        fetch_posts("x-archive", str(evil), handle="ada")
    assert not (tmp_path.parent.parent / "etc" / "evil.js").exists()


def test_missing_account_needs_handle(tmp_path):
    only_tweets = write_zip(
        tmp_path / "only.zip",
        {"data/tweets.js": (ARCHIVE / "data" / "tweets.js").read_bytes()},
    )
    with pytest.raises(SourceError, match="pass the handle option"):
        fetch_posts("x-archive", str(only_tweets))
    assert fetch_posts("x-archive", str(only_tweets), handle="ada").profile.display_name == "ada"


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_bom_is_decoded(tmp_path, encoding):
    body = 'window.YTD.tweets.part0 = [{"tweet": {"id_str": "1", "full_text": "naïve café 🌅"}}]'
    archive = write_zip(tmp_path / "u16.zip", {"data/tweets.js": body.encode(encoding)})
    assert fetch_posts("x-archive", str(archive), handle="ada").posts[0].text == "naïve café 🌅"


def test_tweets_must_be_objects(tmp_path):
    archive = write_zip(
        tmp_path / "odd.zip", {"data/tweets.js": b'window.YTD.tweets.part0 = [{"tweet": "hi"}]'}
    )
    with pytest.raises(SourceError, match=r"tweets\.js: expected tweet objects"):
        fetch_posts("x-archive", str(archive), handle="ada")
