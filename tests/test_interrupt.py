"""Ctrl-C in the middle of `huggingtweets train`, as a real signal to a real process.

    python -m pytest -q tests/test_interrupt.py

The CLI runs in a subprocess on the tiny GPT-2; once the Trainer's progress bar shows a finished
step, the test sends SIGINT. The run must exit with 130 and leave no adapter folder, no registry
entry, no hidden `adapters/.<id>.tmp-*` staging folder and no Trainer temp folder. A rerun then
starts again from the saved posts (there is no checkpoint to resume: training saves nothing until
the adapter is published) and registers the entry.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from zoo.registry import load_registry

ROOT = Path(__file__).resolve().parents[1]
STEPS = 100_000  # never reached: the run is interrupted
STEP_DONE = re.compile(rf"\|\s*([1-9]\d*)/{STEPS} \[")  # the Trainer's bar: "| 3/100000 [00:01<"


def cli(tmp: Path, posts: Path, base: Path, max_steps: int) -> list[str]:
    return [
        sys.executable, "-m", "training.cli", "train", "--source", "jsonl", "--user", str(posts),
        "--handle", "zippy", "--base-model", str(base), "--max-steps", str(max_steps),
        "--registry", str(tmp / "zoo" / "registry.json"), "--data-dir", str(tmp / "data"),
        "--no-write-card", "--device", "cpu", "--batch-size", "4",
    ]  # fmt: skip


def child_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TQDM_DISABLE", None)  # the progress bar is how we know training has started
    env.update(
        WANDB_MODE="disabled",
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        TMPDIR=str(tmp / "tmp"),  # to see the Trainer's temp folder (or its absence)
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    (tmp / "tmp").mkdir(exist_ok=True)
    return env


def test_sigint_mid_training_leaves_nothing_and_a_rerun_registers(
    tmp_path, tiny_model_dir, fixture_posts
):
    posts = tmp_path / "zippy.jsonl"
    posts.write_text("".join(json.dumps({"text": t}) + "\n" for t in fixture_posts))
    env = child_env(tmp_path)
    proc = subprocess.Popen(
        cli(tmp_path, posts, tiny_model_dir, max_steps=STEPS),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stderr = bytearray()
    reader = threading.Thread(
        target=lambda: [stderr.extend(chunk) for chunk in iter(lambda: proc.stderr.read1(), b"")],
        daemon=True,
    )
    reader.start()
    deadline = time.monotonic() + 120
    try:
        while not STEP_DONE.search(stderr.decode(errors="replace")):
            assert proc.poll() is None, stderr.decode(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "training did not start within 120 s"
            time.sleep(0.05)
        trainer_dirs = list((tmp_path / "tmp").glob("huggingtweets-trainer-*"))
        assert trainer_dirs, "the Trainer's temp folder exists while it trains"
        os.kill(proc.pid, signal.SIGINT)
        returncode = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    log = stderr.decode(errors="replace")
    step = int(STEP_DONE.findall(log)[-1])

    assert returncode == 130, log[-3000:]
    assert "interrupted" in log and "Traceback" not in log
    assert 1 <= step < STEPS
    zoo = tmp_path / "zoo"
    assert len(load_registry(zoo / "registry.json")) == 0
    assert not (zoo / "adapters" / "zippy").exists()
    assert not list(zoo.glob("adapters/.*"))  # no .zippy.tmp-* staging folder
    assert not list((tmp_path / "tmp").glob("huggingtweets-trainer-*"))
    # What the interrupted run keeps on purpose: the fetched posts (and the cleaned dataset).
    assert (tmp_path / "data" / "zippy" / "posts.jsonl").is_file()

    rerun = subprocess.run(
        cli(tmp_path, posts, tiny_model_dir, max_steps=3),
        cwd=tmp_path,
        env=env | {"TQDM_DISABLE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "registered zippy (user) at adapters/zippy" in rerun.stdout
    entry = load_registry(zoo / "registry.json").get("zippy")
    assert (zoo / entry.adapter_path / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in (zoo / "adapters").iterdir()) == ["zippy"]
    print(f"SIGINT after step {step}; exit 130; rerun registered {entry.id}")


pytestmark = pytest.mark.timeout(400)
