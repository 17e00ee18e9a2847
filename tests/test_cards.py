"""Model cards: golden files, front matter, escaping, write_card, and the card's own snippet.

Regenerate the golden cards after a deliberate template change (then review the diff by eye):
    UPDATE_GOLDEN=1 python -m pytest -q tests/test_cards.py
"""

import html
import os
import re
from pathlib import Path

import pytest
import yaml
from _adapters import make_adapter

from cards import render_card, write_card
from cards.render import card_data, css_url, md_text
from zoo.registry import (
    Entry,
    LoraSettings,
    Parent,
    PostStats,
    Registry,
    RegistryError,
    id_from_handles,
    register_entry,
)

GOLDEN = Path(__file__).parent / "fixtures" / "cards"
CREATED = "2024-01-01T00:00:00+00:00"
SAMPLES = [("My dream is", "to fly"), ("I think that", "cats rule"), ("Today I", "ate soup")]


def user_entry(**overrides) -> Entry:
    values = dict(
        id="getfiscal",
        kind="user",
        handles=["getfiscal"],
        display_names=["Don Hughes 🦌"],
        avatars=["https://pbs.twimg.com/profile_images/1164709780885106690/5nqTrvC0_400x400.jpg"],
        source="x-archive",
        stats={"getfiscal": PostStats(downloaded=3221, retweets=1002, short=409, kept=1810)},
        lora=LoraSettings(r=8, alpha=16, dropout=0.05),
        metrics={"base_perplexity": 61.234, "adapter_perplexity": 23.5},
        wandb={
            "entity": "wandb",
            "project": "huggingtweets",
            "preprocess_run": "d6p1oytn",
            "train_run": "28d4ali8",
        },
        adapter_path="adapters/getfiscal",
        created=CREATED,
    )
    values.update(overrides)
    return Entry(**values)


def cyborg_registry() -> tuple[Entry, Registry]:
    soup = Entry(
        id="sniping_soup",
        kind="user",
        handles=["sniping_soup"],
        display_names=["Soup"],
        avatars=["https://pbs.twimg.com/profile_images/1412400542794539011/cnUXEkge_400x400.jpg"],
        source="x-archive",
        stats={"sniping_soup": PostStats(3237, 106, 1287, 1844)},
        adapter_path="adapters/sniping_soup",
        created=CREATED,
    )
    scotty = Entry(
        id="marylandmudflap",
        kind="user",
        handles=["marylandmudflap"],
        display_names=["SCOTTY"],
        avatars=["avatars/marylandmudflap.png"],  # a local file: initials in the card's HTML
        source="bluesky",
        stats={"marylandmudflap": PostStats(3245, 146, 327, 2772)},
        adapter_path="adapters/marylandmudflap",
        created=CREATED,
    )
    cyborg = Entry(
        id="sniping_soup-marylandmudflap",
        kind="cyborg",
        handles=["sniping_soup", "marylandmudflap"],
        display_names=["Soup", "SCOTTY"],
        avatars=soup.avatars + scotty.avatars,
        source="blend",
        stats={**soup.stats, **scotty.stats},
        lora=LoraSettings(r=16, alpha=16, dropout=0.0),
        adapter_path="adapters/sniping_soup-marylandmudflap",
        created=CREATED,
        parents=[Parent("sniping_soup", 0.7), Parent("marylandmudflap", 0.3)],
        blend={
            "method": "ties",
            "density": 0.5,
            "seed": 0,
            "rank": 16,
            "energy_kept": 0.9731,
            "blend_id": "marylandmudflap~0.3~sniping_soup~0.7~ties~d0.5~s0",
        },
    )
    entries = {e.id: e for e in (soup, scotty, cyborg)}
    return cyborg, Registry(path=Path("/zoo/registry.json"), entries=entries)


def front_matter(text: str) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert match, "card must open with a YAML block"
    return yaml.safe_load(match.group(1))


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{name} changed; UPDATE_GOLDEN=1 to accept"


def test_single_user_card_matches_golden():
    entry = user_entry()
    check_golden("single-user.md", str(render_card(entry, Registry(Path("/zoo/r.json")))))


def test_cyborg_card_matches_golden():
    cyborg, registry = cyborg_registry()
    check_golden("cyborg.md", str(render_card(cyborg, registry)))


@pytest.mark.parametrize("which", ["user", "cyborg", "hub"])
def test_front_matter_has_required_fields(which):
    if which == "cyborg":
        entry, registry = cyborg_registry()
    else:
        entry = user_entry(hub_repo="huggingtweets/getfiscal" if which == "hub" else None)
        registry = Registry(Path("/zoo/r.json"))
    text = str(render_card(entry, registry))
    meta = front_matter(text)
    assert meta["language"] == "en"
    assert meta["license"] == "mit"
    assert meta["library_name"] == "peft"
    assert meta["pipeline_tag"] == "text-generation"
    assert meta["base_model"] == "openai-community/gpt2"
    assert meta["tags"] == ["huggingtweets", "lora", "peft", "text-generation"]
    assert meta["widget"] == [{"text": "My dream is"}]
    if which == "hub":
        expected = "https://huggingface.co/huggingtweets/getfiscal/resolve/main/predictions.png"
        assert meta["thumbnail"] == expected
        assert 'model="huggingtweets/getfiscal"' in text
    else:
        assert meta["thumbnail"] == "predictions.png"
    assert card_data(entry).to_dict() == meta


