"""Pure translations between the Space's widgets, the zoo and the engine (no gradio, easy to test).

Widgets -> `Blend` / `SamplingParams` (with the Space's caps), share links <-> blend ids, the zoo
as a table or escaped HTML cards, a cyborg's card preview and data table, the export zip. The UI
module (`cyborg_ui.py`) lays out the page and wires these into handlers; tests call them directly.
"""

from __future__ import annotations

import html
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cards import render_card
from cards.thumbnail import avatar_color, initials
from zoo.blend import MAX_USERS, Blend, BlendError
from zoo.registry import Entry, Parent, Registry, id_from_handles, validate_id

MAX_PROMPT_CHARS = 400
MAX_NEW_TOKENS = 80
MAX_SAMPLES = 4
# Token colours by position among the picked users (a stable hash could give two users one colour).
SPEAKER_COLORS = (
    "#1d9bf0",
    "#f91880",
    "#00ba7c",
    "#ff7a00",
    "#7856ff",
    "#e0245e",
    "#17bf63",
    "#794bc4",
)
DATA_ROWS = (
    ("Tweets downloaded", "downloaded"),
    ("Retweets", "retweets"),
    ("Short tweets", "short"),
    ("Tweets kept", "kept"),
)


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def choice_label(entry: Entry) -> str:
    """Dropdown label; gradio renders choices as text, so no escaping is needed here."""
    return f"{entry.display_name} ({entry.handle_line})"


def user_choices(registry: Registry) -> list[tuple[str, str]]:
    return [(choice_label(e), e.id) for e in registry]


def _counts(entry: Entry) -> tuple[int, int]:
    return (
        sum(s.kept for s in entry.stats.values()),
        sum(s.downloaded for s in entry.stats.values()),
    )


def perplexity_text(entry: Entry) -> str:
    base, adapter = (entry.metrics.get(k) for k in ("base_perplexity", "adapter_perplexity"))
    if base is None and adapter is None:
        return "n/a"
    return " -> ".join("?" if v is None else f"{v:.1f}" for v in (base, adapter))


ZOO_HEADERS = ["id", "name", "handle", "kind", "posts kept", "posts downloaded", "perplexity"]


def zoo_rows(registry: Registry) -> list[list]:
    """One row per entry for the zoo table (a gr.Dataframe renders cells as plain text)."""
    rows = []
    for e in registry:
        kept, downloaded = _counts(e)
        rows.append(
            [e.id, e.display_name, e.handle_line, e.kind, kept, downloaded, perplexity_text(e)]
        )
    return rows


def _avatar_html(entry: Entry, index: int) -> str:
    handle, name = entry.handles[index], entry.display_names[index]
    avatar = entry.avatars[index] if index < len(entry.avatars) else ""
    style = "width:48px;height:48px;border-radius:50%;flex:none;"
    if avatar.startswith("https://"):
        return f'<img src="{esc(avatar)}" alt="" style="{style}object-fit:cover">'
    return (
        f'<div style="{style}background:{avatar_color(handle)};color:#fff;font-weight:800;'
        f'display:flex;align-items:center;justify-content:center">'
        f"{esc(initials(name, handle))}</div>"
    )


def zoo_gallery_html(registry: Registry) -> str:
    """The zoo as cards: avatars (or initials), name, @handle, posts, perplexity. All escaped."""
    if not len(registry):
        return "<p>The zoo is empty: train an adapter with <code>huggingtweets train</code>.</p>"
    cards = []
    for e in registry:
        kept, downloaded = _counts(e)
        avatars = "".join(_avatar_html(e, i) for i in range(len(e.handles)))
        badge = " 🤖 cyborg" if e.kind == "cyborg" else ""
        cards.append(
            '<div class="zoo-card" style="display:flex;gap:10px;align-items:center;'
            'padding:8px 12px;border:1px solid #8884;border-radius:12px;min-width:230px">'
            f'<div style="display:flex;gap:2px">{avatars}</div><div>'
            f'<div style="font-weight:700">{esc(e.display_name)}{badge}</div>'
            f'<div style="opacity:.75">{esc(e.handle_line)}</div>'
            f'<div style="font-size:.85em">posts kept {kept} / downloaded {downloaded}<br>'
            f"perplexity {esc(perplexity_text(e))}</div></div></div>"
        )
    return f'<div style="display:flex;flex-wrap:wrap;gap:8px">{"".join(cards)}</div>'


def remap_weights(
    old_users: Sequence[str], old_values: Sequence[float], new_users: Sequence[str]
) -> list[float]:
    """Slider values after the picked users change: each user keeps their weight, new ones get 1."""
    kept = dict(zip(old_users, old_values, strict=False))
    values = [float(kept.get(u, 1.0)) for u in new_users[:MAX_USERS]]
    return values + [1.0] * (MAX_USERS - len(values))


def blend_from_widgets(
    users: Sequence[str] | None,
    weights: Sequence[float],
    method: str,
    density: float,
    seed: float | int,
) -> Blend:
    """The `Blend` a visitor's widgets describe; raises `BlendError` with a readable message."""
    users = list(users or [])
    if not users:
        raise BlendError("pick at least one user in the zoo")
    if len(users) > MAX_USERS:
        raise BlendError(f"pick at most {MAX_USERS} users, got {len(users)}")
    try:
        seed = int(seed or 0)
    except (TypeError, ValueError) as e:
        raise BlendError(f"seed must be a whole number, got {seed!r}") from e
    pairs = {u: float(w) for u, w in zip(users, weights, strict=False)}
    return Blend.from_weights(pairs, method=method, density=float(density), seed=seed)


