"""Exceptions shared across the package."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any

import aiohttp
from mautrix.errors import MatrixConnectionError, MatrixRequestError


class ConfigError(Exception):
    """A configuration problem, reported as one line naming the key. ``source`` says where the
    bad value came from when it is not the config file (e.g. "the environment")."""

    def __init__(self, key: str, message: str, *, source: str = "") -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message
        self.source = source


class TooLarge(Exception):
    """A download is larger than its limit (known only while reading, when the size was not
    declared or was wrong)."""


async def read_at_most(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body of ``resp``; TooLarge as soon as it passes ``limit`` bytes (never more than
    that is held in memory)."""
    if resp.content_length is not None and resp.content_length > limit:
        raise TooLarge(f"{resp.content_length} bytes")
    data = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > limit:
            raise TooLarge(f"over {limit} bytes")
    return bytes(data)


class UsageError(Exception):
    """A problem outside the config file's contents (a path, a missing file, a server that
    cannot be reached), reported as one line; ``exit_code`` 2 for the operator's input, 1 for
    a service that is down."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# user:password@ in URLs, secrets in query strings, bearer tokens.
_USERINFO = re.compile(r"(?<=://)[^/\s@]+@")
_QUERY_SECRET = re.compile(
    r"(?i)\b((?:access_token|api_key|apikey|token|key|password|secret)=)[^&\s]+"
)
_BEARER = re.compile(r"(?i)\bbearer\s+[^\s,;]+")


def scrub(text: str) -> str:
    """``text`` without credentials a URL or header in it may carry."""
    text = _USERINFO.sub("", text)
    text = _QUERY_SECRET.sub(r"\1…", text)
    return _BEARER.sub("Bearer …", text)


def describe(e: BaseException) -> str:
    """One readable line for an expected failure (homeserver, network, Letta), for logs and
    replies alike; never a traceback, never a credential (Tuwunel's errors quote the URL it
    called, ``?access_token=<hs_token>`` included)."""
    return scrub(_describe(e))


def _describe(e: BaseException) -> str:
    if isinstance(e, MatrixRequestError):
        return f"homeserver answered {e.http_status} {e.errcode}: {e.message}"
    if isinstance(e, MatrixConnectionError | aiohttp.ClientError):
        return f"homeserver unreachable: {e or type(e).__name__}"
    if isinstance(e, TimeoutError):
        return "homeserver timed out"
    return str(e) or type(e).__name__


def log_failure(logger: logging.Logger, what: str) -> Callable[[asyncio.Task[Any]], None]:
    """A task's done-callback: a task that fails says so when it fails, with its traceback,
    instead of "Task exception was never retrieved" at exit (or nothing at all)."""

    def done(task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("%s %s stopped", what, task.get_name(), exc_info=exc)

    return done
