"""Blend benchmarks on a GPT-2-small-shaped random model: one run, one table, PASS/FAIL per target.

    OMP_NUM_THREADS=1 python bench/bench_blend.py            # 12 layers x 768, ~3-4 min on 1 core
    OMP_NUM_THREADS=1 python bench/bench_blend.py --quick    # 4 layers, fewer tokens, ~1 min

Nothing is downloaded: the model is `GPT2LMHeadModel(GPT2Config())` with random weights and the
adapters are peft LoRAs (r=8, alpha=16, c_attn/c_proj/c_fc) with `init_lora_weights=False`, so
every B is non-zero and every blend changes the logits. Measurements go straight through peft
(`set_adapter([...])` + `LoraLayer.set_scale`, `adapter_names=` batches) because that is the
mechanism `zoo.engine` builds on; the factored export is `zoo.blend.factorize_weighted_sum`.
Timings are the best of a few interleaved repeats (other processes share the cores). A missed
target prints FAIL; the process still exits 0.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from zoo.blend import factorize_weighted_sum  # noqa: E402

TARGETS = ["c_attn", "c_proj", "c_fc"]
R, ALPHA, EXPORT_RANK = 8, 16, 16


@dataclass
class Row:
    name: str
    value: float
    unit: str
    target: str
    passed: bool | None  # None: informational
    note: str = ""


ROWS: list[Row] = []


def report(name, value, unit, target="", passed=None, note=""):
    ROWS.append(Row(name, value, unit, target, passed, note))
    verdict = "" if passed is None else ("PASS" if passed else "FAIL")
    print(f"  {name:<48} {value:>12.4g} {unit:<6} {target:<10} {verdict:<4} {note}", flush=True)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# ------------------------------------------------------------------------------------ models


def build_models(n_layer: int, n_users: int):
    """(plain base, peft model with n_users adapters u0..u{n-1}, the LoRA layers)."""
    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(n_layer=n_layer)).eval()
    config = LoraConfig(
        r=R,
        lora_alpha=ALPHA,
        lora_dropout=0.0,
        target_modules=TARGETS,
        fan_in_fan_out=True,
        init_lora_weights=False,
    )
    peft_model = get_peft_model(copy.deepcopy(base), config, adapter_name="u0")
    for i in range(1, n_users):
        peft_model.add_adapter(f"u{i}", config)
    peft_model.eval()
    layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer)]
    return base, peft_model, layers


def user_weights(n_users: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(n_users)
    values = (torch.rand(n_users, generator=g) * 2 - 0.5).tolist()  # in [-0.5, 1.5)
    return {f"u{i}": round(v, 2) for i, v in enumerate(values)}


def set_blend(peft_model, layers, weights: dict[str, float]) -> None:
    peft_model.base_model.set_adapter(list(weights), inference_mode=True)
    set_scales(layers, weights)


def set_scales(layers, weights: dict[str, float]) -> None:
    """The live slider: scaling = weight * alpha / r on every LoRA layer, nothing else."""
    for layer in layers:
        for name, w in weights.items():
            layer.set_scale(name, w)


def dense_delta(layer, weights: dict[str, float]) -> torch.Tensor:
    """sum_i w_i (alpha / r) B_i A_i in the [out, in] convention."""
    delta = 0
    for name, w in weights.items():
        A, B = layer.lora_A[name].weight, layer.lora_B[name].weight
        delta = delta + (w * ALPHA / R) * (B @ A)
    return delta


def fused_copy(base, peft_model, layers, weights):
    """W0 + sum_i w_i dW_i written into a copy of the base (Conv1D stores [in, out]: add dW^T)."""
    fused = copy.deepcopy(base)
    modules = dict(fused.named_modules())
    with torch.no_grad():
        for name, module in peft_model.base_model.model.named_modules():
            if isinstance(module, LoraLayer):
                modules[name].weight += dense_delta(module, weights).T
    return fused


# ------------------------------------------------------------------------------------ decode


@torch.inference_mode()
def decode(model, prompt, steps: int, combine: str | None = None, **forward_kwargs):
    """Greedy KV-cache decode. With `combine`, all rows share the token picked from their mix."""
    ids, cache = prompt, None
    for _ in range(steps):
        out = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1, **forward_kwargs)
        cache, logits = out.cache, out.logits[:, -1]
        if combine == "contrast":  # base + sum_i w_i (user_i - base): one token for all rows
            logp = torch.log_softmax(logits, dim=-1)
            mix = logp[0] + 0.7 * (logp[1] - logp[0]) + 0.3 * (logp[2] - logp[0])
            ids = mix.argmax().repeat(len(logits), 1)
        else:
            ids = logits.argmax(-1, keepdim=True)
    return ids


# ------------------------------------------------------------------------------------ benches


def bench_live(base, peft_model, layers, weights, args):
    n = len(weights)
    set_blend(peft_model, layers, weights)
    alternatives = [
        {u: round(0.1 * k - 0.05 * i, 2) for i, u in enumerate(weights)} for k in (3, 7, 11)
    ]
    times = []
    for i in range(args.slider_calls):
        w = alternatives[i % len(alternatives)]
        start = time.perf_counter()
        set_scales(layers, w)
        times.append(time.perf_counter() - start)
    latency_ms = statistics.median(times) * 1e3
    report(
        f"slider re-weight, {n} users ({len(layers)} layers)",
        latency_ms,
        "ms",
        "<= 1",
        latency_ms <= 1,
    )
    set_scales(layers, weights)

    fused = fused_copy(base, peft_model, layers, weights)
    tokens = torch.randint(
        0, base.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(1)
    )
    with torch.inference_mode():
        live_logits = peft_model(input_ids=tokens).logits
        ref_logits = fused(input_ids=tokens).logits
        base_logits = base(input_ids=tokens).logits
    error = (live_logits - ref_logits).abs().max().item()
    shift = (ref_logits - base_logits).abs().max().item()
    report(
        f"max |logit error| live vs dense, {n} users",
        error,
        "",
        "<= 1e-4",
        error <= 1e-4,
        f"(blend moves logits by up to {shift:.3g}; max |logit| {ref_logits.abs().max():.3g})",
    )
    return fused


def bench_decode(base, peft_model, fused, args):
    prompt = torch.randint(
        0, base.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(2)
    )
    runs = {"base": [], "live": [], "fused": []}
    models = {"base": base, "live": peft_model, "fused": fused}
    for _ in range(args.repeats):  # interleaved so that background load hits all three alike
        for name, model in models.items():
            runs[name].append(best_of(lambda m=model: decode(m, prompt, args.tokens), 1))
    t = {k: min(v) for k, v in runs.items()}
    report("decode ms/token: base", t["base"] / args.tokens * 1e3, "ms", "", None)
    live = t["live"] / t["base"]
    report("live 2-user decode / base decode", live, "x", "<= 1.15", live <= 1.15)
    fused_ratio = t["fused"] / t["base"]
    report("fused decode / base decode", fused_ratio, "x", "<= 1.03", fused_ratio <= 1.03)
    return t["base"] / args.tokens  # seconds per token


def bench_output_space(base, peft_model, args):
    prompt = torch.randint(
        0, base.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(3)
    )
    rows = prompt.repeat(3, 1)
    names = ["__base__", "u0", "u1"]
    base_t, mixed_t = [], []
    for _ in range(args.repeats):
        base_t.append(best_of(lambda: decode(base, prompt, args.tokens), 1))
        mixed_t.append(
            best_of(
                lambda: decode(peft_model, rows, args.tokens, "contrast", adapter_names=names), 1
            )
        )
    ratio = min(mixed_t) / min(base_t)
    report(
        "output-space 2 users (3 rows, adapter_names) / base", ratio, "x", "<= 2.0", ratio <= 2.0
    )


def bench_export(peft_model, layers, weights, args):
    n = len(weights)
    set_scales(layers, {u: 1.0 for u in weights})  # peft's merge reads layer.scaling
    dense = {id(layer): dense_delta(layer, weights).detach() for layer in layers}

    def ours():
        out = []
        for layer in layers:
            As = [layer.lora_A[u].weight.detach() for u in weights]
            Bs = [layer.lora_B[u].weight.detach() for u in weights]
            scaled = [w * ALPHA / R for w in weights.values()]
            out.append(factorize_weighted_sum(As, Bs, scaled, EXPORT_RANK))
        return out

    ours()  # warm-up (lazy LAPACK initialisation)
    ours_s = best_of(ours, 3)
    factors = ours()
    ours_err = max(
        (B @ A - dense[id(L)]).abs().max().item()
        for L, (A, B, _) in zip(layers, factors, strict=True)
    )
    energy = min(e for _, _, e in factors)

    # peft's svd = one dense [out, in] delta + full torch.linalg.svd per layer. Estimate first.
    shapes = {tuple(d.shape) for d in dense.values()}
    one_each = {
        s: best_of(lambda s=s: torch.linalg.svd(torch.randn(s), full_matrices=False), 1)
        for s in shapes
    }
    estimate = sum(one_each[tuple(d.shape)] for d in dense.values())
    name = f"peft_svd_{n}"
    if estimate <= 120:
        start = time.perf_counter()
        peft_model.add_weighted_adapter(
            list(weights),
            list(weights.values()),
            name,
            combination_type="svd",
            svd_rank=EXPORT_RANK,
        )
        peft_s = time.perf_counter() - start
        peft_err = 0.0
        for layer in layers:
            delta = layer.get_delta_weight(name).detach()  # Conv1D: [in, out]
            ref = dense[id(layer)].T if layer.fan_in_fan_out else dense[id(layer)]
            peft_err = max(peft_err, (delta - ref).abs().max().item())
        peft_model.delete_adapter(name)
        how = "measured"
    else:
        peft_s, peft_err, how = estimate, float("nan"), "EXTRAPOLATED from one SVD per shape"
    report(
        f"export rank {EXPORT_RANK}, {n} users: factored SVD",
        ours_s * 1e3,
        "ms",
        "",
        None,
        f"max err vs dense {ours_err:.2e}, min energy kept {energy:.4f}",
    )
    report(
        f"export rank {EXPORT_RANK}, {n} users: peft svd ({how})",
        peft_s * 1e3,
        "ms",
        "",
        None,
        f"max err vs dense {peft_err:.2e}",
    )
    speedup = peft_s / ours_s
    report(
        f"export speed-up factored / peft svd, {n} users", speedup, "x", ">= 1000", speedup >= 1000
    )
    return factors


def bench_batched_blends(base, peft_model, layers, args):
    """8 requests, 8 different blends of the 8 users, each materialised as a rank-16 adapter."""
    n_requests = 8
    config = LoraConfig(
        r=EXPORT_RANK,
        lora_alpha=EXPORT_RANK,
        lora_dropout=0.0,
        target_modules=TARGETS,
        fan_in_fan_out=True,
    )
    users = [f"u{i}" for i in range(8)]
    for k in range(n_requests):
        weights = user_weights(100 + k)
        weights = {u: list(weights.values())[i % len(weights)] for i, u in enumerate(users)}
        peft_model.add_adapter(f"b{k}", config)
        with torch.no_grad():
            for layer in layers:
                A, B, _ = factorize_weighted_sum(
                    [layer.lora_A[u].weight for u in users],
                    [layer.lora_B[u].weight for u in users],
                    [w * ALPHA / R for w in weights.values()],
                    EXPORT_RANK,
                )
                layer.lora_A[f"b{k}"].weight.copy_(A)
                layer.lora_B[f"b{k}"].weight.copy_(B)
    peft_model.eval()
    prompt = torch.randint(
        0, base.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(4)
    )
    names = [f"b{k}" for k in range(n_requests)]

    def sequential():
        for name in names:
            peft_model.base_model.set_adapter(name, inference_mode=True)
            decode(peft_model, prompt, args.tokens)

    def batched():
        decode(peft_model, prompt.repeat(n_requests, 1), args.tokens, adapter_names=names)

    seq_t, bat_t = [], []
    for _ in range(max(1, args.repeats - 1)):
        seq_t.append(best_of(sequential, 1))
        bat_t.append(best_of(batched, 1))
    speedup = min(seq_t) / min(bat_t)
    report("8 blends batched (adapter_names) vs sequential", speedup, "x", ">= 2", speedup >= 2)


def bench_bandwidth(base, base_s_per_token):
    # A copy of a tensor far beyond any cache, counted as read + write. Decoding only reads
    # weights, and a copy can undercount (write-allocate), so also time a read-only probe: one
    # vector x matrix product over the same 256 MiB (the very kernel decoding runs). The bound
    # uses the faster of the two, i.e. the tighter (harder) target.
    src = torch.randn(8192, 8192)  # 256 MiB
    dst = torch.empty_like(src)
    nbytes = src.numel() * src.element_size()
    copy_bw = 2 * nbytes / best_of(lambda: dst.copy_(src), 5)
    x = torch.randn(1, 8192)
    read_bw = nbytes / best_of(lambda: x @ src, 5)
    bandwidth = max(copy_bw, read_bw)
    # Bytes read per token: every weight once (the tied wte once, as lm_head), one wpe row.
    params = sum(p.numel() * p.element_size() for p in base.parameters())
    wpe = base.transformer.wpe.weight
    bytes_per_token = params - wpe.numel() * wpe.element_size() + wpe.shape[1] * wpe.element_size()
    bound = bandwidth / bytes_per_token
    measured = 1 / base_s_per_token
    report(
        "memory bandwidth max(copy, gemv read)",
        bandwidth / 1e9,
        "GB/s",
        "",
        None,
        f"copy {copy_bw / 1e9:.1f}, gemv {read_bw / 1e9:.1f} GB/s; "
        f"{bytes_per_token / 1e6:.0f} MB of weights per token -> bound {bound:.1f} tok/s",
    )
    share = measured / bound
    report(
        "base decode tok/s / bandwidth bound",
        share * 100,
        "%",
        ">= 50",
        share >= 0.5,
        f"({measured:.1f} tok/s)",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 layers, fewer tokens and repeats")
    args = parser.parse_args(argv)
    args.n_layer = 4 if args.quick else 12
    args.tokens = 12 if args.quick else 24
    args.repeats = 2 if args.quick else 3
    args.slider_calls = 100 if args.quick else 300
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    started = time.perf_counter()
    print(
        f"GPT-2 shape: {args.n_layer} layers x 768, LoRA r={R} alpha={ALPHA} on {TARGETS}, "
        f"torch threads={torch.get_num_threads()}{' (--quick)' if args.quick else ''}"
    )
    print(f"  {'measure':<48} {'value':>12} {'unit':<6} {'target':<10} {'':<4} note")

    base, peft_model, layers = build_models(args.n_layer, 2)
    weights = {"u0": 0.7, "u1": -0.3}
    fused = bench_live(base, peft_model, layers, weights, args)
    base_s_per_token = bench_decode(base, peft_model, fused, args)
    del fused
    set_blend(peft_model, layers, weights)
    bench_output_space(base, peft_model, args)
    bench_export(peft_model, layers, weights, args)
    bench_bandwidth(base, base_s_per_token)
    del peft_model, layers

    _, peft_model, layers = build_models(args.n_layer, 8)
    weights8 = user_weights(8)
    fused = bench_live(base, peft_model, layers, weights8, args)
    del fused
    bench_export(peft_model, layers, weights8, args)
    bench_batched_blends(base, peft_model, layers, args)

    failed = [r.name for r in ROWS if r.passed is False]
    print(
        f"{sum(r.passed is True for r in ROWS)} PASS, {len(failed)} FAIL "
        f"in {time.perf_counter() - started:.0f} s"
        + (f"; FAIL: {'; '.join(failed)}" if failed else "")
    )


if __name__ == "__main__":
    main()
