"""predictions.png: size, ratio, valid PNG, local avatars, initials, Pillow's own font."""

import pytest
from PIL import Image, ImageFont

import cards.thumbnail as thumbnail
from cards import draw_predictions
from cards.thumbnail import avatar_color, initials
from zoo.registry import Entry, Parent

SAMPLES = [
    ("My dream is", "to write a very long post " * 12),
    ("I think that", "cats rule"),
    ("The best thing about", "Mondays is nothing"),
    ("Today I", "bought a deer."),
    ("Ignored", "only four samples are drawn"),
]


def entry(kind="user", names=("Don Hughes 🦌",)) -> Entry:
    handles = ["getfiscal", "sniping_soup"][: len(names)]
    parents = [Parent(h, 0.5) for h in handles] if kind == "cyborg" else []
    return Entry(
        id="-".join(handles),
        kind=kind,
        handles=handles,
        display_names=list(names),
        parents=parents,
        adapter_path="adapters/x",
    )


def check_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (1200, 628)
        assert abs(im.size[0] / im.size[1] - 1.91) < 0.01
        return im.convert("RGB")


def test_single_user_thumbnail(tmp_path):
    out = draw_predictions(entry(), SAMPLES, tmp_path / "sub" / "predictions.png")
    im = check_png(out)
    # No avatar file: a disc of the handle's colour around the initials.
    colour = Image.new("RGB", (1, 1), avatar_color("getfiscal")).getpixel((0, 0))
    assert im.getpixel((56 + 10, 56 + 66)) == colour


def test_cyborg_thumbnail_with_local_and_broken_avatars(tmp_path):
    good, broken = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (80, 120), (10, 200, 30)).save(good)
    broken.write_bytes(b"not an image")
    e = entry("cyborg", names=("</div><script>", '"quoted" --- BOT\nnewline'))
    out = draw_predictions(
        e, SAMPLES[:2], tmp_path / "p.png", avatars={"getfiscal": good, "sniping_soup": broken}
    )
    im = check_png(out)
    assert im.getpixel((56 + 20, 56 + 66)) == (10, 200, 30)  # left part of the first avatar
    colour = Image.new("RGB", (1, 1), avatar_color("sniping_soup")).getpixel((0, 0))
    assert im.getpixel((156 + 110, 56 + 66)) == colour  # the second one fell back to initials


def test_works_with_only_pillows_own_font(tmp_path, monkeypatch):
    truetype = ImageFont.truetype

    def no_system_fonts(font, *args, **kwargs):
        if isinstance(font, str):  # a font file looked up on the system; Pillow's own is bytes
            raise OSError("no such font")
        return truetype(font, *args, **kwargs)

    monkeypatch.setattr(ImageFont, "truetype", no_system_fonts)
    thumbnail._font.cache_clear()
    try:
        check_png(draw_predictions(entry(names=("Zoë 中文",)), SAMPLES, tmp_path / "p.png"))
        assert thumbnail._clean("Zoë 中文 🦌", thumbnail._font(28)) in ("Zoë", "Zoe")
    finally:
        thumbnail._font.cache_clear()


@pytest.mark.parametrize(
    ("name", "handle", "expected"),
    [("Don Hughes 🦌", "getfiscal", "DH"), ("🦌", "getfiscal", "G"), ("soup", "s", "S")],
)
def test_initials(name, handle, expected):
    assert initials(name, handle) == expected
