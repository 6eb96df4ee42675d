"""The router's and memberships' decisions without a homeserver: who a message is for, in which
lane it waits, who is refused, what is never passed on (tests/harness/routing.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import attrs
import pytest

from letta_appservice.chat.memberships import join_refusal
from letta_appservice.db.agent import DELETED
from letta_appservice.db.database import DatabaseURL, open_database
from letta_appservice.db.inbox import InboxEvent, InboxStore
from letta_appservice.db.room import ARCHIVED, INVITED, MANAGEMENT, RoomRow
from letta_appservice.inbox.worker import InboxWorker
from tests.harness.routing import ALICE, BOB, BOT, GROUP, ROOM, STRANGER, Routing, agent


async def test_a_permitted_person_in_an_agents_room_reaches_it_with_attribution(
    routing: Routing,
) -> None:
    await routing.router.handle(routing.event(BOB, ROOM, "hello there"))
    [job] = routing.turn.jobs
    assert job.agent.agent_id == "agent-1" and job.sender == BOB and job.expects_reply
    assert job.content.endswith("\nhello there") and "@bob:bridge.test" in job.content


async def test_the_bridges_own_users_are_never_answered(routing: Routing) -> None:
    for sender in (BOT, "@agent_2:bridge.test", "@AGENT_2:bridge.test"):
        await routing.router.handle(routing.event(sender, ROOM, "hello Helper1"))
    assert routing.turn.jobs == [] and routing.turn.notices == []


async def test_an_outsider_is_refused_once_per_room_and_never_reaches_the_agent(
    routing: Routing,
) -> None:
    for _ in range(3):
        await routing.router.handle(routing.event(STRANGER, ROOM, "let me in"))
    assert routing.turn.jobs == []
    assert [text for _, _, text in routing.turn.notices] == [
        f"{STRANGER} may not talk to agents on this bridge; ask a bridge admin for access."
    ]


async def test_commands_media_edits_and_notices_do_not_reach_the_agent(routing: Routing) -> None:
    await routing.router.handle(routing.event(BOB, ROOM, "!letta status"))
    await routing.router.handle(routing.event(BOB, ROOM, "* fixed", **{
        "m.relates_to": {"rel_type": "m.replace", "event_id": "$e1"}}))  # fmt: skip
    notice = routing.event(BOB, ROOM, "a notice")
    notice.event_json = notice.event_json.replace('"m.text"', '"m.notice"')
    await routing.router.handle(notice)
    assert routing.turn.jobs == []
    video = routing.event(BOB, ROOM, "clip.mp4", url="mxc://bridge.test/clip")
    video.event_json = video.event_json.replace('"m.text"', '"m.video"')
    await routing.router.handle(video)
    assert routing.turn.jobs == [] and "cannot watch videos" in routing.turn.notices[0][2]
    # An encrypted file (no url) cannot be fetched: nothing reaches the agent, nothing is said.
    secret = routing.event(BOB, ROOM, "x.pdf", file={"url": "mxc://bridge.test/x"})
    secret.event_json = secret.event_json.replace('"m.text"', '"m.file"')
    await routing.router.handle(secret)
    assert routing.turn.jobs == [] and len(routing.turn.notices) == 1


async def test_a_message_deleted_before_its_turn_is_not_passed_on(routing: Routing) -> None:
    message = routing.event(BOB, ROOM, "oops")
    redaction = routing.event(BOB, ROOM, "")
    raw = json.loads(redaction.event_json)
    raw.update(type="m.room.redaction", content={"redacts": message.event_id})
    redaction = attrs.evolve(redaction, event_type="m.room.redaction", event_json=json.dumps(raw))
    await routing.router.handle(redaction)
    await routing.router.handle(message)
    assert routing.turn.jobs == []


async def test_a_paused_agent_gets_nothing_and_the_person_is_told(routing: Routing) -> None:
    await routing.agents.upsert(agent(1, room_id=ROOM, paused=True))
    await routing.router.handle(routing.event(BOB, ROOM, "are you there?"))
    assert routing.turn.jobs == [] and "is paused" in routing.turn.notices[0][2]


async def test_in_a_group_room_only_the_agent_that_is_named_answers(routing: Routing) -> None:
    await routing.rooms.upsert(RoomRow(GROUP, INVITED, "agent-1", owner=BOB, bridged_at=0))
    await routing.invited.add(GROUP, "agent-1")
    await routing.invited.add(GROUP, "agent-2")
    await routing.join(GROUP, ALICE, BOB, "@agent_1:bridge.test", "@agent_2:bridge.test")
    await routing.router.handle(routing.event(BOB, GROUP, "morning all"))
    assert routing.turn.jobs == []
    named = routing.event(BOB, GROUP, "Helper2, what's up?")
    assert await routing.router.lane_key(named) == GROUP  # two agents: the room's lane
    await routing.router.handle(named)
    [job] = routing.turn.jobs
    assert job.agent.agent_id == "agent-2" and "Team room" in job.content


async def test_messages_for_one_agent_share_its_lane_from_every_room(routing: Routing) -> None:
    await routing.rooms.upsert(RoomRow("!dm:bridge.test", INVITED, "agent-1", owner=BOB))
    await routing.invited.add("!dm:bridge.test", "agent-1")
    own = await routing.router.lane_key(routing.event(BOB, ROOM, "hi"))
    dm = await routing.router.lane_key(routing.event(BOB, "!dm:bridge.test", "hi"))
    assert own == dm == "agent:agent-1"
    # Commands never wait behind a turn; unknown rooms and the bridge's own users neither.
    assert await routing.router.lane_key(routing.event(BOB, ROOM, "!letta cancel x")) == ROOM
    assert (
        await routing.router.lane_key(routing.event(BOB, "!x:bridge.test", "hi"))
        == "!x:bridge.test"
    )
    assert await routing.router.lane_key(routing.event(BOT, ROOM, "hi")) == ROOM


async def test_messages_in_rooms_the_bridge_does_not_serve_are_ignored(routing: Routing) -> None:
    await routing.rooms.upsert(RoomRow("!m:bridge.test", MANAGEMENT, owner=BOB))
    await routing.router.handle(routing.event(BOB, "!m:bridge.test", "Helper1 hello"))
    await routing.router.handle(routing.event(BOB, "!unknown:bridge.test", "Helper1 hello"))
    assert routing.turn.jobs == []


@pytest.mark.parametrize(
    ("state", "permitted", "kind", "refused"),
    [
        ("active", True, None, False),
        ("active", True, INVITED, False),
        ("active", False, None, True),  # no access
        (DELETED, True, None, True),  # deleted in Letta
        ("active", True, MANAGEMENT, True),  # a user's room with the bot
        ("active", True, ARCHIVED, True),  # a reset's old room
    ],
)
def test_who_a_puppet_joins(state: str, permitted: bool, kind: str | None, refused: bool) -> None:
    room = RoomRow("!r:bridge.test", kind) if kind else None
    assert (join_refusal(agent(1, state=state), room, permitted) is not None) == refused


async def test_one_agents_messages_from_its_room_and_a_dm_keep_their_order(
    routing: Routing, tmp_path: Path
) -> None:
    """Through the inbox worker with the router's lanes: the agent's first message is held
    until a message in another lane was handled; its DM message, which came later, must still
    wait behind it."""
    dm, elsewhere = "!dm:bridge.test", "!x:bridge.test"
    await routing.rooms.upsert(RoomRow(dm, INVITED, "agent-1", owner=BOB, bridged_at=0))
    await routing.invited.add(dm, "agent-1")
    await routing.join(dm, BOB, "@agent_1:bridge.test", BOT)
    events = [
        routing.event(BOB, ROOM, "one"),
        routing.event(BOB, dm, "two"),
        routing.event(BOB, elsewhere, "unrelated"),
        routing.event(BOB, ROOM, "three"),
        routing.event(BOB, dm, "four"),
    ]
    db = await open_database(DatabaseURL.parse(f"sqlite:{tmp_path / 'inbox.db'}"), in_child=False)
    store = InboxStore(db)
    await store.store_transaction("t", [e.event for e in events])
    other_lane_ran = asyncio.Event()

    async def handle(event: InboxEvent) -> None:
        if event.event_id == events[0].event_id:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(other_lane_ran.wait(), 30)
        await routing.router.handle(event)
        if event.room_id == elsewhere:
            other_lane_ran.set()

    worker = InboxWorker(store, handle, lane_key=routing.router.lane_key)
    await worker.start()
    try:
        await worker.wait_idle(timeout=60)
    finally:
        await worker.stop()
        await db.stop()
    assert other_lane_ran.is_set()
    texts = [job.content.rsplit("\n", 1)[1] for job in routing.turn.jobs]
    assert texts == ["one", "two", "three", "four"]
