"""The router's handling of events other than a plain message, and the message checks around
it, without a homeserver (tests/harness/routing.py): which handler gets each kind of event,
room names and display names, redactions, the bridged-at grace, agents deleted in Letta."""

from __future__ import annotations

import json
import time
from typing import Any

import attrs
import pytest

from letta_appservice.chat import router as router_module
from letta_appservice.chat.router import BRIDGED_GRACE_MS
from letta_appservice.db.agent import DELETED
from letta_appservice.db.inbox import InboxEvent
from letta_appservice.db.room import INVITED, RoomRow
from tests.harness.routing import ALICE, BOB, BOT, ROOM, STRANGER, Routing, agent

DM = "!dm:bridge.test"


def state(routing: Routing, kind: str, sender: str, room: str, content: dict[str, Any],
          state_key: str | None = "", **top: Any) -> InboxEvent:  # fmt: skip
    """An event of ``kind`` (a state event when ``state_key`` is not None)."""
    base = routing.event(sender, room, "")
    raw = json.loads(base.event_json)
    raw.update(type=kind, content=content, **top)
    if state_key is not None:
        raw["state_key"] = state_key
    return attrs.evolve(base, event_type=kind, event_json=json.dumps(raw))


@attrs.define
class Seen:
    """Stands in for Memberships and the app's bookkeeping: what each was given."""

    calls: list[tuple[str, str]] = attrs.field(factory=list)

    async def member(self, evt: Any) -> None:
        self.calls.append(("member", evt.state_key))

    async def encryption_on(self, event: InboxEvent) -> None:
        self.calls.append(("encryption_on", event.event_id))

    async def encrypted_message(self, event: InboxEvent) -> None:
        self.calls.append(("encrypted", event.event_id))

    async def before(self, event: InboxEvent) -> None:
        self.calls.append(("before", event.event_id))


async def dm(routing: Routing) -> None:
    await routing.rooms.upsert(RoomRow(DM, INVITED, "agent-1", owner=BOB, bridged_at=0))
    await routing.invited.add(DM, "agent-1")
    await routing.join(DM, BOB, "@agent_1:bridge.test", BOT)


async def test_each_kind_of_event_reaches_its_handler(routing: Routing) -> None:
    seen = Seen()
    routing.router.memberships, routing.router.before = seen, seen.before  # type: ignore[assignment]
    member = state(routing, "m.room.member", BOB, ROOM, {"membership": "leave"}, BOB)
    encryption = state(routing, "m.room.encryption", BOB, ROOM, {"algorithm": "m.megolm.v1"})
    not_room_state = state(routing, "m.room.encryption", BOB, ROOM, {}, state_key="x")
    encrypted = state(routing, "m.room.encrypted", BOB, ROOM, {"ciphertext": "x"}, None)
    own_encrypted = state(routing, "m.room.encrypted", BOT, ROOM, {"ciphertext": "x"}, None)
    events = [member, encryption, not_room_state, encrypted, own_encrypted]
    for event in events:
        await routing.router.handle(event)
    assert [c for c in seen.calls if c[0] != "before"] == [
        ("member", BOB),
        ("encryption_on", encryption.event_id),
        ("encrypted", encrypted.event_id),
    ]
    assert [c[1] for c in seen.calls if c[0] == "before"] == [e.event_id for e in events]


async def test_the_room_name_in_the_attribution_follows_the_rooms_name_events(
    routing: Routing,
) -> None:
    await dm(routing)
    rooms = routing.router.puppets

    async def attribution(text: str) -> str:
        await routing.router.handle(routing.event(BOB, DM, text))
        return routing.turn.jobs[-1].content.split("\n")[0]

    assert (await attribution("a")).endswith(' in "Team room"]')  # asked once, then kept
    assert (await attribution("b")).endswith(' in "Team room"]')
    assert len([p for p in rooms.asked if "m.room.name" in p]) == 1  # type: ignore[attr-defined]
    await routing.router.handle(state(routing, "m.room.name", BOB, DM, {"name": "Ops"}))
    await routing.router.handle(state(routing, "m.room.name", BOB, DM, {"name": "x"}, "other"))
    assert (await attribution("c")).endswith(' in "Ops"]')
    await routing.router.handle(state(routing, "m.room.name", BOB, DM, {"name": 5}))
    assert (await attribution("d")).endswith(' in "a direct chat"]')
    await routing.router.handle(state(routing, "m.room.name", BOB, DM, {}))
    assert (await attribution("e")).endswith(' in "a direct chat"]')
    # The agent's own room is named after the agent, whatever its name event says.
    await routing.router.handle(routing.event(BOB, ROOM, "f"))
    assert routing.turn.jobs[-1].content.split("\n")[0].endswith(' in "Helper1"]')


