"""LettaStream: the messages of one streamed agent turn, read from Server-Sent Events."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing
from types import TracebackType
from typing import Any

import aiohttp

from .errors import LettaError, safe_url, transport_errors
from .models import LettaMessage, error_text, parse_message, parse_response, stop_reason_of
from .sse import SSEDecoder, SSEEvent


class LettaStream:
    """One streamed turn: an async iterator of LettaMessage, also an async context manager.

    The request is sent on first iteration. After exhaustion `stop_reason` (e.g. "end_turn")
    and `usage` hold what the server sent. An `event: error` raises LettaError kind "server"
    after the messages that preceded it; a stream that stops before `[DONE]` (and without a
    stop reason) raises kind "protocol", since the turn may be incomplete.
    """

    def __init__(
        self,
        opener: Callable[[], Awaitable[aiohttp.ClientResponse]],
        timeout: float,
        *,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self._opener = opener
        self.timeout = timeout  # of each read: a stream that stays silent longer fails
        self._on_error = on_error  # told the kind of an error after the stream started
        self._gen: AsyncGenerator[LettaMessage, None] | None = None
        self._url = ""
        self._finished = False
        self.stop_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def __aiter__(self) -> LettaStream:
        return self

    async def __anext__(self) -> LettaMessage:
        if self._gen is None:
            self._gen = self._events()
        return await self._gen.__anext__()

    async def _events(self) -> AsyncGenerator[LettaMessage, None]:
        resp = await self._opener()  # its failures are the opener's to report
        # aclosing: closing this generator (cancel, aclose) closes the reader, and with it the
        # connection, at once rather than whenever it is collected.
        async with aclosing(self._read(resp)) as messages:
            try:
                async for message in messages:
                    yield message
            except LettaError as exc:
                if self._on_error is not None:
                    self._on_error(exc.kind)
                raise

    async def aclose(self) -> None:
        """Stop reading and close the connection (safe to call at any time)."""
        if self._gen is not None:
            await self._gen.aclose()

    async def __aenter__(self) -> LettaStream:
        return self

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _read(self, resp: aiohttp.ClientResponse) -> AsyncGenerator[LettaMessage, None]:
        self._url = safe_url(resp.url)
        try:
            with transport_errors(f"Letta stream {self._url}", self._url, self.timeout):
                if resp.content_type == "application/json":
                    # A server older than inline streaming ignored the flag: a whole turn.
                    response = parse_response(await resp.json())
                    self.stop_reason, self._finished = response.stop_reason, True
                    for message in response.messages:
                        yield message
                    return
                decoder = SSEDecoder()
                async for chunk in resp.content.iter_any():
                    for event in decoder.feed(chunk):
                        if (message := self._handle(event)) is not None:
                            yield message
                for event in decoder.close():
                    if (message := self._handle(event)) is not None:
                        yield message
        except ValueError as exc:
            raise LettaError(
                "protocol", f"Letta stream {self._url}: {exc}", url=self._url
            ) from exc
        finally:
            # A fully read response can go back to the pool; a half-read one must not.
            if resp.content.at_eof():
                resp.release()
            else:
                resp.close()
        if not self._finished and self.stop_reason is None:
            message = f"Letta stream {self._url} ended before [DONE]"
            raise LettaError("protocol", message, url=self._url)

    def _handle(self, event: SSEEvent) -> LettaMessage | None:
        data = event.data.strip()
        if data.startswith("[DONE"):  # also the [DONE_GEN] / [DONE_STEP] of old servers
            self._finished = self._finished or data == "[DONE]"
            return None
        payload = json.loads(data)  # ValueError → protocol error
        if not isinstance(payload, Mapping):
            raise ValueError(f"unexpected event {data[:200]!r}")
        mtype = payload.get("message_type")
        is_error = mtype == "error_message" or (mtype is None and payload.get("error"))
        if event.event == "error" or is_error:
            message = f"Letta reported an error while streaming {self._url}: {error_text(payload)}"
            raise LettaError("server", message, url=self._url)
        if mtype == "stop_reason":
            self.stop_reason = stop_reason_of(payload)
        elif mtype == "usage_statistics":
            self.usage = dict(payload)
        return parse_message(payload)
