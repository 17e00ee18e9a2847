"""The `huggingtweets` command line: one subcommand per stage, each built from its config dataclass.

    huggingtweets demo                                   # offline demo zoo + the Space
    huggingtweets fetch --source bluesky --user jay.bsky.team
    huggingtweets train --source x-archive --user ~/twitter-archive.zip
    huggingtweets list
    huggingtweets generate getfiscal --prompt "My dream is"
    huggingtweets generate "getfiscal=0.7,soup=0.3" --num-samples 3
    huggingtweets card getfiscal && huggingtweets push getfiscal --dry-run
    huggingtweets space --registry ~/.cache/huggingtweets/demo/registry.json

Every flag comes from a field of the stage's `<Stage>Config` (its default and help text), so a
setting is defined once; `huggingtweets <command> --help` lists them.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger("huggingtweets")

SPACE_DIR = Path(__file__).resolve().parents[1] / "spaces" / "huggingtweets"


@dataclass
class ListConfig:
    registry: str = field(default="registry.json", metadata={"help": "registry file to show"})


def run_list(cfg: ListConfig) -> str:
    from zoo.registry import load_registry

    registry = load_registry(cfg.registry)
    if not len(registry):
        return (
            f"{cfg.registry}: no adapters yet (try `huggingtweets demo` or `huggingtweets train`)"
        )
    rows = [("id", "kind", "name", "kept", "ppl base->adapter", "where")]
    for e in registry:
        kept = sum(s.kept for s in e.stats.values())
        ppl = ""
        if "base_perplexity" in e.metrics and "adapter_perplexity" in e.metrics:
            ppl = f"{e.metrics['base_perplexity']:.1f}->{e.metrics['adapter_perplexity']:.1f}"
        where = e.hub_repo or e.adapter_path or ""
        rows.append((e.id, e.kind, e.display_name, str(kept), ppl, where))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@dataclass
class GenerateConfig:
    blend: str = field(
        metadata={
            "positional": True,
            "help": "an adapter id, or a blend like 'alice=0.7,bob=0.3' or a full blend id",
        }
    )
    registry: str = field(default="registry.json", metadata={"help": "registry file"})
    prompt: str = field(default="My dream is", metadata={"help": "text to continue"})
    method: str = field(default="live", metadata={"help": "blend method (see the Space)"})
    num_samples: int = field(default=3, metadata={"help": "how many samples"})
    max_new_tokens: int = field(default=40, metadata={"help": "tokens per sample"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling mass"})
    seed: int = field(default=0, metadata={"help": "random seed (same seed, same text)"})


def run_generate(cfg: GenerateConfig) -> str:
    from zoo.blend import Blend
    from zoo.engine import Engine, SamplingParams

    if ";" in cfg.blend:
        blend = Blend.parse(cfg.blend)
    elif "=" in cfg.blend:
        weights = {}
        for part in cfg.blend.split(","):
            user, _, weight = part.partition("=")
            try:
                weights[user.strip()] = float(weight)
            except ValueError:
                raise ValueError(f"bad weight {weight!r} for {user!r} in {cfg.blend!r}") from None
        blend = Blend.from_weights(weights, method=cfg.method)
    else:
        blend = Blend.from_weights({cfg.blend: 1.0}, method=cfg.method)
    params = SamplingParams(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        num_samples=cfg.num_samples,
        seed=cfg.seed,
    )
    samples = Engine(cfg.registry).generate(blend, cfg.prompt, params)
    return "\n".join(f"{i + 1}. {cfg.prompt}{s.text}" for i, s in enumerate(samples))


@dataclass
class CardConfig:
    id: str = field(metadata={"positional": True, "help": "registry id of the adapter"})
    registry: str = field(default="registry.json", metadata={"help": "registry file"})


def run_card(cfg: CardConfig) -> str:
    from cards import write_card

    return f"wrote {write_card(cfg.registry, cfg.id)}"


@dataclass
class PushConfig:
    id: str = field(metadata={"positional": True, "help": "registry id of the adapter"})
    registry: str = field(default="registry.json", metadata={"help": "registry file"})
    namespace: str = field(default="huggingtweets", metadata={"help": "Hub user or organisation"})
    private: bool = field(default=False, metadata={"help": "create a private repo"})
    dry_run: bool = field(
        default=False, metadata={"help": "list what would be committed; no network"}
    )
    base_model_id: str | None = field(
        default=None,
        metadata={"help": "Hub id of the base when the adapter was trained on a local folder"},
    )


def run_push(cfg: PushConfig) -> str:
    from zoo.hub import push_adapter

    result = push_adapter(
        cfg.registry,
        cfg.id,
        namespace=cfg.namespace,
        private=cfg.private,
        dry_run=cfg.dry_run,
        base_model_id=cfg.base_model_id,
    )
    return str(result)


@dataclass
class PullConfig:
    repo_id: str = field(metadata={"positional": True, "help": "Hub repo, e.g. huggingtweets/x"})
    registry: str = field(default="registry.json", metadata={"help": "registry file"})
    revision: str | None = field(default=None, metadata={"help": "branch, tag or commit"})
    entry_id: str | None = field(
        default=None, metadata={"help": "registry id to use (default: from the repo)"}
    )
    overwrite: bool = field(default=False, metadata={"help": "replace an existing entry"})


def run_pull(cfg: PullConfig) -> str:
    from zoo.hub import pull_adapter

    entry = pull_adapter(
        cfg.registry,
        cfg.repo_id,
        revision=cfg.revision,
        entry_id=cfg.entry_id,
        overwrite=cfg.overwrite,
    )
    return f"registered {entry.id} from {cfg.repo_id}"


@dataclass
class SpaceConfig:
    registry: str = field(default="registry.json", metadata={"help": "registry the Space shows"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=7860, metadata={"help": "port to listen on"})
    share: bool = field(default=False, metadata={"help": "create a public gradio.live link"})


def run_space(cfg: SpaceConfig) -> None:
    launch_space(cfg.registry, host=cfg.host, port=cfg.port, share=cfg.share)


def launch_space(registry: str | Path, host: str, port: int, share: bool = False) -> None:
    """Import the Space's UI module from its folder (it is a Space, not a package) and serve it."""
    if str(SPACE_DIR) not in sys.path:
        sys.path.insert(0, str(SPACE_DIR))
    cyborg_ui = importlib.import_module("cyborg_ui")
    cyborg_ui.launch(registry, host=host, port=port, share=share)


