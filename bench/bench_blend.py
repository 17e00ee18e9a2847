"""Blend math benchmarks (no model): low-rank export factoring vs a dense SVD, per GPT-2 layer.

    OMP_NUM_THREADS=1 python bench/bench_blend.py            # GPT-2-small layer shapes, ~1 min
    OMP_NUM_THREADS=1 python bench/bench_blend.py --quick    # fewer repeats

For 2 and 8 random LoRAs (r=8, alpha=16) on each GPT-2-small target shape, `factorize_weighted_sum`
(QR of the stacked factors + SVD of a small core) is timed against what peft's
`add_weighted_adapter(combination_type="svd")` does per layer (a dense delta + full SVD), with
both errors against the dense weighted sum, at rank 16 and at full rank. The engine-level figures
(through `zoo.engine.Engine`) are in `bench_engine.py`, which reuses this file's table helpers.
A missed target prints FAIL; the process still exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from zoo.blend import factorize_weighted_sum  # noqa: E402

R, ALPHA, EXPORT_RANK = 8, 16, 16
# (in, out) of GPT-2 small's LoRA targets per block: c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj.
GPT2_SHAPES = [(768, 2304), (768, 768), (768, 3072), (3072, 768)]


# ------------------------------------------------------------------------------------ table


@dataclass
class Row:
    name: str
    value: float
    unit: str
    target: str
    passed: bool | None  # None: informational
    note: str = ""


ROWS: list[Row] = []


def print_header(title: str) -> None:
    print(title)
    print(f"  {'measure':<52} {'value':>10} {'unit':<5} {'target':<9} {'':<4} note")


def report(name, value, unit, target="", passed=None, note=""):
    ROWS.append(Row(name, value, unit, target, passed, note))
    verdict = "" if passed is None else ("PASS" if passed else "FAIL")
    print(f"  {name:<52} {value:>10.4g} {unit:<5} {target:<9} {verdict:<4} {note}", flush=True)


def print_summary(started: float) -> None:
    failed = [r.name for r in ROWS if r.passed is False]
    print(
        f"{sum(r.passed is True for r in ROWS)} PASS, {len(failed)} FAIL "
        f"in {time.perf_counter() - started:.0f} s"
        + (f"; FAIL: {'; '.join(failed)}" if failed else "")
    )


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def memory_bandwidth() -> tuple[float, str]:
    """Bytes/s the cores can stream: max of a 256 MiB copy (read + write) and a gemv read.

    Decoding only reads weights, and a copy can undercount (write-allocate), so the read-only
    probe is one vector x matrix product (the kernel decoding runs); the faster of the two gives
    the tighter (harder) bound."""
    src = torch.randn(8192, 8192)
    dst = torch.empty_like(src)
    nbytes = src.numel() * src.element_size()
    copy_bw = 2 * nbytes / best_of(lambda: dst.copy_(src), 5)
    x = torch.randn(1, 8192)
    read_bw = nbytes / best_of(lambda: x @ src, 5)
    return max(copy_bw, read_bw), f"copy {copy_bw / 1e9:.1f}, gemv {read_bw / 1e9:.1f} GB/s"


# ------------------------------------------------------------------------------------ math


def random_loras(n_users: int, fan_in: int, fan_out: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    As = [torch.randn(R, fan_in, generator=g) / fan_in**0.5 for _ in range(n_users)]
    Bs = [torch.randn(fan_out, R, generator=g) / R**0.5 for _ in range(n_users)]
    weights = ((torch.rand(n_users, generator=g) * 2 - 0.5) * ALPHA / R).tolist()
    return As, Bs, weights


def dense_svd(As, Bs, weights, rank):
    """peft's svd per layer: the dense weighted sum, a full SVD, the top `rank` triplets."""
    delta = sum(w * (B @ A) for A, B, w in zip(As, Bs, weights, strict=True))
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    return Vh[:rank], U[:, :rank] * S[:rank]


def bench_factoring(n_users: int, repeats: int) -> None:
    layers = [random_loras(n_users, i, o, seed) for seed, (i, o) in enumerate(GPT2_SHAPES)]
    dense = [sum(w * (B @ A) for A, B, w in zip(*layer, strict=True)) for layer in layers]
    ours = best_of(lambda: [factorize_weighted_sum(*lr, EXPORT_RANK) for lr in layers], repeats)
    svd = best_of(lambda: [dense_svd(*lr, EXPORT_RANK) for lr in layers], 1)
    err_ours, err_svd, err_full = 0.0, 0.0, 0.0
    for layer, want in zip(layers, dense, strict=True):
        A, B, _ = factorize_weighted_sum(*layer, EXPORT_RANK)
        A_svd, B_svd = dense_svd(*layer, EXPORT_RANK)
        A_full, B_full, _ = factorize_weighted_sum(*layer, n_users * R)
        err_ours = max(err_ours, (B @ A - want).abs().max().item())
        err_svd = max(err_svd, (B_svd @ A_svd - want).abs().max().item())
        err_full = max(err_full, (B_full @ A_full - want).abs().max().item())
    scale = max(d.abs().max().item() for d in dense)
    report(
        f"factor 1 block's 4 layers, {n_users} users, rank {EXPORT_RANK}",
        ours * 1e3,
        "ms",
        "",
        None,
        f"dense SVD (peft) {svd * 1e3:.0f} ms -> {svd / ours:.0f}x",
    )
    report(
        f"rank-{EXPORT_RANK} error factored - dense SVD, {n_users} users",
        abs(err_ours - err_svd),
        "",
        f"<= {1e-5 * scale:.1g}",
        abs(err_ours - err_svd) <= 1e-5 * scale,
        f"(both optimal: {err_ours:.4g} vs {err_svd:.4g}; max |delta| {scale:.3g})",
    )
    report(
        f"full-rank ({n_users * R}) error factored vs dense, {n_users} users",
        err_full,
        "",
        f"<= {1e-5 * scale:.1g}",
        err_full <= 1e-5 * scale,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    started = time.perf_counter()
    print_header(f"GPT-2-small layer shapes {GPT2_SHAPES}, torch threads={torch.get_num_threads()}")
    for n_users in (2, 8):
        bench_factoring(n_users, 2 if args.quick else 5)
    print_summary(started)


if __name__ == "__main__":
    main()
