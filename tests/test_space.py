"""The Space through `gradio_client`, against the app served in-process on a tiny offline zoo.

    python -m pytest -q tests/test_space.py

The zoo holds three real LoRA adapters with non-zero B (`_adapters.make_adapter`) on the tiny GPT-2,
display names that are hostile HTML, and one entry whose weights are corrupt.
"""

from __future__ import annotations

import socket
import sys
import time
import zipfile
from pathlib import Path

import pytest
from _adapters import make_adapter

from zoo.registry import Entry, PostStats, file_checksum, load_registry, register_entry

SPACE_DIR = Path(__file__).resolve().parents[1] / "spaces" / "huggingtweets"
if str(SPACE_DIR) not in sys.path:
    sys.path.insert(0, str(SPACE_DIR))

import cyborg_ui  # noqa: E402

from zoo.blend import Blend, BlendError  # noqa: E402

USERS = {
    # id: (display name, (downloaded, retweets, short, kept), base ppl, adapter ppl)
    "alice": ("Alice A.", (120, 10, 30, 80), 410.0, 95.5),
    "bob": ("Bob <b>Builder</b>", (200, 50, 50, 100), 410.0, 120.25),
    "carol": ("<script>alert('carol')</script>", (90, 0, 20, 70), 410.0, 88.0),
}
PROMPT = "My dream is"


def build_space_zoo(root: Path, base_dir: Path) -> Path:
    """alice, bob, carol (non-zero LoRA B, stats, perplexities) and `broken` (corrupt weights)."""
    registry = root / "registry.json"
    for seed, (user, (name, counts, base_ppl, adapter_ppl)) in enumerate(USERS.items(), 1):
        folder = make_adapter(base_dir, root / "adapters" / user, seed=seed)
        entry = Entry(
            id=user,
            kind="user",
            handles=[user],
            display_names=[name],
            base_model=str(base_dir),
            source="jsonl",
            stats={user: PostStats(*counts)},
            metrics={"base_perplexity": base_ppl, "adapter_perplexity": adapter_ppl},
            adapter_path=f"adapters/{user}",
            checksum=file_checksum(folder / "adapter_model.safetensors"),
        )
        register_entry(registry, entry)
    broken = make_adapter(base_dir, root / "adapters" / "broken", seed=9)
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    entry = Entry(
        id="broken",
        kind="user",
        handles=["broken"],
        display_names=["Broken"],
        base_model=str(base_dir),
        adapter_path="adapters/broken",
    )
    register_entry(registry, entry)
    return registry


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(registry: Path):
    """Launch the Space in this process on an ephemeral port; returns (demo, url)."""
    demo = cyborg_ui.build_demo(registry)
    demo.queue(**cyborg_ui.QUEUE)
    _, url, _ = demo.launch(
        server_name="127.0.0.1",
        server_port=free_port(),
        prevent_thread_lock=True,
        quiet=True,
        css=cyborg_ui.CSS,
    )
    return demo, url


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, tiny_model_dir) -> Path:
    return build_space_zoo(tmp_path_factory.mktemp("space-zoo"), tiny_model_dir)


@pytest.fixture(scope="module")
def client(zoo):
    from gradio_client import Client

    demo, url = serve(zoo)
    try:
        yield Client(url, verbose=False)
    finally:
        demo.close()


def weights(*values: float) -> list[float]:
    return [*values] + [1.0] * (8 - len(values))


def gen_args(users, ws, method="live", prompt=PROMPT, n=2, max_new_tokens=12, seed=0):
    return [users, *weights(*ws), method, 0.5, prompt, n, 1.0, 0.95, max_new_tokens, seed]


# ---------------------------------------------------------------------------------------------
# Pure translations
# ---------------------------------------------------------------------------------------------
def test_widgets_and_blend_id_round_trip():
    blend = cyborg_ui.blend_from_widgets(["bob", "alice"], weights(-0.3, 0.7), "ties", 0.3, 4.0)
    assert blend.id == "alice~0.7~bob~-0.3~ties~d0.3~s4"
    link = cyborg_ui.share_url("http://host:7860/?blend=old#x", blend)
    assert link == "http://host:7860/?blend=alice~0.7~bob~-0.3~ties~d0.3~s4"
    restored = cyborg_ui.widgets_from_blend(Blend.parse(cyborg_ui.blend_id_from_text(link)))
    assert restored == {
        "users": ["alice", "bob"],
        "weights": weights(0.7, -0.3),
        "method": "ties",
        "density": 0.3,
        "seed": 4,
    }
    again = cyborg_ui.blend_from_widgets(
        restored["users"], restored["weights"], "ties", restored["density"], restored["seed"]
    )
    assert again == blend
    assert cyborg_ui.blend_id_from_text("?blend=" + blend.id) == blend.id


