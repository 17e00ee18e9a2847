"""Sessions: `nox` runs `tests` (the default); also lint, slow, gpu, browser, bench, demo.

Dependencies come from pyproject.toml extras; torch is installed first and on its own so that pip
takes the CPU wheel (a plain dependency resolve may pull a multi-GB CUDA build).
"""

import os
import shutil

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

TORCH = os.environ.get("HUGGINGTWEETS_TORCH", "torch==2.13.0")
# Two torch processes with two threads each run 10-40x slower on a 2-core machine.
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}


def install(session: nox.Session, extras: str = "test") -> None:
    session.install(TORCH)
    session.install("-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    """The default suite: offline, CPU, no slow/gpu/browser tests."""
    install(session)
    session.run("pytest", "-q", "--durations=10", *session.posargs, env=ENV)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def slow(session: nox.Session) -> None:
    """Long tests: full-size demo build, load tests."""
    install(session)
    session.run("pytest", "-q", "-m", "slow", *session.posargs, env=ENV)


@nox.session
def gpu(session: nox.Session) -> None:
    """Tests that need CUDA (skipped with a reason when none is present)."""
    install(session)
    session.run("pytest", "-q", "-m", "gpu", "-rs", *session.posargs)


@nox.session
def browser(session: nox.Session) -> None:
    """Playwright drives Debian's chromium through the whole Space journey."""
    if not shutil.which("chromium"):  # emoji font: the cards' robot line renders as boxes without
        session.run("apt-get", "update", "-qq", external=True)
        session.run(
            "apt-get", "install", "-y", "-qq", "chromium", "fonts-noto-color-emoji", external=True
        )
    install(session, "test,browser")
    session.run("pytest", "-q", "-m", "browser", *session.posargs, env=ENV)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks print figures and ratios measured in one run."""
    install(session)
    for script in sorted(os.listdir("bench")):
        if script.startswith("bench_") and script.endswith(".py"):
            session.run("python", f"bench/{script}", *session.posargs, env=ENV)


@nox.session
def demo(session: nox.Session) -> None:
    """Build the offline demo zoo and open the Space."""
    install(session)
    session.run("huggingtweets", "demo", *session.posargs, env=ENV)
