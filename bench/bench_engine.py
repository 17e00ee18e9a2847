"""Engine benchmarks: every figure goes through `zoo.engine.Engine` on a GPT-2-small-shaped model.

    OMP_NUM_THREADS=1 python bench/bench_engine.py            # 12 layers x 768, ~3 min on 1 core
    OMP_NUM_THREADS=1 python bench/bench_engine.py --quick    # 4 layers, fewer tokens, ~1 min

Nothing is downloaded: the base is `GPT2LMHeadModel(GPT2Config(n_layer=...))` with random weights
(GPT-2 small's 50257-token vocabulary) saved next to a byte-level BPE trained on the test corpus;
8 adapters u0..u7 (r=8, alpha=16, c_attn/c_proj/c_fc, `init_lora_weights=False`, built with
`tests/_adapters.py`) are registered in a temporary zoo. One run, one table, PASS/FAIL per target
(the process exits 0 either way). Timings are the best of a few interleaved repeats because other
processes share the cores. Live decode runs the blend's slot (one stacked LoRA, `zoo/slots.py`);
"8 blends" compares `Engine.generate_batch` with 8 sequential `Engine.generate` calls. The pure factoring math (no model) is in `bench_blend.py`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests"), str(HERE)]

import torch  # noqa: E402
from _adapters import logprobs, make_adapter, reference_model, user_entry  # noqa: E402
from bench_blend import (  # noqa: E402
    best_of,
    memory_bandwidth,
    print_header,
    print_summary,
    report,
)

from zoo.blend import Blend  # noqa: E402
from zoo.engine import Engine, SamplingParams  # noqa: E402
from zoo.export import export_factors  # noqa: E402
from zoo.layers import stacked_factors  # noqa: E402

R, ALPHA, EXPORT_RANK, N_USERS = 8, 16, 16, 8
PROMPT = "I think the"
PEFT_SVD_BUDGET_S = 120  # measure peft's svd export only if its estimate fits; else extrapolate


def build_zoo(root: Path, n_layer: int) -> Path:
    """A saved random GPT-2-small-shaped base + BPE tokenizer and N_USERS registered adapters."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    eos = "<|endoftext|>"
    bpe = ByteLevelBPETokenizer()
    corpus = HERE.parent / "tests" / "fixtures" / "corpus.txt"
    bpe.train([str(corpus)], vocab_size=512, min_frequency=2, special_tokens=[eos], show_progress=False)  # fmt: skip
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token=eos, eos_token=eos, unk_token=eos
    )
    torch.manual_seed(0)
    base_dir = root / "base"
    GPT2LMHeadModel(GPT2Config(n_layer=n_layer)).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    registry = root / "registry.json"
    from zoo.registry import register_entry

    for i in range(N_USERS):
        folder = make_adapter(base_dir, root / "adapters" / f"u{i}", seed=100 + i, r=R, alpha=ALPHA)
        register_entry(registry, user_entry(f"u{i}", str(base_dir), folder))
    return registry


def blend_of(n_users: int, k: int = 0, method: str = "live") -> Blend:
    g = torch.Generator().manual_seed(1000 * n_users + k)
    values = (torch.rand(n_users, generator=g) * 2 - 0.5).tolist()  # in [-0.5, 1.5)
    return Blend.from_weights({f"u{i}": v for i, v in enumerate(values)}, method)


def greedy(tokens: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=tokens, temperature=0, stop_at_newline=False)


@torch.inference_mode()
def decode(model, ids: torch.Tensor, steps: int, **forward_kwargs) -> None:
    """Plain greedy KV-cache decode (the base-model yardstick and the adapter_names batch)."""
    cache = None
    for _ in range(steps):
        out = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1, **forward_kwargs)
        cache, ids = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)


# ------------------------------------------------------------------------------------ benches


