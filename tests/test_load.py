"""Load on the Space: many `gradio_client` users at once, each with its own blends.

    python -m pytest -q -s tests/test_load.py            # 4 users x 2 requests (smoke)
    python -m pytest -q -s -m slow tests/test_load.py    # 16 users x 5 requests (nox -s slow)

The Space runs in this process on the tiny offline zoo of `test_space` (real LoRA adapters with
non-zero B). Every user opens its own `Client` and sends its requests one after another, all users
at once (a barrier releases them together). Requests vary users, weights, method and seed, with
short `max_new_tokens`. The test asserts 0 errors, then replays every request sequentially and
asserts the same text: a blend + seed gives the same sample whatever else runs beside it. It prints
p50/p95 latency and throughput.
"""

from __future__ import annotations

import statistics
import threading
import time

import pytest
from test_space import build_space_zoo, gen_args, serve

from zoo.blend import METHODS

USERS = ("alice", "bob", "carol")


@pytest.fixture(scope="module")
def space_url(tmp_path_factory, tiny_model_dir):
    demo, url = serve(build_space_zoo(tmp_path_factory.mktemp("load-zoo"), tiny_model_dir))
    try:
        yield url
    finally:
        demo.close()


def request_args(user: int, i: int) -> list:
    """A different blend per (user, request): users, weights, method and seed all vary."""
    k = user * 7 + i
    method = METHODS[k % len(METHODS)]
    picked = [USERS[(k + j) % 3] for j in range(1 + k % 3)]
    weights = [round(0.3 + 0.4 * ((k + j) % 4), 2) for j in range(len(picked))]
    if method not in ("mixture",) and len(picked) > 1 and k % 2:
        weights[-1] = -weights[-1]  # a negative weight: "less like"
    return gen_args(picked, weights, method, prompt="My dream is", n=1, max_new_tokens=8, seed=k)


def run_load(url: str, n_users: int, n_requests: int) -> dict:
    from gradio_client import Client

    clients = [Client(url, verbose=False) for _ in range(n_users)]
    barrier = threading.Barrier(n_users)
    results: dict[tuple[int, int], str] = {}
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def user(u: int) -> None:
        barrier.wait()
        for i in range(n_requests):
            start = time.perf_counter()
            try:
                text, _ = clients[u].predict(*request_args(u, i), api_name="/generate")
            except Exception as e:  # counted, reported below
                with lock:
                    errors.append(f"user {u} request {i}: {type(e).__name__}: {e}")
                continue
            with lock:
                latencies.append(time.perf_counter() - start)
                results[(u, i)] = text

    threads = [threading.Thread(target=user, args=(u,)) for u in range(n_users)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    wall = time.perf_counter() - start
    latencies.sort()
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))] if latencies else 0
    figures = {
        "users": n_users,
        "requests": n_users * n_requests,
        "errors": errors,
        "p50_s": statistics.median(latencies) if latencies else 0.0,
        "p95_s": p95,
        "throughput_rps": len(latencies) / wall,
        "wall_s": wall,
        "results": results,
    }
    print(
        f"\nload {n_users} users x {n_requests} requests: {len(errors)} errors, "
        f"p50 {figures['p50_s'] * 1000:.0f} ms, p95 {figures['p95_s'] * 1000:.0f} ms, "
        f"throughput {figures['throughput_rps']:.2f} req/s ({wall:.1f} s wall)"
    )
    return figures


def check(url: str, figures: dict, replay: int | None = None) -> None:
    from gradio_client import Client

    assert figures["errors"] == []
    assert len(figures["results"]) == figures["requests"]
    texts = list(figures["results"].values())
    assert all(t.startswith("My dream is") for t in texts)
    assert len(set(texts)) > len(texts) // 2  # different blends really gave different samples
    # Determinism under concurrency: each response equals a sequential replay of its request.
    client = Client(url, verbose=False)
    keys = sorted(figures["results"])[:replay]
    for u, i in keys:
        again, _ = client.predict(*request_args(u, i), api_name="/generate")
        assert again == figures["results"][(u, i)], (u, i, request_args(u, i))


def test_load_smoke_4_users_x_2(space_url):
    check(space_url, run_load(space_url, n_users=4, n_requests=2))


@pytest.mark.slow
def test_load_16_users_x_5(space_url):
    figures = run_load(space_url, n_users=16, n_requests=5)
    check(space_url, figures)
    assert figures["p95_s"] < 60
