"""Why something failed, as command replies say it: permitted users get a short generic
reason, admins the detail, never credentials (pure)."""

from __future__ import annotations

import aiohttp
from mautrix.errors import MatrixConnectionError, MatrixRequestError

from ..errors import describe
from ..letta.errors import LettaError

_LETTA = {
    "auth": "Letta refused the bridge's credentials",
    "not_found": "Letta does not know it",
    "busy": "Letta is busy",
    "validation": "Letta rejected the request",
    "client": "Letta rejected the request",
    "server": "Letta had an internal error",
    "timeout": "Letta did not answer in time",
    "connection": "Letta cannot be reached",
    "protocol": "Letta's answer could not be read",
}


def generic(e: BaseException) -> str:
    """A reason naming no host, URL or server message: for people who are not admins."""
    if isinstance(e, LettaError):
        return _LETTA.get(e.kind, "Letta failed") + (f" (HTTP {e.status})" if e.status else "")
    if isinstance(e, MatrixRequestError):
        return f"the homeserver answered HTTP {e.http_status}"
    if isinstance(e, MatrixConnectionError | aiohttp.ClientError):
        return "the homeserver cannot be reached"
    if isinstance(e, TimeoutError):
        return "timed out"
    return "an internal error"


def failure(e: BaseException, *, admin: bool) -> str:
    """Why ``e`` happened: the (scrubbed) detail for admins, a generic reason for others."""
    return describe(e) if admin else generic(e)