def bench_reweight(engine: Engine, n_users: int, calls: int) -> None:
    """The path a slider move takes on the next token: `Engine._setup` re-weights the blend's slot
    (its column scale) and keeps it active; building a slot (peft `add_adapter`) is a one-off."""
    engine.fuse_after_requests = 0
    start = time.perf_counter()
    engine.next_token_logprobs(blend_of(n_users), PROMPT)  # load, build this user set's slot
    first = time.perf_counter() - start
    requests = [engine._prepare(blend_of(n_users, k), PROMPT, greedy(1)) for k in range(1, 4)]
    times = []
    for i in range(calls):
        start = time.perf_counter()
        with engine._lock:
            engine._setup([requests[i % 3]])
        times.append(time.perf_counter() - start)
    ms = sorted(times)[len(times) // 2] * 1e3
    layers = len(engine._lora_layers())
    report(
        f"slider re-weight, {n_users} users ({layers} layers)",
        ms,
        "ms",
        "<= 1",
        ms <= 1,
        f"slots {len(engine._pool.slots)}; first request of the set (load + slot) {first:.2f} s",
    )


def bench_exactness(engine: Engine, base_dir: Path, n_users: int) -> None:
    blend = blend_of(n_users)
    folders = {base_dir.parent / "adapters" / u: w for u, w in blend.weights}
    tok = engine.tokenizer
    ids = [tok.eos_token_id] + tok(PROMPT, add_special_tokens=False)["input_ids"]
    want = logprobs(reference_model(base_dir, folders), ids)
    errors = {}
    for label, fuse_after in (("live", 0), ("fused", 1)):
        engine.fuse_after_requests = fuse_after
        errors[label] = (engine.next_token_logprobs(blend, PROMPT) - want).abs().max().item()
    shift = (want - logprobs(reference_model(base_dir), ids)).abs().max().item()
    report(
        f"max |log-prob error| live vs dense, {n_users} users",
        errors["live"],
        "",
        "<= 1e-4",
        errors["live"] <= 1e-4,
        f"fused {errors['fused']:.2g}; the blend moves log-probs by up to {shift:.3g}",
    )


def bench_fuse(engine: Engine, n_users: int) -> None:
    a, b = blend_of(n_users, 1), blend_of(n_users, 2)
    with engine._lock:
        engine._unfuse()
        times = []
        for blend in (a, b, a, b):  # the first one also takes the pristine copies
            start = time.perf_counter()
            engine._fuse(blend)
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        engine._unfuse()
        unfuse = time.perf_counter() - start
    later = min(times[1:])
    report(
        f"fuse a live blend, {n_users} users (first / later)",
        times[0],
        "s",
        "<= 0.5",
        times[0] <= 0.5,
        f"later {later:.3f} s (blend to blend, one pass); unfuse {unfuse:.3f} s",
    )


def bench_decode(engine: Engine, base, args) -> float:
    """Engine live / fused / product decode vs the plain base model; returns base s/token."""
    two, product = blend_of(2), blend_of(2, method="product")
    tok = engine.tokenizer
    ids = torch.tensor([[tok.eos_token_id] + tok(PROMPT, add_special_tokens=False)["input_ids"]])
    n = args.tokens

    def run(blend, fuse_after):
        engine.fuse_after_requests = fuse_after
        engine.next_token_logprobs(blend, PROMPT)  # warm: (un)fuse before the clock starts
        start = time.perf_counter()
        sample = engine.generate(blend, PROMPT, greedy(n))[0]
        assert len(sample.tokens) == n, "decode stopped early (EOS)"
        return time.perf_counter() - start

    runs = {"base": [], "live": [], "fused": [], "product": []}
    for _ in range(args.repeats):  # interleaved, so background load hits all alike
        runs["base"].append(best_of(lambda: decode(base, ids, n), 1))
        runs["live"].append(run(two, 0))
        runs["fused"].append(run(two, 1))
        runs["product"].append(run(product, 0))
    t = {k: min(v) for k, v in runs.items()}
    report("decode ms/token: plain base model", t["base"] / n * 1e3, "ms", "", None)
    for key, label, target in (
        ("live", "Engine live 2-user decode / base", 1.15),
        ("fused", "Engine fused 2-user decode / base", 1.03),
        ("product", "Engine output-space 2-user (product) / base", 2.0),
    ):
        ratio = t[key] / t["base"]
        report(
            label, ratio, "x", f"<= {target}", ratio <= target, f"{t[key] / n * 1e3:.1f} ms/token"
        )
    return t["base"] / n, t["fused"] / n


def dense_blend(engine: Engine, blend: Blend) -> dict[str, torch.Tensor]:
    out = {}
    for name, layer in engine._lora_layers():
        factors = stacked_factors(layer, blend.weights)
        if factors is not None:
            out[name] = (factors[1] @ factors[0]).detach()
    return out


def bench_export(engine: Engine, base_dir: Path, n_users: int) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    blend = blend_of(n_users)
    engine.next_token_logprobs(blend, PROMPT)  # adapters loaded
    layers = engine._lora_layers()
    with engine._lock:
        export_factors(layers, blend, EXPORT_RANK)  # warm-up (lazy LAPACK initialisation)
        factor_s = best_of(lambda: export_factors(layers, blend, EXPORT_RANK), 3)
        state, *_ = export_factors(layers, blend, EXPORT_RANK)
        dense = dense_blend(engine, blend)
    start = time.perf_counter()
    engine.export(blend, entry_id=f"cyborg-{n_users}", rank=EXPORT_RANK)
    export_s = time.perf_counter() - start
    ours_err = max(
        (
            state[f"base_model.model.{n}.lora_B.weight"]
            @ state[f"base_model.model.{n}.lora_A.weight"]
            - d
        )
        .abs()
        .max()
        .item()  # fmt: skip
        for n, d in dense.items()
    )
    # peft's svd: a dense [out, in] delta + a full SVD per layer. Estimate first, from one per shape.
    shapes = {tuple(d.shape) for d in dense.values()}
    one = {s: best_of(lambda s=s: torch.linalg.svd(torch.randn(s), full_matrices=False), 1) for s in shapes}  # fmt: skip
    peft_s, how, peft_err = sum(one[tuple(d.shape)] for d in dense.values()), "extrapolated", float("nan")  # fmt: skip
    if peft_s <= PEFT_SVD_BUDGET_S:
        folders = [base_dir.parent / "adapters" / u for u in blend.users]
        model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(str(base_dir)), str(folders[0]), blend.users[0]
        )
        for user, folder in zip(blend.users[1:], folders[1:], strict=True):
            model.load_adapter(str(folder), adapter_name=user)
        start = time.perf_counter()
        model.add_weighted_adapter(
            list(blend.users), [w for _, w in blend.weights], "svd", combination_type="svd",
            svd_rank=EXPORT_RANK,
        )  # fmt: skip
        peft_s, how, peft_err = time.perf_counter() - start, "measured", 0.0
        modules = dict(model.base_model.model.named_modules())
        for name, want in dense.items():
            layer = modules[name]
            got = layer.get_delta_weight("svd").detach()
            got = got.T if layer.fan_in_fan_out else got  # Conv1D: [in, out]
            peft_err = max(peft_err, (got - want).abs().max().item())
        del model
    report(
        f"export rank {EXPORT_RANK}, {n_users} users: factored (zoo.export)",
        factor_s * 1e3,
        "ms",
        "",
        None,
        f"max err {ours_err:.3g}; whole Engine.export (files + registry) {export_s * 1e3:.0f} ms",
    )
    report(
        f"export rank {EXPORT_RANK}, {n_users} users: peft svd ({how})",
        peft_s * 1e3,
        "ms",
        "",
        None,
        f"max err {peft_err:.3g}",
    )
    speedup = peft_s / factor_s
    report(
        f"export speed-up factored / peft svd, {n_users} users",
        speedup,
        "x",
        ">= 1000",
        speedup >= 1000,
        f"(whole Engine.export: {peft_s / export_s:.0f}x)",
    )


