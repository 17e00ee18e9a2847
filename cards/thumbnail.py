"""`predictions.png`: the card's 1200x628 thumbnail (avatars, names, badge, sample predictions).

Drawn locally with Pillow: DejaVu Sans when the system has it (wide glyph coverage), else the font
that ships with Pillow (`ImageFont.load_default(size=...)`), so it works on a bare machine.
Characters the font lacks are folded to ASCII (é -> e) or dropped, never drawn as boxes. Avatars come from local files only (never downloaded), otherwise a coloured
circle with the account's initials.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import unicodedata
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from zoo.registry import Entry

logger = logging.getLogger(__name__)

WIDTH, HEIGHT = 1200, 628  # 1.91:1, the social-card ratio
MARGIN = 56
PALETTE = ("#1d9bf0", "#7856ff", "#f91880", "#00ba7c", "#ff7a00", "#e0245e", "#17bf63", "#794bc4")
INK, MUTED, ACCENT, BACKGROUND = "#0f1419", "#536471", "#1d9bf0", "#ffffff"


def avatar_color(handle: str) -> str:
    """A stable colour per handle (same in the card's HTML and in the thumbnail)."""
    digest = hashlib.sha256(handle.lower().encode("utf-8")).digest()
    return PALETTE[digest[0] % len(PALETTE)]


def initials(display_name: str, handle: str) -> str:
    """Up to two initials from the display name's words, else from the handle."""
    letters = [next((c for c in word if c.isalnum()), "") for word in display_name.split()]
    letters = [c for c in letters if c]
    if not letters:
        letters = [c for c in handle if c.isalnum()][:1] or ["?"]
    return "".join(letters[:2]).upper()


@functools.lru_cache(maxsize=32)
def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    try:
        return ImageFont.truetype("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def _is_bold(font) -> bool:
    return "Bold" in (getattr(font, "getname", lambda: ("", ""))()[1] or "")


@functools.lru_cache(maxsize=4096)
def _has_glyph(font, char: str) -> bool:
    tofu = font.getmask("\U0010fffd")  # a private-use code point: no font draws it
    mask = font.getmask(char)
    return mask.size != tofu.size or bytes(mask) != bytes(tofu)


def _clean(text: str, font) -> str:
    """One line of text that `font` can draw: controls become spaces, missing glyphs are folded
    to their base letter (NFKD) or dropped."""
    out = []
    for c in str(text):
        if not c.isprintable() or c.isspace():
            out.append(" ")
        elif _has_glyph(font, c):
            out.append(c)
        else:
            folded = unicodedata.normalize("NFKD", c)
            out.append("".join(f for f in folded if f.isascii() and f.isprintable()))
    return " ".join("".join(out).split())


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    """`text`, cut with an ellipsis so that it fits in `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text.rstrip() + "..."


def _avatar(path: Path | None, handle: str, name: str, diameter: int) -> Image.Image:
    """A round avatar: the local image when it opens, else initials on a coloured disc."""
    size = (diameter, diameter)
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse((0, 0, diameter - 1, diameter - 1), fill=255)
    picture = None
    if path is not None:
        try:
            with Image.open(path) as im:
                picture = ImageOps.fit(im.convert("RGB"), size)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            logger.warning("avatar %s unreadable (%s); drawing initials", path, e)
    if picture is None:
        picture = Image.new("RGB", size, avatar_color(handle))
        draw = ImageDraw.Draw(picture)
        draw.text(
            (diameter / 2, diameter / 2),
            initials(name, handle),
            font=_font(diameter // 3, True),
            fill="#ffffff",
            anchor="mm",
        )
    disc = Image.new("RGBA", size, (0, 0, 0, 0))
    disc.paste(picture, (0, 0), mask)
    return disc


def _wrap(draw, words: list[tuple[str, object, str]], width: float, max_lines: int):
    """Greedy wrap of styled words `(word, font, colour)` into at most `max_lines` lines."""
    lines, line, used = [], [], 0.0
    for word, font, colour in words:
        w = draw.textlength(word + " ", font=font)
        if line and used + w > width:
            lines.append(line)
            line, used = [], 0.0
            if len(lines) == max_lines:
                break
        line.append((word, font, colour))
        used += w
    else:
        if line:
            lines.append(line)
        return lines
    last = lines[-1]  # too long: end the last line with an ellipsis
    word, font, colour = last[-1]
    last[-1] = (word + "...", font, colour)
    return lines


def _text(draw, xy, text: str, font, fill: str, bold: bool = False, anchor: str | None = None):
    """Draw text; bold falls back to a 1-pixel stroke when only Pillow's own font is there."""
    stroke = 1 if bold and not _is_bold(font) else 0
    draw.text(xy, text, font=font, fill=fill, anchor=anchor, stroke_width=stroke, stroke_fill=fill)


def draw_predictions(
    entry: Entry,
    samples: list[tuple[str, str]],
    out_path: str | Path,
    avatars: dict[str, str | Path] | None = None,
) -> Path:
    """Draw `predictions.png` for an entry from 2-4 `(prompt, continuation)` samples.

    `avatars` maps a handle to a local image file; other accounts get initials on a coloured disc.
    """
    avatars = avatars or {}
    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)

    # Header: overlapping round avatars, then names, handles and the badge.
    diameter, step = 132, 100
    x = MARGIN
    for handle, name in zip(entry.handles, entry.display_names, strict=True):
        path = avatars.get(handle)
        disc = _avatar(Path(path) if path else None, handle, name, diameter)
        draw.ellipse((x - 4, MARGIN - 4, x + diameter + 3, MARGIN + diameter + 3), fill=BACKGROUND)
        image.paste(disc, (x, MARGIN), disc)
        x += step
    text_x = x + diameter - step + 32
    text_width = WIDTH - MARGIN - text_x
    name_font, handle_font, badge_font = _font(44, True), _font(28), _font(22, True)
    name = _fit(draw, _clean(entry.display_name, name_font) or entry.id, name_font, text_width)
    _text(draw, (text_x, MARGIN + 4), name, name_font, INK, bold=True)
    handle_line = _fit(draw, _clean(entry.handle_line, handle_font), handle_font, text_width)
    _text(draw, (text_x, MARGIN + 62), handle_line, handle_font, MUTED)
    badge = "AI CYBORG" if entry.kind == "cyborg" else "AI BOT"
    badge_w = draw.textlength(badge, font=badge_font)
    box = (text_x, MARGIN + 102, text_x + badge_w + 32, MARGIN + 138)
    draw.rounded_rectangle(box, radius=18, fill=ACCENT)
    centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    _text(draw, centre, badge, badge_font, "#ffffff", bold=True, anchor="mm")

    top = MARGIN + diameter + 28
    draw.line((MARGIN, top, WIDTH - MARGIN, top), fill="#cfd9de", width=2)

    # Predictions: the prompt in bold accent, the continuation in ink, wrapped to the width.
    font_size, line_height, gap = 28, 38, 14
    body, bold = _font(font_size), _font(font_size, True)
    shown = [(_clean(p, bold), _clean(c, body)) for p, c in samples[:4]]
    footer_y = HEIGHT - 40
    available = footer_y - (top + 20) - gap * max(len(shown) - 1, 0)
    max_lines = max(1, available // line_height // max(len(shown), 1))
    y = top + 20
    for prompt, continuation in shown:
        words = [(w, bold, ACCENT) for w in prompt.split()]
        words += [(w, body, INK) for w in continuation.split()]
        for line in _wrap(draw, words, WIDTH - 2 * MARGIN, max_lines):
            lx = MARGIN
            for word, font, colour in line:
                _text(draw, (lx, y), word, font, colour, bold=font is bold)
                lx += draw.textlength(word + " ", font=font)
            y += line_height
        y += gap
    footer = "made with huggingtweets"
    _text(draw, (WIDTH - MARGIN, footer_y), footer, _font(20), MUTED, anchor="ra")

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    image.save(out_path, format="PNG", optimize=True)
    return out_path