def test_bad_widgets_raise_readable_errors():
    with pytest.raises(BlendError, match="pick at least one user"):
        cyborg_ui.blend_from_widgets([], weights(), "live", 0.5, 0)
    with pytest.raises(BlendError, match="all weights are zero"):
        cyborg_ui.blend_from_widgets(["alice", "bob"], weights(0, 0.001), "live", 0.5, 0)
    with pytest.raises(BlendError, match="characters long"):
        cyborg_ui.check_prompt("x" * (cyborg_ui.MAX_PROMPT_CHARS + 1))
    with pytest.raises(BlendError, match="max new tokens"):
        cyborg_ui.sampling_from_widgets(1, 1.0, 0.95, cyborg_ui.MAX_NEW_TOKENS + 1, 0)


def test_remap_keeps_each_users_weight():
    values = cyborg_ui.remap_weights(["alice", "bob"], weights(0.2, -1.5), ["bob", "carol"])
    assert values == weights(-1.5, 1.0)


def test_gallery_and_tables_escape_and_add_up(zoo):
    registry = load_registry(zoo)
    page = cyborg_ui.zoo_gallery_html(registry)
    assert "<script>" not in page and "<b>Builder" not in page
    assert "&lt;script&gt;alert(&#x27;carol&#x27;)&lt;/script&gt;" in page
    assert "posts kept 80 / downloaded 120" in page and "410.0 -&gt; 95.5" in page
    headers, rows = cyborg_ui.data_table([registry.get("alice"), registry.get("bob")])
    assert headers == ["Data", "Alice A.", "Bob <b>Builder</b>"]  # a Dataframe shows plain text
    assert rows == [
        ["Tweets downloaded", 120, 200],
        ["Retweets", 10, 50],
        ["Short tweets", 30, 50],
        ["Tweets kept", 80, 100],
    ]
    preview = cyborg_ui.preview_entry(Blend.from_weights({"alice": 0.7, "bob": 0.3}), registry)
    card = cyborg_ui.card_markdown(preview, registry)
    assert preview.kind == "cyborg" and preview.id == "alice-bob"
    assert "| Tweets kept | 80 | 100 |" in card and "<b>Builder" not in card


# ---------------------------------------------------------------------------------------------
# Through the client
# ---------------------------------------------------------------------------------------------
def test_list_zoo(client):
    gallery, table, _ = client.predict(api_name="/list_zoo")
    assert [row[0] for row in table["data"]] == ["alice", "bob", "carol", "broken"]
    assert table["data"][0][4:] == [80, 120, "410.0 -> 95.5"]
    assert "<script>" not in gallery and "@carol" in gallery


def test_generate_streams_with_speakers(client):
    start = time.perf_counter()
    job = client.submit(*gen_args(["alice", "bob"], [0.7, 0.6], "product"), api_name="/generate")
    updates, first = [], None
    for text, spans in job:
        first = first or time.perf_counter() - start
        updates.append((text, spans))
    print(f"time to first token: {first * 1000:.0f} ms ({len(updates)} updates)")
    assert len(updates) >= 2
    text, spans = updates[-1]
    assert text.count(PROMPT) == 2  # two samples, each starting with the prompt
    speakers = {s["class_or_confidence"] for s in spans["value"]} - {None}
    assert speakers and speakers <= {"alice", "bob"}
    assert len(updates[0][0]) <= len(text)

    # A weight-space blend has no speakers; the same request is reproducible.
    args = gen_args(["alice", "carol"], [1.0, -0.5], "live", seed=3)
    first_text, spans = client.predict(*args, api_name="/generate")
    assert {s["class_or_confidence"] for s in spans["value"]} == {None}
    assert client.predict(*args, api_name="/generate")[0] == first_text