def bench_eight_requests(engine: Engine, args) -> None:
    """8 requests, 8 different 8-user blends: `Engine.generate_batch` (one forward per token, row k
    on blend k's slot) vs 8 sequential `Engine.generate` calls, and vs 8 threads."""
    blends = [blend_of(N_USERS, 10 + k) for k in range(8)]
    engine.fuse_after_requests = 0  # 8 different blends in turn: no streak anyway
    params = greedy(args.tokens)
    requests = [(blend, PROMPT, params) for blend in blends]
    engine.generate_batch([(b, PROMPT, greedy(1)) for b in blends])  # build the 8 slots

    def sequential():
        return [engine.generate(blend, PROMPT, params) for blend in blends]

    def concurrent():
        threads = [
            threading.Thread(target=engine.generate, args=(b, PROMPT, params)) for b in blends
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert engine.generate_batch(requests) == sequential(), "batched rows differ from solo runs"
    seq_t, con_t, bat_t = [], [], []
    for _ in range(max(1, args.repeats - 1)):
        seq_t.append(best_of(sequential, 1))
        con_t.append(best_of(concurrent, 1))
        bat_t.append(best_of(lambda: engine.generate_batch(requests), 1))
    seq = min(seq_t)
    report(
        "8 blends: 8 concurrent Engine.generate vs sequential",
        seq / min(con_t),
        "x",
        "",
        None,
        "threads take turns per token (generate_batch is the batching API)",
    )
    speedup = seq / min(bat_t)
    report(
        "8 blends: Engine.generate_batch vs sequential",
        speedup,
        "x",
        ">= 2",
        speedup >= 2,
        f"{min(bat_t) / args.tokens * 1e3:.1f} ms/step for 8 rows; same tokens as solo runs",
    )


def bench_bandwidth(base, base_s: float, fused_s: float) -> None:
    bandwidth, detail = memory_bandwidth()
    params = sum(p.numel() * p.element_size() for p in base.parameters())
    wpe = base.transformer.wpe.weight  # one row of it is read per token, the tied wte once
    per_token = params - wpe.numel() * wpe.element_size() + wpe.shape[1] * wpe.element_size()
    bound = bandwidth / per_token
    report(
        "memory bandwidth max(copy, gemv read)",
        bandwidth / 1e9,
        "GB/s",
        "",
        None,
        f"{detail}; {per_token / 1e6:.0f} MB/token -> bound {bound:.1f} tok/s",
    )
    share = 1 / fused_s / bound
    report(
        "Engine fused decode tok/s / bandwidth bound",
        share * 100,
        "%",
        ">= 50",
        share >= 0.5,
        f"({1 / fused_s:.1f} tok/s; plain base {100 / base_s / bound:.0f}%)",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 layers, fewer tokens and repeats")
    args = parser.parse_args(argv)
    args.n_layer = 4 if args.quick else 12
    args.tokens = 12 if args.quick else 24
    args.repeats = 2 if args.quick else 3
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    started = time.perf_counter()
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        registry = build_zoo(Path(tmp), args.n_layer)
        base_dir = Path(tmp) / "base"
        base = AutoModelForCausalLM.from_pretrained(str(base_dir)).eval()
        engine = Engine(registry, max_loaded_adapters=32, device="cpu")
        print_header(
            f"Engine on GPT-2 shape {args.n_layer} layers x 768, {N_USERS} LoRAs r={R} "
            f"alpha={ALPHA}, torch threads={torch.get_num_threads()}"
            f"{' (--quick)' if args.quick else ''}; zoo built in {time.perf_counter() - started:.0f} s"
        )
        for n_users in (2, N_USERS):
            bench_reweight(engine, n_users, 100 if args.quick else 300)
            bench_exactness(engine, base_dir, n_users)
            bench_fuse(engine, n_users)
        base_s, fused_s = bench_decode(engine, base, args)
        for n_users in (2, N_USERS):
            bench_export(engine, base_dir, n_users)
        bench_eight_requests(engine, args)
        bench_bandwidth(base, base_s, fused_s)
    print_summary(started)


if __name__ == "__main__":
    main()
