"""Model cards: `README.md` (Jinja template + `huggingface_hub.ModelCard`) and `predictions.png`.

    python -c "from cards import write_card; print(write_card('registry.json', 'getfiscal'))"

Display names, handles and avatar URLs are user-controlled. None of them goes into the YAML front
matter (which holds only fixed values and validated ids, dumped by `ModelCardData`), and each is
escaped for the context it lands in: HTML text, Markdown text, a CSS `url()` or a Python literal.
"""

from __future__ import annotations

import html
import json
import logging
import re
from pathlib import Path
from urllib.parse import quote

from huggingface_hub import ModelCard, ModelCardData

from cards.thumbnail import avatar_color, draw_predictions, initials
from zoo.hub import is_hub_model_id
from zoo.registry import Entry, Registry, load_registry, resolve_inside

logger = logging.getLogger(__name__)

TEMPLATE_PATH = Path(__file__).with_name("template.md.j2")
WIDGET_PROMPT = "My dream is"
SAMPLE_PROMPTS = ("My dream is", "I think that", "The best thing about", "Today I")
TAGS = ["huggingtweets", "lora", "peft", "text-generation"]
# Inline Markdown that could restyle or restructure a name (`<`, `>` and `&` are HTML-escaped first).
_MD_SPECIALS = re.compile(r"([\\`*_\[\]|~])")
_PROFILE_URLS = {
    "x-archive": "https://x.com/{}",
    "x-api": "https://x.com/{}",
    "bluesky": "https://bsky.app/profile/{}",
}


def model_license(base_model: str) -> str:
    """The license of the base, which binds the adapter: GPT-2 is MIT, DistilGPT2 Apache-2.0."""
    name = base_model.rsplit("/", 1)[-1].lower()
    if name.startswith("distilgpt2"):
        return "apache-2.0"
    return "mit" if name.startswith("gpt2") else "other"


def html_text(value: str) -> str:
    """Escape for HTML text or attributes; whitespace (newlines included) collapses to one space
    so that a name can never end the HTML block of the card or start a Markdown construct."""
    return html.escape(" ".join(str(value).split()), quote=True)


def md_text(value: str) -> str:
    """Escape for Markdown text (tables included): HTML-escape, then backslash Markdown punctuation."""
    return _MD_SPECIALS.sub(r"\\\1", html_text(value))


def css_url(url: str) -> str | None:
    """An http(s) avatar URL made safe inside `url('...')` in a style attribute, else None."""
    if not re.match(r"^https?://", url or ""):
        return None
    # Percent-encode quotes, parentheses, backslashes and spaces: nothing can end the url().
    return quote(url, safe=":/?#[]@!$&*+,;=%~-._")


def _profile_url(source: str, handle: str) -> str | None:
    if source == "mastodon" and handle.count("@") == 1:  # user@instance
        user, instance = handle.split("@")
        return f"https://{quote(instance, safe='.-')}/@{quote(user, safe='')}"
    pattern = _PROFILE_URLS.get(source)
    return pattern.format(quote(handle, safe="")) if pattern else None


def _number(value: float) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _wandb_urls(wandb: dict[str, str]) -> dict[str, str]:
    entity, project = wandb.get("entity"), wandb.get("project")
    if not entity or not project:
        return {}
    base = f"https://wandb.ai/{quote(entity, safe='')}/{quote(project, safe='')}/runs/"
    urls = {}
    if wandb.get("preprocess_run"):
        urls["data_url"] = base + quote(wandb["preprocess_run"], safe="") + "/artifacts"
    if wandb.get("train_run"):
        urls["train_url"] = base + quote(wandb["train_run"], safe="")
    return urls


def _accounts(entry: Entry) -> list[dict[str, str | None]]:
    accounts = []
    for i, (handle, name) in enumerate(zip(entry.handles, entry.display_names, strict=True)):
        avatar = entry.avatars[i] if i < len(entry.avatars) else ""
        accounts.append(
            {
                "avatar_url": html.escape(css_url(avatar) or "", quote=True) or None,
                "initials": html_text(initials(name, handle)),
                "color": avatar_color(handle),
            }
        )
    return accounts


