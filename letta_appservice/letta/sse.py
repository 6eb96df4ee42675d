"""Incremental Server-Sent Events decoder (pure; fed with raw bytes as they arrive)."""

from __future__ import annotations

import attrs


@attrs.frozen
class SSEEvent:
    """One dispatched event: its type (`message` unless `event:` said otherwise) and data."""

    event: str = "message"
    data: str = ""
    id: str | None = None


class SSEDecoder:
    """Turns a byte stream into events per the WHATWG rules Letta's servers rely on.

    Lines are split by us rather than with `StreamReader.readline()`, whose line-length
    limit a large tool return in a single `data:` line could exceed.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume bytes; return the events completed by them."""
        self._buffer += chunk
        events: list[SSEEvent] = []
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                break
            raw, self._buffer = self._buffer[:newline], self._buffer[newline + 1 :]
            event = self._line(raw.rstrip(b"\r").decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: dispatch what is pending.

        The spec would drop an event lacking its final blank line; a server closing right
        after its last `data:` line still meant it, so we keep it.
        """
        events = self.feed(b"\n") if self._buffer else []
        event = self._dispatch()
        return [*events, event] if event is not None else events

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):  # comment / keep-alive
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id" and "\0" not in value:
            self._id = value
        # `retry` and unknown fields are ignored, as the spec says.
        return None

    def _dispatch(self) -> SSEEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return SSEEvent(event=event or "message", data="\n".join(data), id=self._id)
