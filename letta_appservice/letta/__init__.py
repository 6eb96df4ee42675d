"""Letta REST client and the plain models it returns."""

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
