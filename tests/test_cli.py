import argparse
from dataclasses import dataclass, field
from typing import Literal

import pytest

from training.cli import COMMANDS, ListConfig, add_dataclass_arguments, build_parser, main, run_list
from zoo.registry import Entry, PostStats, register_entry


@dataclass
class DemoishConfig:
    user: str = field(metadata={"positional": True, "help": "who"})
    steps: int = field(default=10, metadata={"help": "how many"})
    rate: float = field(default=0.5, metadata={"help": "how fast"})
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={"help": "where"})
    rebuild: bool = field(default=False, metadata={"help": "start again"})
    accounts: list[str] = field(default_factory=lambda: ["a", "b"], metadata={"help": "who else"})
    base: str | None = field(default=None, metadata={"help": "optional"})


def parse(argv):
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, DemoishConfig)
    return DemoishConfig(**vars(parser.parse_args(argv)))


def test_dataclass_flags_defaults_and_types():
    cfg = parse(["zippy"])
    assert cfg == DemoishConfig(user="zippy")
    cfg = parse(
        ["zippy", "--steps", "3", "--rate", "0.1", "--device", "cpu", "--rebuild"]
        + ["--accounts", "x", "y", "z", "--base", "gpt2"]
    )
    assert (cfg.steps, cfg.rate, cfg.device, cfg.rebuild) == (3, 0.1, "cpu", True)
    assert cfg.accounts == ["x", "y", "z"] and cfg.base == "gpt2"
    assert parse(["zippy", "--no-rebuild"]).rebuild is False


def test_bad_flag_values_exit_with_usage(capsys):
    with pytest.raises(SystemExit):
        parse(["zippy", "--device", "tpu"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["zippy", "--steps", "many"])


def test_every_command_has_help(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            build_parser(name).parse_args([name, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: huggingtweets " + name)


def test_list_shows_entries(tmp_path, capsys):
    path = tmp_path / "registry.json"
    assert "no adapters yet" in run_list(ListConfig(registry=str(path)))
    register_entry(
        path,
        Entry(
            id="getfiscal",
            kind="user",
            handles=["getfiscal"],
            display_names=["Don Hughes"],
            stats={"getfiscal": PostStats(3221, 1002, 409, 1810)},
            metrics={"base_perplexity": 80.0, "adapter_perplexity": 31.25},
            adapter_path="adapters/getfiscal",
        ),
    )
    assert main(["list", "--registry", str(path)]) == 0
    out = capsys.readouterr().out
    assert "getfiscal" in out and "Don Hughes" in out and "1810" in out and "80.0->31.2" in out


def test_errors_are_one_line_without_traceback(tmp_path, capsys):
    path = tmp_path / "registry.json"
    path.write_text("{broken")
    assert main(["list", "--registry", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not valid JSON" in err and "Traceback" not in err
