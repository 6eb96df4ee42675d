"""Stand-ins for the streaming relay's outbox (a recording poster) and a Letta stream of
given messages, for the pure relay tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from letta_appservice.chat.parts import Part
from letta_appservice.letta import LettaError, LettaMessage, parse_message


def parsed(*raw: dict[str, Any]) -> list[LettaMessage]:
    messages = [parse_message(r) for r in raw]
    return [m for m in messages if m is not None]


class Outbox:
    def __init__(self, sent: dict[int, str] | None = None) -> None:
        self.sent = dict(sent or {})
        self.log: list[tuple[str, int, str]] = []

    async def post(self, index: int, part: Part) -> str:
        self.sent[index] = f"$p{index}"
        self.log.append(("post", index, part.body))
        return self.sent[index]

    async def edit(self, index: int, part: Part) -> None:
        self.log.append(("edit", index, part.body))


class Stream:
    def __init__(
        self,
        raws: list[dict[str, Any]],
        stop_reason: str | None = "end_turn",
        error: LettaError | None = None,
    ) -> None:
        self.messages = parsed(*raws)
        self.stop_reason = stop_reason
        self.error = error
        self.timeout = 120.0

    async def __aiter__(self) -> AsyncIterator[LettaMessage]:
        for message in self.messages:
            yield message
        if self.error is not None:
            raise self.error
