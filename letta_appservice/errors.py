"""Exceptions shared across the package."""

from __future__ import annotations

import aiohttp
from mautrix.errors import MatrixConnectionError, MatrixRequestError


class ConfigError(Exception):
    """A configuration problem, reported as one line naming the key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


def describe(e: BaseException) -> str:
    """One readable line for an expected failure (homeserver, network, Letta), for logs and
    replies alike; never a traceback."""
    if isinstance(e, MatrixRequestError):
        return f"homeserver answered {e.http_status} {e.errcode}: {e.message}"
    if isinstance(e, MatrixConnectionError | aiohttp.ClientError):
        return f"homeserver unreachable: {e or type(e).__name__}"
    if isinstance(e, TimeoutError):
        return "homeserver timed out"
    return str(e) or type(e).__name__