# name -> (module, config class, run function, one-line help)
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "demo": ("training.demo", "DemoConfig", "run", "build the offline demo zoo and open the Space"),
    "fetch": ("training.fetch", "FetchConfig", "run", "download a user's posts to the data folder"),
    "train": ("training.train", "TrainConfig", "run", "fetch, clean, train a LoRA and register it"),
    "pretrain": ("training.pretrain", "PretrainConfig", "run", "pretrain a tiny offline base"),
    "list": (__name__, "ListConfig", "run_list", "show the registry as a table"),
    "generate": (__name__, "GenerateConfig", "run_generate", "write posts with one or a blend"),
    "card": (__name__, "CardConfig", "run_card", "write README.md + predictions.png"),
    "push": (__name__, "PushConfig", "run_push", "upload an adapter and its card to the Hub"),
    "pull": (__name__, "PullConfig", "run_pull", "download an adapter repo into the zoo"),
    "space": (__name__, "SpaceConfig", "run_space", "serve the Gradio Space on a registry"),
}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def add_dataclass_arguments(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One flag per dataclass field: bool -> --x/--no-x, Literal -> choices, list -> nargs."""
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        if not f.init:
            continue
        tp, optional = _unwrap_optional(hints[f.name])
        kwargs: dict[str, Any] = {"help": f.metadata.get("help", "")}
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not (
            dataclasses.MISSING
        )
        if has_default:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            kwargs["default"] = default
            kwargs["help"] += f" (default: {default!r})" if default not in ("", None) else ""
        if typing.get_origin(tp) is Literal:
            kwargs["choices"] = list(typing.get_args(tp))
            kwargs["type"] = type(kwargs["choices"][0])
        elif tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) in (list, tuple):
            (item,) = typing.get_args(tp)[:1]
            kwargs["nargs"] = "*" if optional or has_default else "+"
            kwargs["type"] = item
        elif tp in (int, float, str):
            kwargs["type"] = tp
        elif tp is Path:
            kwargs["type"] = Path
        else:
            kwargs["type"] = str
        if f.metadata.get("positional"):
            if has_default:
                kwargs["nargs"] = "?"
            parser.add_argument(f.name, **kwargs)
        else:
            flag = "--" + f.name.replace("_", "-")
            if not has_default:
                kwargs["required"] = True
            parser.add_argument(flag, dest=f.name, **kwargs)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported (so `list` does not pay for torch)."""
    parser = argparse.ArgumentParser(
        prog="huggingtweets",
        description="Train a LoRA per social-media account and blend them into AI cyborgs.",
        epilog="Run `huggingtweets COMMAND --help` for the options of one command.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, config_name, run_name, help_text) in COMMANDS.items():
        if name != command:
            sub.add_parser(name, help=help_text)
            continue
        config_cls = getattr(importlib.import_module(module), config_name)
        doc = (sys.modules[module].__doc__ or "").strip()
        p = sub.add_parser(
            name,
            help=help_text,
            description=doc if module != __name__ else help_text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_dataclass_arguments(p, config_cls)
        p.set_defaults(_config_cls=config_cls, _run=(module, run_name))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    config_cls = args._config_cls
    module, run_name = args._run
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls) if f.init}
    try:
        cfg = config_cls(**values)
        result = getattr(importlib.import_module(module), run_name)(cfg)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as e:
        # Our errors are written for people: print them without a traceback (-v shows it).
        if args.verbose:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {message}", file=sys.stderr)
        return 2
    if result is not None:
        print(describe_result(result))
    return 0


def describe_result(result: Any) -> str:
    from zoo.registry import Entry

    if isinstance(result, Entry):
        where = result.hub_repo or result.adapter_path
        return f"registered {result.id} ({result.kind}) at {where}"
    return str(result)


if __name__ == "__main__":
    sys.exit(main())
