"""Security properties, each checked against the real code path.

    python -m pytest -q tests/test_security.py

- weights load only from safetensors: a static scan of our source, and a pickle *trap* (unpickling
  it creates a marker folder) placed where a careless loader would read it;
- never `trust_remote_code`, no `eval`/`exec`;
- display names, handles and avatar URLs are escaped in the Space's HTML and in cards;
- ids (registry keys, export ids, pulled repos) cannot write outside the zoo folder;
- tokens (X bearer, HF) never reach logs or any file we write;
- the Space caps prompt length, new tokens, samples, concurrency and the queue.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import pickle
import sys
from pathlib import Path

import pytest
from _adapters import make_adapter, user_entry

from zoo.blend import Blend
from zoo.registry import (
    Entry,
    PostStats,
    RegistryError,
    load_registry,
    register_entry,
)

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("zoo", "training", "cards", "spaces")


# ---------------------------------------------------------------------------------------------
# Static scan of our own source
# ---------------------------------------------------------------------------------------------
def _python_files() -> list[Path]:
    files = [p for d in SOURCE_DIRS for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 20, files  # the scan really looks at the code
    return files


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
UNSAFE_CALLS = {
    "eval",
    "exec",
    "compile",
    "torch.load",
    "pickle.load",
    "pickle.loads",
    "yaml.load",
    "yaml.unsafe_load",
    "np.load",
    "numpy.load",
    "os.system",
}


def scan(path: Path) -> list[str]:
    """Problems in one file: unsafe imports, calls and keyword values."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    problems = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            bad = {a.name.split(".")[0] for a in node.names} & UNSAFE_MODULES
            problems += [f"{where}: import {name}" for name in sorted(bad)]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
            UNSAFE_MODULES
        ):
            problems.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in UNSAFE_CALLS:
                problems.append(f"{where}: call {name}(...)")
            for kw in node.keywords:
                value = kw.value.value if isinstance(kw.value, ast.Constant) else "<expr>"
                if kw.arg == "trust_remote_code" and value is not False:
                    problems.append(f"{where}: trust_remote_code={value}")
                if kw.arg == "weights_only" and value is not True:
                    problems.append(f"{where}: weights_only={value}")
                if kw.arg == "shell" and value is not False:
                    problems.append(f"{where}: shell={value}")
                if kw.arg == "use_safetensors" and value is not True:
                    problems.append(f"{where}: use_safetensors={value}")
    return problems


def test_scanner_catches_what_it_looks_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\nimport torch\nfrom dill import loads\n"
        "torch.load('x')\neval('1')\nexec('x=1')\nmodel.eval()\n"
        "f(trust_remote_code=True)\nf(trust_remote_code=flag)\nsave(x, safe_serialization=True)\n"
    )
    global ROOT
    root, ROOT = ROOT, tmp_path
    try:
        problems = scan(bad)
    finally:
        ROOT = root
    assert [p.split(": ", 1)[1] for p in problems] == [
        "import pickle",
        "from dill import ...",
        "call torch.load(...)",
        "call eval(...)",
        "call exec(...)",
        "trust_remote_code=True",
        "trust_remote_code=<expr>",
    ]


def test_source_never_unpickles_runs_remote_code_or_evals():
    problems = [p for path in _python_files() for p in scan(path)]
    assert problems == []