def test_pick_relabels_sliders_and_describes(client):
    out = client.predict(["alice", "bob"], *weights(0.7, -0.3), "live", 0.5, 0, api_name="/pick")
    sliders, share, card, table, parents = out[:8], out[8], out[9], out[10], out[11]
    assert [s["visible"] for s in sliders] == [True, True] + [False] * 6
    assert sliders[1]["label"] == "weight of Bob <b>Builder</b> (@bob)"
    assert share.endswith("?blend=alice~1~bob~1~live~d0.5~s0")  # new users start at weight 1
    assert "AI CYBORG" in card and "@alice-bob" in card and "Bob &lt;b&gt;Builder" in card
    assert table["headers"] == ["Data", "Alice A.", "Bob <b>Builder</b>"]
    assert table["value"]["data"][3] == ["Tweets kept", 80, 100]
    assert parents.count("AI BOT") == 2


def test_share_link_round_trip(client):
    ws = weights(0.7, -0.3)
    link = client.predict(["bob", "alice"], *ws[:1], -0.3, *ws[2:], "dare_ties", 0.3, 7,
                          api_name="/share")  # fmt: skip
    assert link.endswith("?blend=alice~-0.3~bob~0.7~dare_ties~d0.3~s7")
    users, *rest = client.predict(link, api_name="/restore")
    sliders, (method, density, seed, share, card) = rest[:8], rest[8:13]
    assert users == ["alice", "bob"]
    assert [s["value"] for s in sliders[:2]] == [-0.3, 0.7]
    assert (method, density, seed) == ("dare_ties", 0.3, 7)
    assert share.endswith("?blend=alice~-0.3~bob~0.7~dare_ties~d0.3~s7") and "@alice-bob" in card


def test_export_cyborg(client, zoo):
    from gradio_client import Client
    from transformers import pipeline

    other = Client(client.src, verbose=False)
    archive, snippet, status, _, table, _ = client.predict(
        ["alice", "bob"], *weights(0.7, 0.3), "live", 0.5, 0, "", api_name="/export"
    )
    entry = load_registry(zoo).get("alice-bob")
    assert entry.kind == "cyborg" and [p.id for p in entry.parents] == ["alice", "bob"]
    assert "@alice-bob" in status and 'model="alice-bob"' in snippet
    assert "alice-bob" in [row[0] for row in table["data"]]
    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
    assert {"alice-bob/adapter_model.safetensors", "alice-bob/README.md"} <= names
    assert "alice-bob/predictions.png" in names
    folder = load_registry(zoo).adapter_dir("alice-bob")
    generator = pipeline("text-generation", model=str(folder))
    assert generator(PROMPT, max_new_tokens=3, do_sample=False)[0]["generated_text"]
    # The new cyborg can be picked and blended like any user, also in a session opened earlier.
    text, _ = other.predict(
        *gen_args(["alice-bob", "carol"], [1.0, 0.5], n=1), api_name="/generate"
    )
    assert text.startswith(PROMPT)


@pytest.mark.parametrize(
    "args, message",
    [
        (gen_args([], []), "pick at least one user"),
        (gen_args(["alice", "bob"], [0.0, 0.0]), "all weights are zero"),
        (gen_args(["alice"], [1.0], prompt="x" * 401), "characters long"),
        (gen_args(["alice"], [1.0], prompt="word " * 70, max_new_tokens=80), "prompt too long"),
        (gen_args(["alice", "broken"], [1.0, 1.0]), "broken"),
        (gen_args(["alice", "bob"], [1.0, -1.0], "mixture"), "weights must be >= 0"),
    ],
    ids=["no-user", "zero-weights", "long-prompt", "long-prompt-tokens", "broken", "mixture"],
)
def test_generate_errors_are_clear(client, args, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        client.predict(*args, api_name="/generate")


def test_errors_leave_the_space_working(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="cannot be saved as one adapter"):
        client.predict(["alice", "bob"], *weights(1, 1), "product", 0.5, 0, "", api_name="/export")
    with pytest.raises(AppError, match="share link"):
        client.predict("alice~9~live~d0.5~s0", api_name="/restore")
    with pytest.raises(AppError, match="nobody"):
        client.predict(*gen_args(["alice", "nobody"], [1.0, 1.0]), api_name="/generate")
    text, _ = client.predict(*gen_args(["alice", "bob"], [0.5, 0.5], n=1), api_name="/generate")
    assert text.startswith(PROMPT)
