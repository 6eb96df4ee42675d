"""Letta REST client and the plain models it returns.

``client.LettaClient`` holds the request machinery (``call``, ``send``, ``post_stream``,
``open_stream``, ``http``, ``headers``, ``url``, ``observe``, ``stream_failed``: retries, metrics,
scrubbed errors); the other modules here (conversations, folders, approvals, tools, downloads)
are the API groups built on it."""

from __future__ import annotations

from .client import LettaClient
from .errors import LettaError
from .models import (
    Agent,
    LettaMessage,
    LettaResponse,
    merge_stream_deltas,
    parse_message,
    parse_response,
)
from .stream import LettaStream

__all__ = [
    "Agent",
    "LettaClient",
    "LettaError",
    "LettaMessage",
    "LettaResponse",
    "LettaStream",
    "merge_stream_deltas",
    "parse_message",
    "parse_response",
]
