"""HTTP for the network sources: JSON GETs with retries, and the errors people should see.

429 waits for `Retry-After` (capped) or an exponential backoff; 5xx and transport errors back off
too; after `RetryPolicy.attempts` tries the fetch fails with a `SourceError`. 404 means an unknown
user, 401/403 a private or protected account. Tests pass a `RetryPolicy` with a no-op `sleep`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from training.sources import SourceError

logger = logging.getLogger(__name__)

USER_AGENT = "huggingtweets (+https://github.com/borisdayma/huggingtweets)"


@dataclass
class RetryPolicy:
    attempts: int = 4  # tries per request, the first included
    backoff_s: float = 1.0  # wait before the 2nd try; doubles after each failure
    max_wait_s: float = 60.0  # cap on any single wait, Retry-After included
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def wait_s(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait after failed try number `attempt` (1-based)."""
        wait = self.backoff_s * 2 ** (attempt - 1)
        if retry_after is not None:
            # An HTTP date keeps the backoff rather than trusting clocks to agree.
            with contextlib.suppress(ValueError):
                wait = float(retry_after)
        return max(0.0, min(wait, self.max_wait_s))


def make_client(timeout_s: float = 30.0) -> httpx.Client:
    return httpx.Client(
        timeout=timeout_s, follow_redirects=True, headers={"User-Agent": USER_AGENT}
    )


def get_json(
    client: httpx.Client,
    url: str,
    params: dict[str, Any] | None = None,
    *,
    user: str,
    retry: RetryPolicy | None = None,
    is_unknown_user: Callable[[httpx.Response], bool] | None = None,
) -> Any:
    """GET `url` and decode its JSON body; raise `SourceError` naming `user` on failure.

    `is_unknown_user` lets a service say which non-404 answers mean "no such account" (Bluesky
    answers 400 "Profile not found").
    """
    retry = retry or RetryPolicy()
    params = {k: v for k, v in (params or {}).items() if v is not None}
    problem = ""
    for attempt in range(1, retry.attempts + 1):
        retry_after = None
        try:
            response = client.get(url, params=params)
        except httpx.TransportError as error:
            problem = f"{type(error).__name__}: {error}"
        else:
            status = response.status_code
            if status == 404 or (is_unknown_user and is_unknown_user(response)):
                raise SourceError(f"unknown user {user!r} ({_describe(response)})")
            if status in (401, 403):
                raise SourceError(
                    f"private or protected account {user!r}: the server refused access "
                    f"({_describe(response)})"
                )
            if status == 429 or status >= 500:
                problem = _describe(response)
                retry_after = response.headers.get("Retry-After") if status == 429 else None
            elif status >= 400:
                raise SourceError(f"request for {user!r} failed: {_describe(response)}")
            else:
                try:
                    return response.json()
                except (json.JSONDecodeError, UnicodeDecodeError) as error:
                    raise SourceError(
                        f"malformed JSON from {response.url} for {user!r}: {error}"
                    ) from error
        if attempt < retry.attempts:
            wait = retry.wait_s(attempt, retry_after)
            logger.warning(
                "%s (try %d/%d); retrying in %.1fs", problem, attempt, retry.attempts, wait
            )
            retry.sleep(wait)
    raise SourceError(f"giving up on {user!r} after {retry.attempts} tries: {problem} ({url})")


def _describe(response: httpx.Response) -> str:
    body = response.text[:200].strip().replace("\n", " ")
    return f"HTTP {response.status_code} from {response.url.copy_with(query=None)}: {body}"
