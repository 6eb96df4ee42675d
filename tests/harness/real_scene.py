"""A scene on the real Letta 0.16.8 server (tests/harness/real_letta.py): the test's bridge
with its own puppet namespace and Letta tag, a real Synapse, and what a person sees there."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from letta_appservice.app import App
from tests.harness.apps import Apps, Bridge
from tests.harness.config import SERVER_NAME
from tests.harness.events import member_is, reply_to
from tests.harness.matrix_user import MatrixUser
from tests.harness.real_letta import LettaAdmin
from tests.harness.synapse import fresh_localpart

Event = dict[str, Any]
T = TypeVar("T")
# Generous: a 2-core machine shared with other builds; nothing here asserts on durations.
WAIT = 120


class SceneBridge(Bridge):
    """The test's puppet namespace plus its `bridge.*` settings."""

    def __init__(self) -> None:
        super().__init__()
        self.settings: dict[str, Any] = {}

    def overrides(self, **bridge: Any) -> dict[str, Any]:
        return super().overrides(**{**self.settings, **bridge})


class Scene:
    """One test's bridge: its own puppet namespace and Letta tag, on the real Letta."""

    def __init__(self, apps: Apps, letta: LettaAdmin, admin: MatrixUser) -> None:
        self.apps, self.letta, self.admin = apps, letta, admin
        self.bridge = SceneBridge()
        self.tag = fresh_localpart("t")

    async def agent(self, name: str) -> str:
        return await self.letta.create_agent(name, tags=[self.tag])

    async def start(
        self, database: str, *, bridge: dict[str, Any] | None = None, **over: Any
    ) -> App:
        letta = {"filter_tags": [self.tag], **over.pop("letta", {})}
        self.bridge.settings = bridge or {}
        return await self.apps.start(
            database, namespace=self.bridge, first_pass=True, letta=letta, **over
        )

    async def room(self, agent_id: str) -> str:
        """The agent's room, joined by the admin (invited by the bridge) once its puppet is in."""
        room = await poll(lambda: self.admin.resolve_alias(self.bridge.alias(agent_id)))
        await self.admin.join(room)
        puppet = self.bridge.mxid(agent_id)
        await self.admin.wait_for_event(room, member_is(puppet, "join"), timeout=WAIT)
        return room

    async def ask(self, room: str, agent_id: str, text: str) -> tuple[str, Event]:
        asked = await self.admin.send_text(room, text)
        reply = await self.admin.wait_for_event(
            room, reply_to(self.bridge.mxid(agent_id), asked), timeout=WAIT
        )
        return asked, reply

    async def sync(self, room: str) -> None:
        """An admin's `!letta sync`: the bridge reconciles with Letta now."""
        await self.admin.send_text(room, "!letta sync")


async def poll(probe: Callable[[], Awaitable[T | None]]) -> T:
    """The first truthy result of ``probe``, asked again and again for up to WAIT seconds."""
    async with asyncio.timeout(WAIT):
        while True:
            if result := await probe():
                return result
            await asyncio.sleep(0.2)


def replies(
    user: MatrixUser, room: str, sender: str, event_id: str, msgtype: str | None = None
) -> list[Event]:
    """The messages (edits excluded) ``sender`` posted in reply to ``event_id``, seen so far;
    only those of ``msgtype`` if given."""
    out = []
    for e in user.events_seen(room):
        content = e.get("content", {})
        relates = content.get("m.relates_to") or {}
        in_reply = (relates.get("m.in_reply_to") or {}).get("event_id")
        if e["type"] == "m.room.message" and e["sender"] == sender and in_reply == event_id:
            if msgtype in (None, content.get("msgtype")):
                out.append(e)
    return out


def latest_text(user: MatrixUser, room: str, event: Event) -> str:
    """The body of ``event`` as a client shows it: its last edit, if any."""
    body = event["content"]["body"]
    for e in user.events_seen(room):
        relates = e.get("content", {}).get("m.relates_to") or {}
        if relates.get("rel_type") == "m.replace" and relates.get("event_id") == event["event_id"]:
            body = e["content"]["m.new_content"]["body"]
    return str(body)


def echo_of(text: str, room_name: str) -> str:
    """What the fake LLM answers: the whole message the bridge gave the agent, attribution
    line included."""
    return f'echo: [Matrix: Admin (@admin:{SERVER_NAME}) in "{room_name}"]\n{text}'


async def user_messages(letta: LettaAdmin, agent_id: str, text: str) -> int:
    """How many user messages in the agent's history (in Letta) end with ``text``."""
    history = await letta.call("GET", f"/v1/agents/{agent_id}/messages", limit=1000)
    return sum(
        1
        for m in history
        if m.get("message_type") == "user_message" and str(m.get("content")).endswith(text)
    )
