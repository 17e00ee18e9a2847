"""The huggingtweets Space: browse the zoo, blend 2+ accounts live into an AI cyborg, export it.

    python spaces/huggingtweets/app.py                       # serves ./registry.json
    HUGGINGTWEETS_REGISTRY=/path/to/registry.json python spaces/huggingtweets/app.py
    huggingtweets demo                                       # tiny offline zoo + this Space

A thin layer over `zoo.engine.Engine`: handlers translate widgets into a `Blend` and
`SamplingParams` (the small pure functions of `blend_form.py`, which tests call directly) and stream
what the engine yields. One engine per registry is shared by every visitor (created on first use, never at
import); what a visitor picked lives in their widgets and `gr.State`, never in a shared "current
blend". Every user-controlled string (display names, handles, avatar URLs) is HTML-escaped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
from blend_form import (
    MAX_NEW_TOKENS,
    MAX_PROMPT_CHARS,
    MAX_SAMPLES,
    ZOO_HEADERS,
    blend_from_widgets,
    blend_id_from_text,
    card_markdown,
    check_export_id,
    check_prompt,
    choice_label,
    data_table,
    esc,
    highlighted,
    pipeline_snippet,
    preview_entry,
    remap_weights,
    samples_text,
    sampling_from_widgets,
    share_url,
    speaker_colors,
    user_choices,
    widgets_from_blend,
    zip_folder,
    zoo_gallery_html,
    zoo_rows,
)

from cards import write_card
from cards.render import generate_samples
from zoo.blend import MAX_ABS_WEIGHT, MAX_USERS, OUTPUT_METHODS, Blend, BlendError
from zoo.registry import Registry, load_registry

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = "My dream is"
QUEUE = {"default_concurrency_limit": 2, "max_size": 32}
METHOD_CHOICES = [
    ("live: exact blend of the adapters (weight space)", "live"),
    ("task arithmetic (weight space)", "task_arithmetic"),
    ("TIES (weight space, uses density)", "ties"),
    ("DARE linear (weight space, uses density)", "dare_linear"),
    ("DARE TIES (weight space, uses density)", "dare_ties"),
    ("magnitude prune (weight space, uses density)", "magnitude_prune"),
    ("cat: concatenated LoRA factors (weight space)", "cat"),
    ("product of experts (output space)", "product"),
    ("mixture of experts (output space, weights >= 0)", "mixture"),
    ("contrast (output space)", "contrast"),
]


# ---------------------------------------------------------------------------------------------
# The shared engine: one per registry file, built on first use.
# ---------------------------------------------------------------------------------------------
_ENGINES: dict[Path, object] = {}
_ENGINES_LOCK = threading.Lock()


def get_engine(registry_path: str | Path):
    """The process-wide `Engine` of a registry (loads the base model on first call only)."""
    from zoo.engine import Engine

    key = Path(registry_path).resolve()
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = Engine(key)
        return _ENGINES[key]


@contextmanager
def user_errors(action: str) -> Iterator[None]:
    """Turn engine, blend and registry errors (all `ValueError`s) into a `gr.Error` toast."""
    try:
        yield
    except gr.Error:
        raise
    except (ValueError, KeyError, OSError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise gr.Error(f"{action}: {message}", title="huggingtweets") from e


# ---------------------------------------------------------------------------------------------
# The Blocks: layout and wiring only; every handler is a few lines over blend_form's functions.
# ---------------------------------------------------------------------------------------------
INTRO = """# 🤖 huggingtweets: AI cyborgs
Pick two or more accounts from the zoo, set how much of each you want (negative = *less like*),
and watch the cyborg write. Each account is a small LoRA adapter on GPT-2; a blend mixes them live.
"""
SPEAKER_NOTE = (
    "Who is speaking: each token is coloured by the user whose adapter favoured it most. "
    "Only the output-space modes (product, mixture, contrast) know this; weight-space blends "
    "(live, ties, dare...) mix the weights themselves, so their tokens stay uncoloured."
)


def build_demo(registry_path: str | Path) -> gr.Blocks:
    """The Space's Blocks for one registry (no model is loaded until the first generation)."""
    registry_path = Path(registry_path)

    def registry() -> Registry:
        with user_errors("cannot read the zoo"):
            return load_registry(registry_path)

    def list_zoo():
        reg = registry()
        return zoo_gallery_html(reg), zoo_rows(reg), gr.Dropdown(choices=user_choices(reg))

    def slider_updates(users: list[str], values: Sequence[float], reg: Registry) -> list:
        return [
            gr.Slider(
                value=values[i],
                visible=i < len(users),
                label=f"weight of {choice_label(reg.get(users[i]))}"
                if i < len(users) and users[i] in reg
                else f"weight {i + 1}",
            )
            for i in range(MAX_USERS)
        ]

    # gradio injects `gr.Request` only into named parameters, hence the eight weights spelt out.
    def pick(
        users,
        prev_users,
        w1,
        w2,
        w3,
        w4,
        w5,
        w6,
        w7,
        w8,
        method,
        density,
        seed,
        request: gr.Request,
    ):
        """Users changed: re-label the sliders (each user keeps their weight), then describe."""
        weights, tail = (w1, w2, w3, w4, w5, w6, w7, w8), (method, density, seed)
        users = list(users or [])[:MAX_USERS]
        values = remap_weights(prev_users or [], weights, users)
        args = (users, *values, *tail)
        sliders = slider_updates(users, values, registry())
        return *sliders, users, share_text(args, request), *card(*args)

    def split(args):  # (users, w1..w8, method, density, seed) -> blend
        users, weights, (method, density, seed) = args[0], args[1 : 1 + MAX_USERS], args[-3:]
        return blend_from_widgets(users, weights, method, density, seed)

    def share(users, w1, w2, w3, w4, w5, w6, w7, w8, method, density, seed, request: gr.Request):
        return share_text((users, w1, w2, w3, w4, w5, w6, w7, w8, method, density, seed), request)

    def share_text(args, request: gr.Request | None) -> str:
        try:
            blend = split(args)
        except BlendError as e:
            return f"(no share link yet: {e})"
        page = request.headers.get("referer") if request is not None else None
        return share_url(page, blend)

    def restore(text: str, request: gr.Request):
        """Set every blend widget from a share link, and describe the blend (share + cards)."""
        with user_errors("cannot read this share link"):
            w = widgets_from_blend(Blend.parse(blend_id_from_text(text)))
        reg = registry()
        missing = [u for u in w["users"] if u not in reg]
        if missing:
            raise gr.Error(f"this share link names users not in the zoo: {', '.join(missing)}")
        sliders = slider_updates(w["users"], w["weights"], reg)
        args = (w["users"], *w["weights"], w["method"], w["density"], w["seed"])
        tail = (w["method"], w["density"], w["seed"], w["users"], share_text(args, request))
        return w["users"], *sliders, *tail, *card(*args)

    def restore_from_request(request: gr.Request):
        blend_id = request.query_params.get("blend") if request is not None else None
        if not blend_id:
            return (gr.skip(),) * (MAX_USERS + 9)
        return restore(blend_id, request)

    def card(users, w1, w2, w3, w4, w5, w6, w7, w8, method, density, seed):
        args = (users, w1, w2, w3, w4, w5, w6, w7, w8, method, density, seed)
        if not users:
            return "*Pick users to see the cyborg's card.*", gr.Dataframe(value=None), ""
        reg = registry()
        with user_errors("cannot render the card"):
            entries = [reg.get(u) for u in users]
            try:
                preview = card_markdown(preview_entry(split(args), reg), reg)
            except BlendError as e:
                preview = f"*No cyborg yet: {esc(e)}*"
            headers, rows = data_table(entries)
            parents = "\n\n---\n\n".join(card_markdown(e, reg) for e in entries)
        return preview, gr.Dataframe(value=rows, headers=headers), parents

    def generate(  # one named parameter per widget: gradio_client users see these names
        users,
        w1,
        w2,
        w3,
        w4,
        w5,
        w6,
        w7,
        w8,
        method,
        density,
        prompt,
        num_samples,
        temperature,
        top_p,
        max_new_tokens,
        seed,
    ):
        weights = (w1, w2, w3, w4, w5, w6, w7, w8)
        with user_errors("cannot generate"):
            blend = blend_from_widgets(users, weights, method, density, seed)
            prompt = check_prompt(prompt)
            params = sampling_from_widgets(num_samples, temperature, top_p, max_new_tokens, seed)
            colors = speaker_colors(blend.users)
            for samples in get_engine(registry_path).stream(blend, prompt, params):
                text = samples_text(prompt, samples)
                yield text, gr.HighlightedText(highlighted(prompt, samples), color_map=colors)

    def export(users, w1, w2, w3, w4, w5, w6, w7, w8, method, density, seed, entry_id):
        weights = (w1, w2, w3, w4, w5, w6, w7, w8)
        with user_errors("cannot export"):
            blend = blend_from_widgets(users, weights, method, density, seed)
            entry_id = check_export_id(entry_id)
            if blend.method in OUTPUT_METHODS:
                raise BlendError(
                    f"{blend.method!r} mixes the users' outputs at every token, so it cannot be "
                    "saved as one adapter; pick a weight-space method (live, ties, dare...)"
                )
            engine = get_engine(registry_path)
            entry = engine.export(blend, entry_id=entry_id)
            # The card shows what the exported adapter writes, sampled like every other card.
            samples = generate_samples(registry_path, entry.id, engine=engine)
            write_card(registry_path, entry.id, samples=samples)
            archive = zip_folder(registry().adapter_dir(entry.id))
        status = (
            f"Exported **@{entry.id}** (kind cyborg, rank {entry.lora.r}); it is now in the zoo "
            f"and the zip holds the adapter, its card and predictions.png."
        )
        zoo_html, rows, choices = list_zoo()
        return str(archive), pipeline_snippet(entry.id), status, zoo_html, rows, choices

    initial = load_registry(registry_path)  # JSON only: cheap, and fills the first page
    with gr.Blocks(title="huggingtweets: AI cyborgs") as demo:
        gr.Markdown(INTRO)
        with gr.Accordion("The zoo", open=True):
            zoo_html = gr.HTML(zoo_gallery_html(initial))
            with gr.Accordion("as a table", open=False):
                zoo_table = gr.Dataframe(
                    value=zoo_rows(initial), headers=ZOO_HEADERS, interactive=False
                )
            refresh = gr.Button("Refresh the zoo", size="sm")
        prev_users = gr.State([])
        with gr.Row():
            with gr.Column(scale=1):
                users = gr.Dropdown(
                    choices=user_choices(initial),
                    value=[],
                    multiselect=True,
                    max_choices=MAX_USERS,
                    # Choices are a snapshot taken when the page loads; a cyborg exported by
                    # another visitor since then is still a valid pick (the engine checks ids).
                    allow_custom_value=True,
                    label=f"Users to blend (1 to {MAX_USERS})",
                    elem_id="users",
                )
                sliders = [
                    gr.Slider(
                        -MAX_ABS_WEIGHT,
                        MAX_ABS_WEIGHT,
                        value=1.0,
                        step=0.05,
                        label=f"weight {i + 1}",
                        visible=False,
                        elem_id=f"weight-{i}",
                    )
                    for i in range(MAX_USERS)
                ]
                method = gr.Dropdown(
                    choices=METHOD_CHOICES, value="live", label="Blend method", elem_id="method"
                )
                density = gr.Slider(
                    0.05, 1.0, value=0.5, step=0.05, label="Density (ties, dare, prune only)"
                )
                share_box = gr.Textbox(
                    label="Share link (paste one and press Enter to restore it)",
                    elem_id="share",
                    buttons=["copy"],
                )
            with gr.Column(scale=2):
                prompt = gr.Textbox(
                    DEFAULT_PROMPT, label="Prompt", max_length=MAX_PROMPT_CHARS, elem_id="prompt"
                )
                with gr.Row():
                    num_samples = gr.Slider(1, MAX_SAMPLES, value=2, step=1, label="Samples")
                    max_new_tokens = gr.Slider(
                        1, MAX_NEW_TOKENS, value=40, step=1, label="Max new tokens"
                    )
                    temperature = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Temperature")
                    top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="Top-p")
                    seed = gr.Number(0, precision=0, minimum=0, label="Seed")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
                out_text = gr.Textbox(label="Samples", lines=6, elem_id="samples")
                out_hl = gr.HighlightedText(
                    label="Who is speaking", show_legend=True, elem_id="speakers"
                )
                gr.Markdown(f"<small>{SPEAKER_NOTE}</small>")
        with gr.Tabs():
            with gr.Tab("Cyborg card"):
                data = gr.Dataframe(
                    headers=["Data"], label="Training data", interactive=False, elem_id="data"
                )
                cyborg_card = gr.Markdown("*Pick users to see the cyborg's card.*")
            with gr.Tab("Parents' cards"):
                parent_cards = gr.Markdown()
            with gr.Tab("Export cyborg"):
                gr.Markdown(
                    "Save the current weight-space blend as one LoRA adapter (kind `cyborg`) in "
                    "the zoo, with its card and thumbnail, and download it as a zip."
                )
                with gr.Row():
                    export_id = gr.Textbox(
                        label="Cyborg id (optional; default joins the handles)", scale=2
                    )
                    export_btn = gr.Button("Export cyborg", elem_id="export", scale=1)
                export_status = gr.Markdown()
                export_file = gr.File(label="Adapter folder (zip)", elem_id="export-file")
                snippet = gr.Code(language="python", label="Use it with transformers")

        blend_inputs = [users, *sliders, method, density, seed]
        gr.on(
            [demo.load, refresh.click],
            list_zoo,
            None,
            [zoo_html, zoo_table, users],
            api_name="list_zoo",
        )
        # Only user actions (input/release) trigger these: a programmatic update (a share link)
        # sets all widgets at once and describes the blend itself, so no event sees half of it.
        card_outputs = [cyborg_card, data, parent_cards]
        restore_outputs = [users, *sliders, method, density, seed, prev_users, share_box]
        restore_outputs += card_outputs
        demo.load(restore_from_request, None, restore_outputs, api_name="load_share")
        share_box.submit(restore, share_box, restore_outputs, api_name="restore")
        users.input(
            pick,
            [users, prev_users, *sliders, method, density, seed],
            [*sliders, prev_users, share_box, *card_outputs],
            api_name="pick",
        )
        describe = [method.input, density.release, seed.input]
        describe += [s.release for s in sliders]
        gr.on(describe, share, blend_inputs, share_box, api_name="share")
        gr.on(describe, card, blend_inputs, card_outputs, api_name="card")
        gen_inputs = [users, *sliders, method, density, prompt, num_samples, temperature, top_p]
        gr.on(
            [run.click, prompt.submit],
            generate,
            [*gen_inputs, max_new_tokens, seed],
            [out_text, out_hl],
            api_name="generate",
        )
        export_btn.click(
            export,
            [*blend_inputs, export_id],
            [export_file, snippet, export_status, zoo_html, zoo_table, users],
            api_name="export",
        )
    return demo


# The model cards' header uses the Hub's utility classes; give them their meaning here too.
CSS = """
.flex { display: flex; }
.inline-flex { display: inline-flex; }
.flex-col { flex-direction: column; }
"""


def launch(
    registry_path: str | Path, host: str = "127.0.0.1", port: int = 7860, share: bool = False
) -> None:
    """Build, queue and serve the Space (blocks until interrupted)."""
    demo = build_demo(registry_path)
    demo.queue(**QUEUE).launch(server_name=host, server_port=port, share=share, css=CSS)