def test_every_from_pretrained_in_zoo_refuses_remote_code():
    """Model/tokenizer loads in the zoo (what the Space runs) say trust_remote_code=False."""
    calls = []
    for path in sorted((ROOT / "zoo").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and _dotted(node.func).endswith(".from_pretrained"):
                kws = {k.arg: getattr(k.value, "value", None) for k in node.keywords if k.arg}
                calls.append((f"{path.name}:{node.lineno}", kws.get("trust_remote_code")))
    assert calls and all(value is False for _, value in calls), calls


# ---------------------------------------------------------------------------------------------
# Pickle traps: unpickling one creates a marker folder (a harmless stand-in for arbitrary code)
# ---------------------------------------------------------------------------------------------
class _Trap:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def write_trap(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps(_Trap(marker)))
    return path


def test_trap_really_fires(tmp_path):
    marker = tmp_path / "pwned"
    pickle.loads(write_trap(tmp_path / "x.bin", marker).read_bytes())  # the trap itself works
    assert marker.is_dir()


@pytest.fixture(scope="module")
def trap_zoo(tmp_path_factory, tiny_model_dir):
    """alice: real safetensors + pickle traps beside them; mallory: only a pickle trap."""
    root = tmp_path_factory.mktemp("trap-zoo")
    marker = root / "pwned"
    alice = make_adapter(tiny_model_dir, root / "adapters" / "alice", seed=1)
    for name in ("adapter_model.bin", "pytorch_model.bin", "training_args.bin", "model.pt"):
        write_trap(alice / name, marker)
    register_entry(root / "registry.json", user_entry("alice", str(tiny_model_dir), alice))
    mallory = make_adapter(tiny_model_dir, root / "adapters" / "mallory", seed=2)
    (mallory / "adapter_model.safetensors").unlink()
    write_trap(mallory / "adapter_model.bin", marker)
    entry = user_entry("mallory", str(tiny_model_dir), None, hub_repo="x/mallory")
    entry.adapter_path, entry.hub_repo = "adapters/mallory", None
    register_entry(root / "registry.json", entry)
    return root / "registry.json", marker


def test_pickles_beside_safetensors_are_never_unpickled(trap_zoo, tiny_model_dir):
    from zoo.engine import Engine, SamplingParams
    from zoo.loading import load_adapter, load_base

    registry_path, marker = trap_zoo
    model, tokenizer = load_base(str(tiny_model_dir))
    adapter = load_adapter(load_registry(registry_path), "alice", model, tokenizer, "x")
    assert adapter.state and not marker.exists()

    engine = Engine(registry_path)
    (sample,) = engine.generate(
        Blend.from_weights({"alice": 1.0}), "My dream is", SamplingParams(max_new_tokens=3)
    )
    assert isinstance(sample.text, str)
    assert not marker.exists()


def test_a_pickle_alone_is_refused_and_not_unpickled(trap_zoo, tiny_model_dir):
    from zoo.engine import Engine, EngineError, SamplingParams
    from zoo.loading import AdapterLoadError, load_adapter, load_base

    registry_path, marker = trap_zoo
    model, tokenizer = load_base(str(tiny_model_dir))
    with pytest.raises(AdapterLoadError, match=r"'mallory'.*adapter_model\.bin.*pickle weights"):
        load_adapter(load_registry(registry_path), "mallory", model, tokenizer, "x")
    with pytest.raises(EngineError, match="'mallory'.*pickle weights are refused"):
        Engine(registry_path).generate(
            Blend.from_weights({"mallory": 1.0}), "hi", SamplingParams(max_new_tokens=2)
        )
    assert not marker.exists()


def test_pull_copies_no_pickles_or_code(tmp_path, adapter_dir, hub_model_id):
    """A Hub repo carrying pickles and Python beside the adapter: the zoo gets neither."""
    from test_hub import make_zoo, publish_to_cache, pushed_files

    from zoo.hub import pull_adapter

    marker = tmp_path / "pwned"
    files = pushed_files(make_zoo(tmp_path / "src", adapter_dir, hub_model_id), "alice")
    files["adapter_model.bin"] = pickle.dumps(_Trap(marker))
    files["pytorch_model.bin"] = pickle.dumps(_Trap(marker))
    files["modeling_evil.py"] = f"import os; os.makedirs({str(marker)!r})\n".encode()
    publish_to_cache("someone/trapped", files, sha="3" * 40)
    entry = pull_adapter(tmp_path / "zoo" / "registry.json", "someone/trapped")
    folder = load_registry(tmp_path / "zoo" / "registry.json").adapter_dir(entry.id)
    names = {p.name for p in folder.iterdir()}
    assert "adapter_model.safetensors" in names and "huggingtweets.json" in names
    assert not {n for n in names if n.endswith((".bin", ".pt", ".py", ".pkl"))}
    assert not marker.exists()


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_model_dir) -> Path:
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "alice", seed=1)


