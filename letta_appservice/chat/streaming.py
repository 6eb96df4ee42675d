"""Streamed turns: the first text is posted as soon as it arrives, then edited as it grows."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import attrs

from ..letta import LettaError, LettaMessage
from ..letta.models import merge_calls, tool_call_message
from ..matrix.format import NOTICE
from .parts import ATTACHMENT, Part, answered, closing_part, error_text, fresh, parts_for

EDIT_INTERVAL = 1.0  # seconds between two edits of a growing message (homeservers rate-limit)
# Uploads an attachment of the answer: the image or file part, or a notice in its place.
Resolver = Callable[[Part], Awaitable[Part]]


class Outbox(Protocol):
    """What the relay needs from the conversation's poster."""

    sent: dict[int, str]

    async def post(self, index: int, part: Part) -> str: ...

    async def edit(self, index: int, part: Part) -> None: ...


class Stream(Protocol):
    stop_reason: str | None
    timeout: float  # seconds a read may wait (named when it ran out)

    def __aiter__(self) -> AsyncIterator[LettaMessage]: ...


def _merge(previous: LettaMessage, delta: LettaMessage) -> LettaMessage:
    """Token deltas of one message (same id and kind) joined."""
    arguments = None
    if previous.tool_arguments is not None or delta.tool_arguments is not None:
        arguments = (previous.tool_arguments or "") + (delta.tool_arguments or "")
    return attrs.evolve(
        previous,
        text=previous.text + delta.text,
        tool_name=previous.tool_name or delta.tool_name,
        tool_arguments=arguments,
        calls=merge_calls(previous, delta),
    )


class _Relay:
    def __init__(
        self,
        outbox: Outbox,
        show_reasoning: str,
        show_tools: str,
        approvers: str = "",
        attach: tuple[str, Resolver] | None = None,
    ) -> None:
        self.outbox = outbox
        self.show = {
            "show_reasoning": show_reasoning,
            "show_tools": show_tools,
            "approvers": approvers,
        }
        self.attach, self.resolve = attach or (None, None)
        self._seen: set[str] = set()  # attachments of the turn so far
        self.parts: list[Part] = []
        self.posted = False  # by this attempt
        self.approval = False
        self._current: LettaMessage | None = None
        self._key: object = None
        # Parts of the assistant message being streamed: one, or more once it is too long
        # for one event (the earlier ones are complete then).
        self._indexes: list[int] = []
        self._shown: dict[int, Part] = {}
        self._last_render = 0.0

    async def feed(self, message: LettaMessage) -> None:
        key: object = (message.id, message.kind) if message.id is not None else object()
        if self._current is not None and key == self._key:
            self._current = _merge(self._current, message)
        else:
            await self.close()
            self._current, self._key, self._indexes = message, key, []
        if self._current.kind == "assistant":
            await self._progress(self._current, final=False)

    async def _progress(self, message: LettaMessage, *, final: bool) -> None:
        """Show the growing answer: its first words at once, then at most every EDIT_INTERVAL
        (and when ``final``) edit what changed and post the parts it has newly filled.
        Rendering the whole answer on every token would cost quadratic time."""
        now = time.monotonic()
        if self._indexes and not final and now - self._last_render < EDIT_INTERVAL:
            return
        self._last_render = now
        for n, part in enumerate(self._parts(message, final)):
            if n == len(self._indexes):
                self._indexes.append(len(self.parts))
                self.parts.append(part)
                await self._put(self._indexes[n], part)
                continue
            index = self._indexes[n]
            self.parts[index] = part
            if part != self._shown.get(index):
                await self._edit(index, part)

    async def close(self) -> None:
        """The current message is complete: final edits, or post it now if not streamed."""
        message, self._current = self._current, None
        if message is None:
            return
        if message.kind == "tool_call":  # a streamed send_message call is the reply
            message = tool_call_message(message.id, message.tool_name, message.tool_arguments)
        self.approval = self.approval or message.kind == "approval"
        if self._indexes and message.kind == "assistant":
            await self._progress(message, final=True)
            return
        for part in self._parts(message, True):
            self.parts.append(part)
            await self._put(len(self.parts) - 1, part)

    def _parts(self, message: LettaMessage, final: bool) -> list[Part]:
        # Attachments come after the text of their message, once it is complete.
        parts = parts_for(message, **self.show, attach=self.attach)
        if not final:
            return [part for part in parts if part.msgtype != ATTACHMENT]
        return fresh(parts, self._seen)

    async def _put(self, index: int, part: Part) -> None:
        if part.msgtype == ATTACHMENT and self.resolve is not None:
            part = self.parts[index] = await self.resolve(part)
        if index in self.outbox.sent:  # posted by an attempt cut short: bring it up to date
            await self._edit(index, part)
        else:
            await self.outbox.post(index, part)
            self._shown[index] = part
        self.posted = True

    async def _edit(self, index: int, part: Part) -> None:
        await self.outbox.edit(index, part)
        self._shown[index] = part


async def relay(
    stream: Stream,
    outbox: Outbox,
    show_reasoning: str,
    show_tools: str,
    *,
    expects_reply: bool = True,
    approvers: str = "",
    attach: tuple[str, Resolver] | None = None,
) -> list[Part]:
    """Consume a streamed turn, posting as it goes; returns every part of the answer (the
    closing notice, if any, is left for the caller to post with the rest).

    An error before anything was posted is raised (the caller may retry the message); after,
    the answer is kept and a notice says it may be incomplete (a retry would repeat it).
    ``attach``: the Letta URL and the uploader, when the answer's attachments are posted."""
    r = _Relay(outbox, show_reasoning, show_tools, approvers, attach)
    try:
        async for message in stream:
            await r.feed(message)
    except LettaError as e:
        if not r.posted:
            raise
        await r.close()
        text = f"{error_text(e, stream.timeout)} The answer above may be incomplete."
        return [*r.parts, Part(NOTICE, text)]
    await r.close()
    closing = closing_part(stream.stop_reason, r.approval, answered(r.parts) or not expects_reply)
    return [*r.parts, closing] if closing else r.parts
