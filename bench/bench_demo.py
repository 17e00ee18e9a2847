"""Build the offline demo zoo and report what it costs and what it learned, in one run.

    OMP_NUM_THREADS=1 python bench/bench_demo.py                        # full build in a temp dir
    OMP_NUM_THREADS=1 python bench/bench_demo.py --zoo-dir ~/.cache/huggingtweets/demo   # reuse
    OMP_NUM_THREADS=1 python bench/bench_demo.py --quick                # 2 accounts, short runs

Prints: total build wall time, base pretraining time and losses (from `<zoo>/base/pretrain.json`),
per-adapter posts / train seconds / adapter size / base -> adapter perplexity, and the
perplexity matrix (adapters x accounts' held-out splits) with each adapter's own account marked
`*`. Target: every account's own adapter is the best on its split (PASS/FAIL; exits 0).
Single-threaded on purpose: it is the figure a laptop user sees with one busy core.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from training.demo import DemoConfig, build_demo_zoo, format_summary, perplexity_matrix  # noqa: E402
from training.pretrain import METRICS_NAME  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo-dir", default="", help="existing or new zoo (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help="2 accounts, 60 pretrain steps")
    parser.add_argument("--write-cards", action="store_true", help="also sample cards (slower)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)

    zoo_dir = args.zoo_dir or tempfile.mkdtemp(prefix="huggingtweets-demo-bench-")
    extra = {"accounts": ["zippy", "wisdom"], "pretrain_steps": 60} if args.quick else {}
    cfg = DemoConfig(zoo_dir=zoo_dir, build_only=True, write_cards=args.write_cards, **extra)

    started = time.perf_counter()
    registry = build_demo_zoo(cfg)
    build_s = time.perf_counter() - started

    base = json.loads((cfg.base_dir / METRICS_NAME).read_text()) if not cfg.base else None
    print(f"zoo: {cfg.zoo_dir}  (torch threads: {torch.get_num_threads()})")
    print(f"total build wall time this run: {build_s:.1f} s (0 work if everything was cached)")
    if base:
        m, c = base["metrics"], base["config"]
        print(
            f"base: {m['parameters'] / 1e6:.2f} M params, {c['n_layer']}x{c['n_embd']}, vocab "
            f"{m['vocab_size']}, {c['steps']} steps x {c['batch_size']}x{c['n_positions']} tokens"
        )
        print(
            f"  pretrain {m['train_seconds']:.0f} s train / {m['total_seconds']:.0f} s total; "
            f"loss {m['initial_loss']:.2f} -> train {m['train_loss']:.2f}, held-out "
            f"{m['eval_loss']:.2f} (ppl {m['eval_perplexity']:.1f})"
        )
        for sample in base["samples"]:
            print(f"  sample: {sample!r}")
    print()
    print(format_summary(registry, cfg.accounts))
    sizes = {
        e.id: (registry.adapter_dir(e.id) / "adapter_model.safetensors").stat().st_size
        for e in registry
        if e.id in cfg.accounts
    }
    train_s = [registry.get(a).metrics.get("train_seconds", 0.0) for a in sizes]
    print(
        f"adapter size: {min(sizes.values()) / 1024:.0f}-{max(sizes.values()) / 1024:.0f} KiB; "
        f"adapter training {sum(train_s):.0f} s in all ({sum(train_s) / len(train_s):.0f} s each)"
    )

    print("\nheld-out perplexity (rows: adapter, columns: account's validation split; * own)")
    t = time.perf_counter()
    matrix = perplexity_matrix(cfg.registry_path)
    print(matrix.format())
    best = matrix.own_is_best()
    wins = sum(best.values())
    print(f"({time.perf_counter() - t:.0f} s)")
    verdict = "PASS" if wins == len(best) else "FAIL"
    print(f"{verdict}: own adapter best on {wins}/{len(best)} accounts")


if __name__ == "__main__":
    main()
