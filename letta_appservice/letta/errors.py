"""LettaError and the mapping from HTTP statuses and transport failures onto its kinds."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Literal

import aiohttp
import yarl

ErrorKind = Literal[
    "auth",
    "not_found",
    "busy",
    "validation",
    "client",
    "server",
    "timeout",
    "connection",
    "protocol",
]
_RETRYABLE: frozenset[str] = frozenset({"connection", "timeout", "server", "busy"})


class LettaError(Exception):
    """A failed Letta call. `str()` names the URL, never the API key."""

    def __init__(
        self, kind: ErrorKind, message: str, *, status: int | None = None, url: str | None = None
    ) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message
        self.status = status
        self.url = url

    @property
    def retryable(self) -> bool:
        """Whether the same call may succeed later (network, timeout, 5xx, busy agent)."""
        return self.kind in _RETRYABLE

    def __repr__(self) -> str:
        return f"LettaError({self.kind!r}, {self.message!r}, status={self.status})"


def safe_url(url: str | yarl.URL) -> str:
    """The URL without any user:password part a base URL might carry."""
    return str(yarl.URL(url).with_user(None))


def http_error(status: int, method: str, url: str, detail: str) -> LettaError:
    """The LettaError for an HTTP error status."""
    if status in (401, 403):
        return LettaError(
            "auth",
            f"Letta at {url} refused our credentials (HTTP {status}: {detail}); check the API key",
            status=status,
            url=url,
        )
    kind: ErrorKind
    if status == 404:
        kind = "not_found"
    elif status in (409, 429):  # agent busy / awaiting approval; rate limited: try again later
        kind = "busy"
    elif status == 422:
        kind = "validation"
    elif status < 500:
        kind = "client"
    else:
        kind = "server"
    message = f"Letta {method} {url} failed: HTTP {status}: {detail}"
    return LettaError(kind, message, status=status, url=url)


async def read_detail(resp: aiohttp.ClientResponse) -> str:
    """The `detail` of an error body (string or FastAPI validation list), else its text."""
    text = (await resp.read()).decode("utf-8", errors="replace")
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:300] or resp.reason or "no detail"
    detail = body.get("detail", body) if isinstance(body, Mapping) else body
    if isinstance(detail, list):
        msgs = (str(d.get("msg", d)) if isinstance(d, Mapping) else str(d) for d in detail)
        detail = "; ".join(msgs)
    return str(detail)[:300]


@contextmanager
def transport_errors(what: str, url: str, timeout: float) -> Iterator[None]:
    """Turn aiohttp timeouts and network failures inside the block into LettaError."""
    try:
        yield
    except TimeoutError as exc:
        raise LettaError("timeout", f"{what}: no answer within {timeout:g}s", url=url) from exc
    except aiohttp.ClientError as exc:
        message = f"{what}: {type(exc).__name__}: {exc}"
        raise LettaError("connection", message, url=url) from exc