# ---------------------------------------------------------------------------------------------
# HTML escaping: Space zoo gallery, card preview, model cards
# ---------------------------------------------------------------------------------------------
PAYLOADS = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    '"><svg onload=alert(1)>',
    "</div><iframe src=javascript:alert(1)>",
    "&lt;already&gt; <b>bold</b>",
]


def hostile_entry(entry_id: str, name: str, avatar: str) -> Entry:
    return Entry(
        id=entry_id,
        kind="user",
        handles=[entry_id],
        display_names=[name],
        avatars=[avatar],
        source="bluesky",
        stats={entry_id: PostStats(10, 2, 3, 5)},
        metrics={"base_perplexity": 10.0, "adapter_perplexity": 5.0},
        adapter_path=f"adapters/{entry_id}",
    )


def space_module():
    space = str(ROOT / "spaces" / "huggingtweets")
    if space not in sys.path:
        sys.path.insert(0, space)
    import cyborg_ui

    return cyborg_ui


@pytest.mark.parametrize("payload", PAYLOADS)
def test_space_gallery_and_cards_escape_names_and_avatars(tmp_path, payload):
    import html

    from cards import render_card
    from zoo.registry import Parent, Registry

    ui = space_module()
    avatar = 'https://cdn.example/a.png" onerror="alert(1)'
    registry = Registry(tmp_path / "registry.json")
    registry.entries["eve"] = hostile_entry("eve", payload, avatar)
    registry.entries["mal"] = hostile_entry("mal", payload[::-1], "javascript:alert(1)")
    page = ui.zoo_gallery_html(registry)
    for raw in (payload, payload[::-1]):
        assert html.escape(raw, quote=True) in page
    assert "<script" not in page and "<img src=x" not in page and "<svg" not in page
    assert "<iframe" not in page and "<b>" not in page
    assert 'onerror="alert(1)' not in page  # the avatar URL cannot close its attribute
    assert 'src="javascript:' not in page  # only https:// avatars become <img src>
    assert page.count("<div") == page.count("</div>")

    preview = ui.preview_entry(Blend.from_weights({"eve": 0.5, "mal": 0.5}), registry)
    cyborg = Entry(**{**vars(preview), "parents": [Parent("eve", 0.5), Parent("mal", 0.5)]})
    for entry in (registry.get("eve"), cyborg):
        text = str(render_card(entry, registry))
        assert "<script" not in text and "<img src=x" not in text and "<svg" not in text
        assert "<iframe" not in text and "<b>bold" not in text
        assert 'onerror="alert(1)' not in text and "url('javascript:" not in text


# ---------------------------------------------------------------------------------------------
# Ids cannot write outside the zoo
# ---------------------------------------------------------------------------------------------
ESCAPES = ["../evil", "../../evil", "/tmp/evil", "adapters/../../evil", "..", ".", "a/../../b",
           "..\\evil", "evil\x00", "ｅｖｉｌ/..", "e\u200bvil", "\u202eevil"]  # fmt: skip


@pytest.mark.parametrize("bad", ESCAPES)
def test_registry_refuses_escaping_ids(tmp_path, bad):
    zoo = tmp_path / "zoo"
    with pytest.raises(RegistryError, match=r"adapter id .* (must|may only)"):
        register_entry(zoo / "registry.json", user_entry(bad, "base", None, hub_repo="a/b"))
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil").exists()
    assert not (zoo / "registry.json").exists()


@pytest.mark.parametrize("bad", ["../evil", "/tmp/evil", "adapters/../../evil", "a/../../b"])
def test_registry_refuses_escaping_adapter_paths(tmp_path, bad):
    with pytest.raises(RegistryError, match="must be relative and inside the zoo folder"):
        Entry(id="eve", kind="user", handles=["eve"], display_names=["Eve"], adapter_path=bad)