def widgets_from_blend(blend: Blend) -> dict:
    """Inverse of `blend_from_widgets`: the widget values that describe `blend`."""
    users = list(blend.users)
    return {
        "users": users,
        "weights": remap_weights(users, [blend.weight_map[u] for u in users], users),
        "method": blend.method,
        "density": blend.density,
        "seed": blend.seed,
    }


def share_query(blend: Blend) -> str:
    """The query string of a share link; the blend id is URL-safe by construction."""
    return f"?blend={blend.id}"


def blend_id_from_text(text: str | None) -> str:
    """The blend id in a pasted share link (full URL, `?blend=...` or the bare id)."""
    from urllib.parse import parse_qs, urlsplit

    text = (text or "").strip()
    if "blend=" in text:
        query = urlsplit(text).query or text.lstrip("?")
        return (parse_qs(query).get("blend") or [""])[0]
    return text


def share_url(page_url: str | None, blend: Blend) -> str:
    base = (page_url or "").split("?", 1)[0].split("#", 1)[0]
    return base + share_query(blend)


def check_prompt(prompt: str | None) -> str:
    prompt = prompt or ""
    if len(prompt) > MAX_PROMPT_CHARS:
        raise BlendError(
            f"the prompt is {len(prompt)} characters long; keep it under {MAX_PROMPT_CHARS}"
        )
    return prompt


def sampling_from_widgets(num_samples, temperature, top_p, max_new_tokens, seed):
    """`SamplingParams` from the widgets, with the Space's caps (API callers skip the sliders)."""
    from zoo.engine import SamplingParams

    num_samples, max_new_tokens = int(num_samples), int(max_new_tokens)
    if not 1 <= num_samples <= MAX_SAMPLES:
        raise BlendError(f"number of samples must be in 1..{MAX_SAMPLES}, got {num_samples}")
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise BlendError(f"max new tokens must be in 1..{MAX_NEW_TOKENS}, got {max_new_tokens}")
    return SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=float(temperature),
        top_p=float(top_p),
        num_samples=num_samples,
        seed=int(seed or 0),
    )


def check_export_id(text: str | None) -> str | None:
    """The cyborg id typed by a visitor (None: join the handles), checked before anything is
    written: the id becomes a folder name, so '..', '/abs' or 'a/b' must never reach the disk."""
    text = (text or "").strip()
    return validate_id(text) if text else None


def samples_text(prompt: str, samples) -> str:
    return "\n\n".join(f"{prompt}{s.text}" for s in samples)


def highlighted(prompt: str, samples) -> list[tuple[str, str | None]]:
    """(piece, speaker) pairs for gr.HighlightedText; samples are separated by a blank line."""
    pieces: list[tuple[str, str | None]] = []
    for i, sample in enumerate(samples):
        if i:
            pieces.append(("\n\n", None))
        pieces.append((prompt, None))
        pieces.extend(zip(sample.tokens, sample.speakers, strict=False))
    return pieces


def speaker_colors(users: Sequence[str]) -> dict[str, str]:
    return {u: SPEAKER_COLORS[i % len(SPEAKER_COLORS)] for i, u in enumerate(users)}


def data_table(entries: Sequence[Entry]) -> tuple[list[str], list[list]]:
    """The card's data table, one column per account of the picked entries (like a cyborg card)."""
    columns = [
        (e.display_names[i], e.stats.get(h)) for e in entries for i, h in enumerate(e.handles)
    ]
    headers = ["Data"] + [name for name, _ in columns]
    rows = [
        [label] + [getattr(s, key) if s is not None else None for _, s in columns]
        for label, key in DATA_ROWS
    ]
    return headers, rows


def preview_entry(blend: Blend, registry: Registry) -> Entry:
    """A not-yet-saved `Entry` for the cyborg the widgets describe (for its card preview)."""
    parents = [registry.get(u) for u in blend.users]
    if len(parents) == 1:
        return parents[0]
    handles = [h for p in parents for h in p.handles]
    entry_id = id_from_handles(handles)
    return Entry(
        id=entry_id,
        kind="cyborg",
        handles=handles,
        display_names=[n for p in parents for n in p.display_names],
        base_model=parents[0].base_model,
        avatars=[a for p in parents for a in p.avatars],
        source="blend",
        stats={h: s for p in parents for h, s in p.stats.items()},
        lora=parents[0].lora,
        adapter_path=f"adapters/{entry_id}",
        parents=[Parent(u, w) for u, w in blend.weights],
        # Same keys as `Engine.export` writes.
        blend={
            "method": blend.method,
            "density": blend.density,
            "seed": blend.seed,
            "blend_id": blend.id,
        },
    )


def card_markdown(entry: Entry, registry: Registry) -> str:
    """A card's Markdown body (no YAML header); cards escapes every user-controlled field."""
    return render_card(entry, registry).text


def pipeline_snippet(entry_id: str) -> str:
    return (
        f"# Unzip {entry_id}.zip next to this script (pip install transformers peft), then:\n"
        "from transformers import pipeline\n\n"
        f'generator = pipeline("text-generation", model="{entry_id}")\n'
        "# huggingtweets trains on posts that follow the end-of-text token: start prompts with it.\n"
        'prompt = generator.tokenizer.eos_token + "My dream is"\n'
        "out = generator(prompt, do_sample=True, top_p=0.95, max_new_tokens=40, "
        "return_full_text=False)\n"
        'print("My dream is" + out[0]["generated_text"])\n'
    )


def zip_folder(folder: Path) -> Path:
    """`<tmp>/<id>.zip` holding the folder `<id>/` (what `pipeline(model="<id>")` expects)."""
    out = Path(tempfile.mkdtemp(prefix="huggingtweets-export-")) / folder.name
    return Path(shutil.make_archive(str(out), "zip", root_dir=folder.parent, base_dir=folder.name))