def _table(entry: Entry) -> dict | None:
    if not entry.stats:
        return None
    rows = [
        ("Tweets downloaded", "downloaded"),
        ("Retweets", "retweets"),
        ("Short tweets", "short"),
        ("Tweets kept", "kept"),
    ]
    if entry.kind == "user":
        stats = entry.stats.get(entry.handles[0]) or next(iter(entry.stats.values()))
        return {
            "header": ["Data", "Quantity"],
            "rows": [[label, str(getattr(stats, key))] for label, key in rows],
        }
    header = ["Data"] + [md_text(name) for name in entry.display_names]
    table_rows = []
    for label, key in rows:
        cells = [
            str(getattr(entry.stats[h], key)) if h in entry.stats else "n/a" for h in entry.handles
        ]
        table_rows.append([label, *cells])
    return {"header": header, "rows": table_rows}


def _metrics(entry: Entry) -> list[tuple[str, str]]:
    labels = {
        "base_perplexity": "Held-out perplexity, base model",
        "adapter_perplexity": "Held-out perplexity, with this adapter",
    }
    ordered = [k for k in labels if k in entry.metrics]
    ordered += sorted(k for k in entry.metrics if k not in labels)
    return [(labels.get(k) or md_text(k), _number(entry.metrics[k])) for k in ordered]


def _blend_md(entry: Entry) -> str:
    blend = entry.blend
    if not blend:
        return ""
    from zoo.blend import DENSITY_METHODS

    # Field names as `zoo.engine.Engine.export` writes them.
    raw_method = str(blend.get("method", "unknown"))
    method = md_text(raw_method)
    params = {k: blend[k] for k in ("density", "seed") if k in blend}
    if raw_method not in DENSITY_METHODS:
        params = {}
    text = f"Blend method: `{method}`"
    if params:
        text += " (" + ", ".join(f"{md_text(k)}={md_text(str(v))}" for k, v in params.items()) + ")"
    text += "."
    if blend.get("blend_id"):
        # Inside a code span Markdown escapes would show literally; only backticks can break out.
        text += f" Blend id: `{html.escape(str(blend['blend_id']).replace('`', ''))}`."
    if "rank" in blend:
        text += f" The blend was exported as one LoRA adapter of rank {md_text(str(blend['rank']))}"
        energy = blend.get("energy_kept")
        if isinstance(energy, int | float):
            text += f", keeping {100 * energy:.1f}% of the blended update's energy"
        text += "."
    return text


def card_data(entry: Entry) -> ModelCardData:
    """The YAML front matter: fixed values and validated ids only, never a display name."""
    if entry.hub_repo:
        thumbnail = f"https://huggingface.co/{entry.hub_repo}/resolve/main/predictions.png"
    else:
        thumbnail = "predictions.png"
    return ModelCardData(
        language="en",
        license=model_license(entry.base_model),
        library_name="peft",
        base_model=entry.base_model,
        pipeline_tag="text-generation",
        tags=list(TAGS),
        thumbnail=thumbnail,
        widget=[{"text": WIDGET_PROMPT}],
    )