def test_hand_edited_registry_with_escaping_path_is_refused(tmp_path):
    (tmp_path / "zoo").mkdir()
    (tmp_path / "secret").mkdir()
    path = tmp_path / "zoo" / "registry.json"
    entry = user_entry("eve", "base", None, hub_repo="a/b").to_dict()
    for bad in ("../secret", "/etc", "adapters/../../secret"):
        path.write_text(
            json.dumps({"version": 1, "entries": {"eve": entry | {"adapter_path": bad}}})
        )
        with pytest.raises(RegistryError, match="inside the zoo folder"):
            load_registry(path)
    # A symlink inside the zoo that points out of it is refused when resolved.
    (tmp_path / "zoo" / "adapters").mkdir()
    (tmp_path / "zoo" / "adapters" / "eve").symlink_to(tmp_path / "secret")
    path.write_text(json.dumps({"version": 1, "entries": {"eve": entry | {"adapter_path": "adapters/eve"}}}))  # fmt: skip
    with pytest.raises(RegistryError, match="escapes the zoo folder"):
        load_registry(path).adapter_dir("eve")


EXPORT_IDS = ["..", "../evil", "a/b", "/tmp/evil-abs", "e\u200bvil"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("bad", EXPORT_IDS)
def test_engine_export_ids_cannot_leave_the_zoo(zoo_copy, bad):
    from zoo.engine import Engine, EngineError

    before = snapshot(zoo_copy.parents[1])
    try:
        with pytest.raises(EngineError, match="adapter id"):
            Engine(zoo_copy).export(Blend.from_weights({"alice": 0.5, "bob": 0.5}), entry_id=bad)
    finally:
        after = snapshot(zoo_copy.parents[1])
    assert after.keys() - before.keys() <= {"zoo/registry.json.lock"}
    assert all(after.get(k) == v for k, v in before.items() if not k.endswith(".lock"))
    assert not Path("/tmp/evil-abs").exists()


@pytest.mark.parametrize("bad", EXPORT_IDS)
def test_space_export_id_is_checked_before_the_engine(bad):
    ui = space_module()
    with pytest.raises(RegistryError, match="adapter id"):
        ui.check_export_id(bad)
    assert ui.check_export_id("  ") is None and ui.check_export_id(" my_cyborg ") == "my_cyborg"


def test_space_export_api_refuses_escaping_ids(zoo_copy):
    from gradio_client import Client
    from gradio_client.exceptions import AppError
    from test_space import serve, weights

    before = snapshot(zoo_copy.parents[1])
    demo, url = serve(zoo_copy)
    try:
        client = Client(url, verbose=False)
        for bad in ("..", "../../evil", "/tmp/evil-abs"):
            with pytest.raises(AppError, match="cannot export: adapter id"):
                client.predict(["alice", "bob"], *weights(0.5, 0.5), "live", 0.5, 0, bad,
                               api_name="/export")  # fmt: skip
    finally:
        demo.close()
    after = snapshot(zoo_copy.parents[1])
    assert {k: v for k, v in after.items() if not k.endswith(".lock")} == {
        k: v for k, v in before.items() if not k.endswith(".lock")
    }


@pytest.mark.parametrize(
    ("repo_id", "entry_id", "metadata_id", "message"),
    [
        ("../evil", None, None, "must look like 'owner/name'"),
        ("someone/..", None, None, "must look like 'owner/name'"),
        ("someone/ok", "../evil", None, "adapter id"),
        ("someone/ok", "/tmp/evil", None, "adapter id"),
        ("someone/meta-escape", None, "../../evil", "adapter id"),
    ],
)
def test_pull_ids_cannot_leave_the_zoo(
    tmp_path, adapter_dir, hub_model_id, repo_id, entry_id, metadata_id, message
):
    from test_hub import make_zoo, publish_to_cache, pushed_files

    from zoo.hub import HubError, pull_adapter

    files = pushed_files(make_zoo(tmp_path / "src", adapter_dir, hub_model_id), "alice")
    if metadata_id:
        meta = json.loads(files["huggingtweets.json"])
        files["huggingtweets.json"] = json.dumps(meta | {"id": metadata_id}).encode()
    if "/" in repo_id and ".." not in repo_id:
        publish_to_cache(repo_id, files, sha="4" * 40)
    zoo = tmp_path / "deep" / "zoo"
    before = set(tmp_path.rglob("*"))
    with pytest.raises((HubError, RegistryError), match=message):
        pull_adapter(zoo / "registry.json", repo_id, entry_id=entry_id)
    created = set(tmp_path.rglob("*")) - before
    assert all(zoo in p.parents or p == zoo for p in created), created
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil").exists()


# ---------------------------------------------------------------------------------------------
# Tokens never reach logs or disk
# ---------------------------------------------------------------------------------------------
X_TOKEN = "AAAAAAAAAAAAAAAAAAAAAsecretXbearer0token1234"
HF_TOKEN = "hf_secretHubToken0123456789abcdefABCDEF"


def fake_x_api(monkeypatch):
    """Real tweepy.Client; only the HTTP session answers from here (user, then one tweet page)."""
    import requests

    seen = []

    def request(self, method, url, **kwargs):
        seen.append((url, kwargs.get("headers", {})))
        if "/users/by/username/" in url:
            body = {"data": {"id": "42", "username": "ada", "name": "Ada Lovelace"}}
        else:
            posts = [f"post {i}: the analytical engine weaves algebraic patterns" for i in range(9)]
            body = {"data": [{"id": str(i), "text": t} for i, t in enumerate(posts)],
                    "meta": {"result_count": 9}}  # fmt: skip
        response = requests.Response()
        response.status_code, response.reason, response.url = 200, "OK", url
        response._content = json.dumps(body).encode()
        response.headers["Content-Type"] = "application/json"
        return response

    monkeypatch.setattr(requests.Session, "request", request)
    return seen


def assert_nowhere(secret: str, *folders: Path, text: str = "") -> None:
    assert secret not in text
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path


def test_x_api_token_stays_out_of_debug_logs_and_files(tmp_path, monkeypatch, caplog):
    from training.fetch import FetchConfig, run

    seen = fake_x_api(monkeypatch)
    monkeypatch.setenv("X_BEARER_TOKEN", X_TOKEN)
    with caplog.at_level(logging.DEBUG):
        folder = run(FetchConfig(source="x-api", user="ada", data_dir=str(tmp_path / "data")))
        run(FetchConfig(source="x-api", user="ada", data_dir=str(tmp_path / "d2"),
                        bearer_token=X_TOKEN + "x"))  # fmt: skip
    assert seen and seen[0][1]["Authorization"] == f"Bearer {X_TOKEN}"  # it was really used
    assert "Making API request" in caplog.text  # tweepy's DEBUG lines were captured...
    assert "<redacted>" in caplog.text  # ...with the header's token replaced
    assert (folder / "posts.jsonl").is_file()
    assert_nowhere(X_TOKEN, tmp_path, text=caplog.text)
    assert not logging.getLogger("tweepy.client").filters  # the filter does not linger


def test_x_api_token_stays_out_of_a_whole_training_run(
    tmp_path, monkeypatch, caplog, tiny_model_dir
):
    """fetch (x-api) -> train -> registry entry -> card: the token is in none of it."""
    from training.train import TrainConfig, run

    fake_x_api(monkeypatch)
    posts = (ROOT / "tests" / "fixtures" / "corpus.txt").read_text(encoding="utf-8").splitlines()
    import requests

    original = requests.Session.request

    def many_posts(self, method, url, **kwargs):
        response = original(self, method, url, **kwargs)
        if "/tweets" in url:
            data = [{"id": str(i), "text": t} for i, t in enumerate(posts)]
            response._content = json.dumps({"data": data, "meta": {}}).encode()
        return response

    monkeypatch.setattr(requests.Session, "request", many_posts)
    monkeypatch.setenv("X_BEARER_TOKEN", X_TOKEN)
    cfg = TrainConfig(source="x-api", user="ada", data_dir=str(tmp_path / "data"),
                      registry=str(tmp_path / "zoo" / "registry.json"),
                      base_model=str(tiny_model_dir), max_steps=2, device="cpu",
                      write_card=True)  # fmt: skip
    with caplog.at_level(logging.DEBUG):
        entry = run(cfg)
    assert entry.id == "ada" and (tmp_path / "zoo" / "adapters" / "ada" / "README.md").is_file()
    assert_nowhere(X_TOKEN, tmp_path, text=caplog.text + repr(cfg) + json.dumps(entry.to_dict()))


def test_hf_token_stays_out_of_push_logs_and_files(tmp_path, monkeypatch, caplog, adapter_dir,
                                                   hub_model_id):  # fmt: skip
    from test_hub import FakeHfApi, make_zoo

    from zoo.hub import push_adapter

    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    registry = make_zoo(tmp_path / "zoo", adapter_dir, hub_model_id)
    with caplog.at_level(logging.DEBUG):
        dry = push_adapter(registry, "alice", dry_run=True)
        pushed = push_adapter(registry, "alice", api=FakeHfApi())
    uploaded = b"".join(f.content for f in pushed.files)
    assert HF_TOKEN.encode() not in uploaded
    assert_nowhere(HF_TOKEN, tmp_path, text=caplog.text + str(dry) + str(pushed))


# ---------------------------------------------------------------------------------------------
# Space limits
# ---------------------------------------------------------------------------------------------
def test_space_limits_are_set_and_enforced(tmp_path):
    from zoo.blend import BlendError
    from zoo.engine import MAX_NEW_TOKENS as ENGINE_MAX_NEW_TOKENS

    ui = space_module()
    assert ui.MAX_PROMPT_CHARS == 400 and ui.MAX_NEW_TOKENS == 80 and ui.MAX_SAMPLES == 4
    assert ui.MAX_NEW_TOKENS <= ENGINE_MAX_NEW_TOKENS
    assert ui.QUEUE == {"default_concurrency_limit": 2, "max_size": 32}

    registry = tmp_path / "registry.json"
    register_entry(registry, user_entry("alice", "base", None, hub_repo="a/b"))
    demo = ui.build_demo(registry)
    demo.queue(**ui.QUEUE)
    assert demo._queue.max_size == 32
    config = demo.get_config_file()
    components = {c["id"]: c for c in config["components"]}
    props = {c["props"].get("elem_id"): c["props"] for c in config["components"]}
    assert props["prompt"]["max_length"] == ui.MAX_PROMPT_CHARS
    sliders = {c["props"].get("label"): c["props"] for c in config["components"]
               if c["type"] == "slider"}  # fmt: skip
    assert sliders["Max new tokens"]["maximum"] == ui.MAX_NEW_TOKENS
    assert sliders["Samples"]["maximum"] == ui.MAX_SAMPLES
    # Every event queues; none raises its own limit above the queue's default of 2 workers.
    assert demo._queue.default_concurrency_limit == 2
    fns = {fn.name: fn for fn in demo.fns.values()}
    assert {"generate", "export"} <= set(fns)
    assert all(fn.concurrency_limit in ("default", 1, 2) for fn in fns.values())
    assert all(d["queue"] for d in config["dependencies"])
    assert components  # config parsed

    # API callers skip the widgets: the handler's own checks hold the same caps.
    with pytest.raises(BlendError, match="keep it under 400"):
        ui.check_prompt("x" * 401)
    with pytest.raises(BlendError, match=r"max new tokens must be in 1\.\.80"):
        ui.sampling_from_widgets(1, 1.0, 0.95, 81, 0)
    with pytest.raises(BlendError, match=r"number of samples must be in 1\.\.4"):
        ui.sampling_from_widgets(5, 1.0, 0.95, 10, 0)
    assert ui.sampling_from_widgets(4, 1.0, 0.95, 80, 0).max_new_tokens == 80