async def test_a_display_name_the_state_store_lacks_is_asked_and_kept(routing: Routing) -> None:
    newcomer = "@carol:bridge.test"
    await routing.router.handle(routing.event(newcomer, ROOM, "hi"))
    await routing.router.handle(routing.event(newcomer, ROOM, "again"))
    for job in routing.turn.jobs:
        assert job.content.startswith("[Matrix: Fetched Name (@carol:bridge.test)")
    asked = [p for p in routing.router.puppets.asked if "m.room.member" in p]  # type: ignore[attr-defined]
    assert len(asked) == 1 and asked[0].endswith("%40carol%3Abridge.test")


async def test_redactions_in_either_room_versions_place_and_only_the_latest_kept(
    routing: Routing, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(router_module, "REDACTIONS_KEPT", 2)
    messages = [routing.event(BOB, ROOM, f"m{i}") for i in range(4)]
    # Room versions up to 10 put the target at the top level, 11+ in the content.
    await routing.router.handle(
        state(routing, "m.room.redaction", BOB, ROOM, {}, None, redacts=messages[0].event_id)
    )
    for message in messages[1:3]:
        await routing.router.handle(
            state(routing, "m.room.redaction", BOB, ROOM, {"redacts": message.event_id}, None)
        )
    await routing.router.handle(state(routing, "m.room.redaction", BOB, ROOM, {"redacts": 5}))
    for message in messages:
        await routing.router.handle(message)
    # Two remembered: the oldest redaction was forgotten, its message passed on.
    assert [j.content.rsplit("\n", 1)[1] for j in routing.turn.jobs] == ["m0", "m3"]


async def test_messages_written_before_the_room_was_bridged_are_ignored(
    routing: Routing,
) -> None:
    bridged = int(time.time() * 1000)
    fresh = "!own2:bridge.test"  # agent-2's room, bridged just now
    await routing.rooms.upsert(RoomRow(fresh, "agent", "agent-2", bridged_at=bridged))
    await routing.join(fresh, BOB, "@agent_2:bridge.test", BOT)

    def written(at: int, text: str) -> InboxEvent:
        event = routing.event(BOB, fresh, text)
        raw = json.loads(event.event_json)
        raw["origin_server_ts"] = at
        return attrs.evolve(event, event_json=json.dumps(raw))

    for at, text in [
        (bridged - BRIDGED_GRACE_MS - 1, "too old"),
        (bridged - BRIDGED_GRACE_MS, "just in time"),
        (bridged - 1_000, "a moment before"),
    ]:
        await routing.router.handle(written(at, text))
    texts = [j.content.rsplit("\n", 1)[1] for j in routing.turn.jobs]
    assert texts == ["just in time", "a moment before"]


async def test_a_dm_whose_agent_was_deleted_says_so_once_to_permitted_people(
    routing: Routing,
) -> None:
    await dm(routing)
    await routing.agents.upsert(agent(1, room_id=ROOM, state=DELETED, displayname="Gone Bot"))
    for sender in (BOB, BOB, STRANGER):
        await routing.router.handle(routing.event(sender, DM, "hello?"))
    await routing.router.handle(routing.event(ALICE, ROOM, "and here?"))  # its old room
    assert routing.turn.jobs == []
    assert routing.turn.notices == [
        ("agent-1", DM, "Gone Bot was deleted in Letta and cannot answer any more.")
    ]