def test_cards_follow_the_seed_structure():
    entry = user_entry()
    text = str(render_card(entry, Registry(Path("/zoo/r.json"))))
    for heading in ("How does it work?", "Training data", "Training procedure", "How to use"):
        assert f"## {heading}" in text
    assert "🤖 AI BOT 🤖" in text and "@getfiscal bot" in text
    assert "| Data | Quantity |" in text and "| Tweets kept | 1810 |" in text
    assert "https://wandb.ai/wandb/huggingtweets/runs/d6p1oytn/artifacts" in text
    assert "https://wandb.ai/wandb/huggingtweets/runs/28d4ali8" in text
    assert "61.23" in text and "23.50" in text

    cyborg, registry = cyborg_registry()
    text = str(render_card(cyborg, registry))
    assert "🤖 AI CYBORG 🤖" in text and "AI BOT" not in text
    assert "Soup &amp; SCOTTY" in text and "@sniping_soup-marylandmudflap<" in text
    assert "| Data | Soup | SCOTTY |" in text and "| Tweets kept | 1844 | 2772 |" in text
    assert text.count("border-radius: 50%") == 2  # one avatar per account
    assert ">S</div>" in text  # SCOTTY's avatar is a local file: initials in a circle
    assert "`ties`" in text and "97.3%" in text and "rank 16" in text


def test_offline_run_without_wandb_urls_omits_the_sentences():
    entry = user_entry(wandb={"project": "huggingtweets", "train_run": "offline-123"})
    text = str(render_card(entry, Registry(Path("/zoo/r.json"))))
    assert "wandb.ai/wandb/huggingtweets/runs" not in text
    assert "Explore the data" not in text and "W&B training run" not in text


NASTY = ["</div><script>alert(1)</script>", '"quoted" --- BOT\nnewline\n\n---\n# x']


@pytest.mark.parametrize("name", NASTY)
def test_user_controlled_names_are_escaped(name):
    entry = user_entry(
        display_names=[name], avatars=["https://evil.example/a.png');background:url('x"]
    )
    text = str(render_card(entry, Registry(Path("/zoo/r.json"))))
    meta = front_matter(text)
    assert meta == card_data(entry).to_dict()  # the YAML block is untouched by the name
    assert text.count("\n---\n") == 1  # only the end of the front matter
    assert "<script>" not in text and "</div><script>" not in text
    assert html.escape(" ".join(name.split())) in text
    assert "\n# x" not in text  # no Markdown structure smuggled in by a newline
    assert "url('https://evil.example/a.png%27%29;background:url%28%27x')" in text
    assert text.count("<div") == text.count("</div>")


def test_escaping_helpers():
    assert md_text("a|b*c_[d]") == r"a\|b\*c\_\[d\]"
    assert css_url("javascript:alert(1)") is None
    assert css_url("avatars/me.png") is None
    assert css_url("https://x.y/a b'(c)") == "https://x.y/a%20b%27%28c%29"


@pytest.mark.parametrize("handle", ["ａlice", "ali\u200bce", "alice/../x", "al ice"])
def test_handles_with_unicode_tricks_are_rejected(handle):
    with pytest.raises(RegistryError):
        id_from_handles([handle])


# --- write_card and the card's own snippet, on a real tiny adapter --------------------------------


@pytest.fixture
def zoo(tmp_path, tiny_model_dir) -> Path:
    registry_path = tmp_path / "registry.json"
    make_adapter(tiny_model_dir, tmp_path / "adapters" / "alice", seed=0)
    entry = user_entry(
        id="alice",
        handles=["alice"],
        display_names=["Alice <b>"],
        avatars=["avatars/alice.png"],
        stats={"alice": PostStats(10, 2, 3, 5)},
        base_model=str(tiny_model_dir),
        adapter_path="adapters/alice",
    )
    register_entry(registry_path, entry)
    return registry_path


def test_write_card_writes_readme_and_thumbnail(zoo):
    from PIL import Image

    (zoo.parent / "avatars").mkdir()
    Image.new("RGB", (64, 48), "#884400").save(zoo.parent / "avatars" / "alice.png")
    readme = write_card(zoo, "alice", samples=SAMPLES)
    folder = zoo.parent / "adapters" / "alice"
    assert readme == folder / "README.md"
    text = readme.read_text(encoding="utf-8")
    assert front_matter(text)["thumbnail"] == "predictions.png"
    assert "Alice &lt;b&gt;" in text
    with Image.open(folder / "predictions.png") as im:
        assert im.format == "PNG" and im.size == (1200, 628)
        assert im.getpixel((56 + 66, 56 + 66)) == (0x88, 0x44, 0x00)  # the local avatar


def test_card_snippet_runs_against_the_local_adapter(zoo, monkeypatch, capsys):
    readme = write_card(zoo, "alice", samples=SAMPLES)
    code = re.search(r"```python\n(.*?)```", readme.read_text(encoding="utf-8"), re.S).group(1)
    assert 'model="adapters/alice"' in code
    monkeypatch.chdir(zoo.parent)  # the card says: run it from the zoo folder
    namespace = {}
    exec(compile(code, "card-snippet", "exec"), namespace)
    assert capsys.readouterr().out.count("My dream is") >= 5
    model = namespace["generator"].model  # the pipeline loaded base + adapter, not the base alone
    assert any("lora_B" in name for name, _ in model.named_parameters())


def test_write_card_samples_with_the_engine(zoo, monkeypatch):
    import cards.render

    drawn = {}
    monkeypatch.setattr(
        cards.render, "draw_predictions", lambda e, samples, out, avatars: drawn.update(s=samples)
    )
    write_card(zoo, "alice")
    prompts = [prompt for prompt, _ in drawn["s"]]
    assert prompts == list(cards.render.SAMPLE_PROMPTS)
    assert all(isinstance(text, str) for _, text in drawn["s"])
