"""A router and its memberships without a homeserver, for fast decision tests: real SQLite
tables, mautrix's memory state store, and a recorder standing in for the turn (what would have
gone to Letta)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
from mautrix.api import Method
from mautrix.appservice.state_store import ASStateStore
from mautrix.client.state_store.memory import MemoryStateStore
from mautrix.errors import make_request_error
from mautrix.types import Member, Membership, RoomID, UserID

from letta_appservice.chat.loops import LoopGuard
from letta_appservice.chat.memberships import Memberships
from letta_appservice.chat.router import Router
from letta_appservice.chat.turn import Job
from letta_appservice.config import Config, parse_config
from letta_appservice.db.agent import AgentRow, AgentStore
from letta_appservice.db.database import DatabaseURL, open_database
from letta_appservice.db.inbox import PROCESSING, InboxEvent
from letta_appservice.db.invited_agent import InvitedAgentStore
from letta_appservice.db.room import AGENT, RoomRow, RoomStore
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
    # Everything a notice was posted with: agent, room, source event, part, relation.
    notice_calls: list[tuple[str, str, str, int, Any]] = attrs.field(factory=list)

    async def answer(self, job: Job) -> None:
        self.jobs.append(job)

    async def notify(self, agent: AgentRow, room_id: str, source: str, part: int, text: str,
                     relation: Any) -> None:  # fmt: skip
        self.notices.append((agent.agent_id, room_id, text))
        self.notice_calls.append((agent.agent_id, room_id, source, part, relation))


class RoomNames:
    """Puppets as the router uses them here: to ask a room's name, and a member's display name
    when the state store does not know it (``asked`` records the paths)."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.room_name: Any = "Team room"  # what the homeserver answers; None: no name (404)

    def api(self, mxid: str) -> RoomNames:
        assert mxid.startswith("@agent_"), mxid  # asked as a puppet
        return self

    async def request(self, method: Any, path: Any) -> dict[str, Any]:
        assert method == Method.GET
        self.asked.append(str(path))
        if "/state/m.room.member/" in str(path):
            return {"membership": "join", "displayname": "Fetched Name"}
        if str(path).endswith("/state/m.room.name") and self.room_name is not None:
            return {"name": self.room_name}
        raise make_request_error(404, "", "M_NOT_FOUND", "Event not found")


@attrs.define
class NoCommands:
    invites: list[str] = attrs.field(factory=list)
    handled: list[tuple[str, str]] = attrs.field(factory=list)  # room, command

    async def on_bot_invite(self, evt: Any) -> None:
        self.invites.append(evt.room_id)

    async def maybe_handle(self, evt: Any) -> bool:
        command = isinstance(evt.content.body, str) and evt.content.body.startswith("!letta")
        if command:
            self.handled.append((evt.room_id, evt.content.body))
        return command


class NoCards:
    """No approval card exists here: replies go on to the agents, reactions change nothing."""

    async def reply(self, _event: InboxEvent) -> bool:
        return False

    async def reaction(self, _event: InboxEvent) -> None:
        return None


@attrs.define
class Routing:
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


@contextlib.asynccontextmanager
async def routing_setup(tmp_path: Path) -> AsyncIterator[Routing]:
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
        reactions=NoCards(),  # type: ignore[arg-type]
        loops=LoopGuard(),
    )  # fmt: skip
    for n in (1, 2):
        await agents.upsert(agent(n, room_id=f"!own{n}:bridge.test" if n > 1 else ROOM))
    await rooms.upsert(RoomRow(ROOM, AGENT, "agent-1", bridged_at=0))
    s = Routing(router, turn, agents, rooms, invited, state_store)
    await s.join(ROOM, ALICE, BOB, STRANGER, BOT, "@agent_1:bridge.test")
    try:
        yield s
    finally:
        await db.stop()
