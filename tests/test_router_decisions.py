"""The router's and memberships' decisions without a homeserver: who a message is for, in which
lane it waits, who is refused, what is never passed on. Real SQLite tables, mautrix's memory
state store, and a recorder standing in for the turn (what would have gone to Letta)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_asyncio
from mautrix.appservice.state_store import ASStateStore
from mautrix.client.state_store.memory import MemoryStateStore
from mautrix.types import Member, Membership, RoomID, UserID

from letta_appservice.chat.memberships import Memberships, join_refusal
from letta_appservice.chat.router import Router
from letta_appservice.chat.turn import Job
from letta_appservice.config import Config, parse_config
from letta_appservice.db.agent import DELETED, AgentRow, AgentStore
from letta_appservice.db.database import DatabaseURL, open_database
from letta_appservice.db.inbox import PROCESSING, InboxEvent
from letta_appservice.db.invited_agent import InvitedAgentStore
from letta_appservice.db.room import AGENT, ARCHIVED, INVITED, MANAGEMENT, RoomRow, RoomStore
from letta_appservice.db.user_notice import UserNoticeStore
from letta_appservice.identity import Identity
from letta_appservice.permissions import Permissions

DOMAIN = "bridge.test"
BOT = f"@letta:{DOMAIN}"
ALICE, BOB, STRANGER = f"@alice:{DOMAIN}", f"@bob:{DOMAIN}", "@eve:elsewhere.net"
ROOM, GROUP = "!own:bridge.test", "!group:bridge.test"


class MemoryASStateStore(ASStateStore, MemoryStateStore):
    def __init__(self) -> None:
        ASStateStore.__init__(self)
        MemoryStateStore.__init__(self)


@attrs.define
class Recorder:
    """Stands in for the turn: what would have been sent to Letta, and the notices."""

    jobs: list[Job] = attrs.field(factory=list)
    notices: list[tuple[str, str, str]] = attrs.field(factory=list)  # agent, room, text

    async def answer(self, job: Job) -> None:
        self.jobs.append(job)

    async def notify(self, agent: AgentRow, room_id: str, _source: str, _part: int, text: str,
                     _relation: Any) -> None:  # fmt: skip
        self.notices.append((agent.agent_id, room_id, text))


class RoomNames:
    """Puppets as the router uses them here: to ask a room's name (display names come from the
    state store)."""

    def api(self, _mxid: str) -> RoomNames:
        return self

    async def request(self, _method: Any, _path: Any) -> dict[str, str]:
        return {"name": "Team room"}


@attrs.define
class NoCommands:
    invites: list[str] = attrs.field(factory=list)

    async def on_bot_invite(self, evt: Any) -> None:
        self.invites.append(evt.room_id)

    async def maybe_handle(self, evt: Any) -> bool:
        return isinstance(evt.content.body, str) and evt.content.body.startswith("!letta")


@attrs.define
class Setup:
    router: Router
    turn: Recorder
    agents: AgentStore
    rooms: RoomStore
    invited: InvitedAgentStore
    state_store: MemoryASStateStore
    seq: int = 0

    def event(self, sender: str, room_id: str, body: str, **content: Any) -> InboxEvent:
        self.seq += 1
        raw = {
            "type": "m.room.message",
            "event_id": f"$e{self.seq}",
            "room_id": room_id,
            "sender": sender,
            "origin_server_ts": int(time.time() * 1000),
            "content": {"msgtype": "m.text", "body": body, **content},
        }
        return InboxEvent(
            self.seq, raw["event_id"], room_id, sender, raw["type"], json.dumps(raw), "t",
            PROCESSING, 0, 0, raw["origin_server_ts"],
        )  # fmt: skip

    async def join(self, room_id: str, *mxids: str) -> None:
        for mxid in mxids:
            name = mxid[1:].split(":")[0].title()
            member = Member(membership=Membership.JOIN, displayname=name)
            await self.state_store.set_member(RoomID(room_id), UserID(mxid), member)


def config() -> Config:
    return parse_config(
        {
            "homeserver": {"address": "http://hs.bridge.test", "domain": DOMAIN},
            "appservice": {
                "address": "http://as.bridge.test",
                "as_token": "a" * 32,
                "hs_token": "h" * 32,
            },
            "letta": {"base_url": "http://letta.bridge.test"},
            "bridge": {"permissions": {DOMAIN: "user", ALICE: "admin"}},
        }
    )


def agent(n: int, **fields: Any) -> AgentRow:
    return AgentRow(f"agent-{n}", f"@agent_{n}:{DOMAIN}", f"Helper{n}", **fields)


@pytest_asyncio.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    url = DatabaseURL.parse(f"sqlite:{tmp_path / 'bridge.db'}")
    db = await open_database(url, in_child=False)
    cfg = config()
    identity = Identity.from_config(cfg)
    permissions = Permissions(cfg.bridge.permissions)
    agents, rooms, invited = AgentStore(db), RoomStore(db), InvitedAgentStore(db)
    notices, state_store, turn, commands = (
        UserNoticeStore(db),
        MemoryASStateStore(),
        Recorder(),
        NoCommands(),
    )
    memberships = Memberships(
        config=cfg, identity=identity, permissions=permissions, agents=agents, rooms=rooms,
        invited=invited, notices=notices, state_store=state_store, puppets=None,  # type: ignore[arg-type]
        bot_invites=commands,
    )  # fmt: skip

    async def nothing(_event: InboxEvent) -> None:
        return None

    router = Router(
        config=cfg, identity=identity, permissions=permissions, agents=agents, rooms=rooms,
        invited=invited, notices=notices, state_store=state_store, puppets=RoomNames(),  # type: ignore[arg-type]
        conversations=turn, memberships=memberships, commands=commands, before=nothing,  # type: ignore[arg-type]
    )  # fmt: skip
    for n in (1, 2):
        await agents.upsert(agent(n, room_id=f"!own{n}:bridge.test" if n > 1 else ROOM))
    await rooms.upsert(RoomRow(ROOM, AGENT, "agent-1", bridged_at=0))
    s = Setup(router, turn, agents, rooms, invited, state_store)
    await s.join(ROOM, ALICE, BOB, STRANGER, BOT, "@agent_1:bridge.test")
    try:
        yield s
    finally:
        await db.stop()


async def test_a_permitted_person_in_an_agents_room_reaches_it_with_attribution(
    setup: Setup,
) -> None:
    await setup.router.handle(setup.event(BOB, ROOM, "hello there"))
    [job] = setup.turn.jobs
    assert job.agent.agent_id == "agent-1" and job.sender == BOB and job.expects_reply
    assert job.content.endswith("\nhello there") and "@bob:bridge.test" in job.content


async def test_the_bridges_own_users_are_never_answered(setup: Setup) -> None:
    for sender in (BOT, "@agent_2:bridge.test", "@AGENT_2:bridge.test"):
        await setup.router.handle(setup.event(sender, ROOM, "hello Helper1"))
    assert setup.turn.jobs == [] and setup.turn.notices == []


async def test_an_outsider_is_refused_once_per_room_and_never_reaches_the_agent(
    setup: Setup,
) -> None:
    for _ in range(3):
        await setup.router.handle(setup.event(STRANGER, ROOM, "let me in"))
    assert setup.turn.jobs == []
    assert [text for _, _, text in setup.turn.notices] == [
        f"{STRANGER} may not talk to agents on this bridge; ask a bridge admin for access."
    ]


async def test_commands_media_edits_and_notices_do_not_reach_the_agent(setup: Setup) -> None:
    await setup.router.handle(setup.event(BOB, ROOM, "!letta status"))
    await setup.router.handle(setup.event(BOB, ROOM, "* fixed", **{
        "m.relates_to": {"rel_type": "m.replace", "event_id": "$e1"}}))  # fmt: skip
    notice = setup.event(BOB, ROOM, "a notice")
    notice.event_json = notice.event_json.replace('"m.text"', '"m.notice"')
    await setup.router.handle(notice)
    assert setup.turn.jobs == []
    image = setup.event(BOB, ROOM, "cat.png")
    image.event_json = image.event_json.replace('"m.text"', '"m.image"')
    await setup.router.handle(image)
    assert setup.turn.jobs == [] and "read text only" in setup.turn.notices[0][2]


async def test_a_message_deleted_before_its_turn_is_not_passed_on(setup: Setup) -> None:
    message = setup.event(BOB, ROOM, "oops")
    redaction = setup.event(BOB, ROOM, "")
    raw = json.loads(redaction.event_json)
    raw.update(type="m.room.redaction", content={"redacts": message.event_id})
    redaction = attrs.evolve(redaction, event_type="m.room.redaction", event_json=json.dumps(raw))
    await setup.router.handle(redaction)
    await setup.router.handle(message)
    assert setup.turn.jobs == []


async def test_a_paused_agent_gets_nothing_and_the_person_is_told(setup: Setup) -> None:
    await setup.agents.upsert(agent(1, room_id=ROOM, paused=True))
    await setup.router.handle(setup.event(BOB, ROOM, "are you there?"))
    assert setup.turn.jobs == [] and "is paused" in setup.turn.notices[0][2]


async def test_in_a_group_room_only_the_agent_that_is_named_answers(setup: Setup) -> None:
    await setup.rooms.upsert(RoomRow(GROUP, INVITED, "agent-1", owner=BOB, bridged_at=0))
    await setup.invited.add(GROUP, "agent-1")
    await setup.invited.add(GROUP, "agent-2")
    await setup.join(GROUP, ALICE, BOB, "@agent_1:bridge.test", "@agent_2:bridge.test")
    await setup.router.handle(setup.event(BOB, GROUP, "morning all"))
    assert setup.turn.jobs == []
    named = setup.event(BOB, GROUP, "Helper2, what's up?")
    assert await setup.router.lane_key(named) == GROUP  # two agents: the room's lane
    await setup.router.handle(named)
    [job] = setup.turn.jobs
    assert job.agent.agent_id == "agent-2" and "Team room" in job.content


async def test_messages_for_one_agent_share_its_lane_from_every_room(setup: Setup) -> None:
    await setup.rooms.upsert(RoomRow("!dm:bridge.test", INVITED, "agent-1", owner=BOB))
    await setup.invited.add("!dm:bridge.test", "agent-1")
    own = await setup.router.lane_key(setup.event(BOB, ROOM, "hi"))
    dm = await setup.router.lane_key(setup.event(BOB, "!dm:bridge.test", "hi"))
    assert own == dm == "agent:agent-1"
    # Commands never wait behind a turn; unknown rooms and the bridge's own users neither.
    assert await setup.router.lane_key(setup.event(BOB, ROOM, "!letta cancel x")) == ROOM
    assert (
        await setup.router.lane_key(setup.event(BOB, "!x:bridge.test", "hi")) == "!x:bridge.test"
    )
    assert await setup.router.lane_key(setup.event(BOT, ROOM, "hi")) == ROOM


async def test_messages_in_rooms_the_bridge_does_not_serve_are_ignored(setup: Setup) -> None:
    await setup.rooms.upsert(RoomRow("!m:bridge.test", MANAGEMENT, owner=BOB))
    await setup.router.handle(setup.event(BOB, "!m:bridge.test", "Helper1 hello"))
    await setup.router.handle(setup.event(BOB, "!unknown:bridge.test", "Helper1 hello"))
    assert setup.turn.jobs == []


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
