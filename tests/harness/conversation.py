"""Conversations as a person in Matrix has them: agents bridged from the fake Letta, people who
enter their rooms or open DMs, and what those people see of the answers."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import attrs

from letta_appservice.app import App
from letta_appservice.db.agent import AgentRow
from letta_appservice.matrix import rooms as mx
from tests.harness.config import ADMIN
from tests.harness.events import Event, by, joined, matches
from tests.harness.fake_letta import FakeAgent, FakeLetta
from tests.harness.homeserver import Homeserver
from tests.harness.matrix_user import MatrixUser
from tests.harness.synapse import fresh_localpart


@attrs.frozen(eq=False)  # hashed by identity (dict keys in tests)
class Bridged:
    """An agent of the fake Letta and its row in the bridge (room and puppet)."""

    fake: FakeAgent
    row: AgentRow

    @property
    def room(self) -> str:
        assert self.row.room_id is not None
        return self.row.room_id

    @property
    def mxid(self) -> str:
        return self.row.mxid


async def provision(app: App, letta: FakeLetta, *names: str, **fields: Any) -> list[Bridged]:
    """Agents in the fake Letta, bridged by a reconcile pass (room, puppet, admins invited)."""
    fakes = [letta.add_agent(name, **fields) for name in names]
    await app.scheduler.run_now()
    out = []
    for fake in fakes:
        row = await app.agents.get(fake.id)
        assert row is not None and row.room_id is not None
        out.append(Bridged(fake, row))
    return out


async def enter(app: App, user: MatrixUser, room_id: str) -> None:
    """The user joins an agent room (invited by the bot first unless the user is the admin)."""
    if user.mxid != ADMIN:  # admins are invited by the reconciler
        await mx.invite(app.bot_api, room_id, user.mxid)
    await user.join(room_id)


def said_by(user: MatrixUser, room: str, sender: str, msgtype: str | None = None) -> list[Event]:
    """Messages of ``sender`` the user has seen in the room, oldest first."""
    return [e for e in user.events_seen(room) if matches(by(sender, msgtype), e)]


def text_of(logged: Any) -> str:
    """The person's text of a message Letta got (without the attribution line)."""
    return logged.text.rsplit("\n", 1)[1]


def replies_seen(user: MatrixUser, room: str, sender: str, event_id: str) -> list[Event]:
    """Messages of ``sender`` replying to ``event_id`` the user has seen in the room."""
    seen = []
    for e in user.events_seen(room):
        relates = e.get("content", {}).get("m.relates_to") or {}
        in_reply = (relates.get("m.in_reply_to") or {}).get("event_id")
        if e["type"] == "m.room.message" and e["sender"] == sender and in_reply == event_id:
            seen.append(e)
    return seen


async def dm_with(user: MatrixUser, puppet: str) -> str:
    """A DM the user opens with an agent's puppet, once the puppet has joined it."""
    dm = await user.create_room(preset="trusted_private_chat", is_direct=True, invite=[puppet])
    await user.wait_for_event(dm, joined(puppet))
    return dm


async def handled(app: App, event_id: str, timeout: float = 30) -> None:
    """Waits until the bridge has finished with a pushed event (whatever it did with it)."""
    async with asyncio.timeout(timeout):
        while True:
            stored = await app.inbox.get(event_id)
            if stored is not None and stored.state == "done":
                return
            await asyncio.sleep(0.05)


async def new_user(homeserver: Homeserver, name: str = "user") -> MatrixUser:
    """A fresh plain user (``name`` titled as display name)."""
    return await homeserver.register_user(fresh_localpart(name), displayname=name.title())


async def read_receipt(user: MatrixUser, room: str, reader: str, timeout: float = 20) -> str:
    """The event ``reader`` marked read, as the user's client learns it (initial sync)."""
    query = {"filter": json.dumps({"room": {"rooms": [room], "timeline": {"limit": 1}}})}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = await user.request("GET", "/_matrix/client/v3/sync", query=query)
        room_data = data.get("rooms", {}).get("join", {}).get(room, {})
        for ev in room_data.get("ephemeral", {}).get("events", []):
            if ev.get("type") != "m.receipt":
                continue
            for event_id, receipts in ev.get("content", {}).items():
                if reader in receipts.get("m.read", {}):
                    return event_id
        await asyncio.sleep(0.1)
    raise TimeoutError(f"no read receipt of {reader}")