def render_card(entry: Entry, registry: Registry) -> ModelCard:
    """The model card of one zoo entry (a single account or a cyborg blend)."""
    cyborg = entry.kind == "cyborg"
    base = entry.base_model
    if is_hub_model_id(base):
        base_md = f"[{base}](https://huggingface.co/{base})"  # a validated id: nothing to escape
    else:
        base_md = f"base model `{html_text(base).replace('`', '')}`"
    gpt2 = base.rsplit("/", 1)[-1].lower().startswith(("gpt2", "distilgpt2"))
    if gpt2 and is_hub_model_id(base):
        limitations_md = (
            "[the same limitations and bias as GPT-2]"
            f"(https://huggingface.co/{base}#limitations-and-bias)"
        )
    elif is_hub_model_id(base):
        limitations_md = f"the same limitations and bias as its base model, {base_md}"
    else:  # base_md already reads "base model `<folder>`"
        limitations_md = f"the same limitations and bias as its {base_md}"

    handle = entry.handles[0]
    profile = _profile_url(entry.source, handle)
    posts_md = f"@{md_text(handle)}'s posts"
    if profile:
        posts_md = f"[{posts_md}]({profile})"
    if entry.source == "fortune":
        posts_md = f"the `{md_text(handle)}` fortune cookies"
    handle_line = f"{entry.handle_line}" + ("" if cyborg else " bot")

    # Python literal of the adapter to load; `zoo.hub` swaps the local path for the repo id on push.
    model_ref = json.dumps(entry.hub_repo or entry.adapter_path)
    parents = [
        {
            "label": f"@{md_text(p.id)}"
            + (f" ({md_text(registry.entries[p.id].display_name)})" if p.id in registry else ""),
            "weight": f"{p.weight:g}",
        }
        for p in entry.parents
    ]
    lora = entry.lora
    return ModelCard.from_template(
        card_data(entry),
        template_path=str(TEMPLATE_PATH),
        accounts=_accounts(entry),
        badge="🤖 AI CYBORG 🤖" if cyborg else "🤖 AI BOT 🤖",
        names_html=html_text(entry.display_name),
        names_md=md_text(entry.display_name),
        handle_line_html=html_text(handle_line),
        handle_possessive_md=f"@{md_text(handle)}'s",
        posts_md=posts_md,
        data_owner_md="the users'" if cyborg else "the user's",
        cyborg=cyborg,
        parents=parents,
        blend_md=_blend_md(entry),
        base_md=base_md,
        limitations_md=limitations_md,
        table=_table(entry),
        metrics=_metrics(entry),
        lora={
            "r": lora.r,
            "alpha": lora.alpha,
            "dropout": lora.dropout,
            "targets": ", ".join(f"`{t.replace('`', '')}`" for t in lora.target_modules),
        },
        wandb=_wandb_urls(entry.wandb),
        on_hub=bool(entry.hub_repo),
        model_ref=model_ref,
    )


def generate_samples(
    registry_path: str | Path, entry_id: str, engine=None
) -> list[tuple[str, str]]:
    """A few continuations of fixed prompts, sampled with the zoo engine (seeded, reproducible).

    Pass a running `zoo.engine.Engine` on the same registry to avoid loading the base again."""
    from zoo.blend import Blend
    from zoo.engine import Engine, SamplingParams

    engine = engine or Engine(registry_path)
    blend = Blend.from_weights({entry_id: 1.0})
    samples = []
    for seed, prompt in enumerate(SAMPLE_PROMPTS):
        # A little below 1.0: the thumbnail shows the bot at its most readable, not its tail.
        params = SamplingParams(max_new_tokens=40, num_samples=1, seed=seed, temperature=0.8)
        (sample,) = engine.generate(blend, prompt, params)[:1]
        samples.append((prompt, sample.text.strip()))
    return samples


def write_card(
    registry_path: str | Path, entry_id: str, samples: list[tuple[str, str]] | None = None
) -> Path:
    """Write `README.md` and `predictions.png` into the entry's adapter folder; return README's path.

    Without `samples`, continuations are generated with the engine from `SAMPLE_PROMPTS`.
    """
    registry = load_registry(registry_path)
    entry = registry.get(entry_id)
    folder = registry.adapter_dir(entry_id)
    if samples is None:
        samples = generate_samples(registry_path, entry_id)
    avatars = {}
    for handle, avatar in zip(entry.handles, entry.avatars, strict=False):
        if avatar and not css_url(avatar):
            try:
                path = resolve_inside(registry.root, avatar)
            except ValueError:
                continue
            if path.is_file():
                avatars[handle] = path
    folder.mkdir(parents=True, exist_ok=True)
    draw_predictions(entry, samples, folder / "predictions.png", avatars=avatars)
    readme = folder / "README.md"
    render_card(entry, registry).save(readme)
    logger.info("wrote %s and predictions.png", readme)
    return readme
