"""Which homeserver the stored state belongs to.

The database names rooms (the space, every agent's room) and users of one homeserver. Moved to
another one (Synapse to Tuwunel, a rebuilt server), none of them exists there, and a bridge that
carried on would fail room by room. So at start the bridge checks that its recorded server name
is ``homeserver.domain`` and that at least one room it records is on the homeserver; when not,
it stops with one line naming ``move-homeserver``. That command sets the old state aside (rooms
marked ``moved``, the old space and server remembered, agents kept without their rooms) so that
one reconcile pass provisions every agent afresh on the new homeserver.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import attrs
from mautrix.appservice import AppServiceAPI
from mautrix.util.async_db import Database

from ..db.agent import ACTIVE, AgentStore
from ..db.bridge_state import BridgeState
from ..db.database import now_ms
from ..db.room import MOVED
from ..matrix import rooms
from .plan import ReconcileSettings
from .space import SPACE_AGENT_ID, SPACE_KEY, SPACE_NAME_KEY

log = logging.getLogger("letta_appservice.reconciler")
SERVER_KEY = "homeserver"  # {"server_name": …}: the server the stored rooms and users are on
MOVES_KEY = "homeserver_moves"  # what move-homeserver set aside, oldest first
ALIAS_PROBES = 3  # agent room aliases asked (besides the space's) when the bot is in no room
# mautrix's caches of room state and profiles: all of the old homeserver's rooms and users.
STATE_STORE_TABLES = ("mx_room_state", "mx_user_profile")


class HomeserverChanged(Exception):
    """The stored rooms and users belong to another homeserver. ``key``: the config key at
    odds with the database, when it is one."""

    def __init__(self, reason: str, key: str | None = None) -> None:
        super().__init__(reason)
        self.key = key


def server_of(mxid: str) -> str:
    return mxid.split(":", 1)[1] if ":" in mxid else ""


async def recorded_server(state: BridgeState, agents: AgentStore) -> str | None:
    """The server name the database was made on: recorded at start since this check exists,
    else read from the stored puppets' ids (databases of earlier versions)."""
    record = await state.get(SERVER_KEY)
    if isinstance(record, dict) and record.get("server_name"):
        return str(record["server_name"])
    for row in await agents.all():
        return server_of(row.mxid) or None
    return None


@attrs.frozen
class Stored:
    """The rooms the database says the bridge is in: room id -> the alias it was made under."""

    rooms: dict[str, str]
    space_id: str | None

    @classmethod
    async def read(
        cls, state: BridgeState, agents: AgentStore, settings: ReconcileSettings
    ) -> Stored:
        space_id = await state.get(SPACE_KEY)
        found = {space_id: settings.alias(SPACE_AGENT_ID)} if space_id else {}
        for row in await agents.all():
            if row.state == ACTIVE and row.room_id:
                found[row.room_id] = settings.alias(row.agent_id)
        return cls(found, space_id)


async def check(
    bot_api: AppServiceAPI,
    state: BridgeState,
    agents: AgentStore,
    settings: ReconcileSettings,
    address: str,
) -> None:
    """Raise HomeserverChanged unless the stored state is this homeserver's; record the server
    name when it is. Costs one request (the bot's joined rooms) when the bot is in its rooms,
    up to four alias lookups more when it is in none of them."""
    domain = settings.domain
    recorded = await recorded_server(state, agents)
    if recorded is not None and recorded != domain:
        raise HomeserverChanged(
            f"the database belongs to the homeserver {recorded!r}, but homeserver.domain is "
            f"{domain!r}",
            key="homeserver.domain",
        )
    stored = await Stored.read(state, agents, settings)
    if stored.rooms and not await _any_present(bot_api, stored):
        space = f" (the space {stored.space_id} among them)" if stored.space_id else ""
        raise HomeserverChanged(
            f"none of the {len(stored.rooms)} rooms the database records{space} is on the "
            f"homeserver at {address}: the bot is in none of them and their aliases are unknown"
        )
    if await state.get(SERVER_KEY) != {"server_name": domain}:
        await state.set(SERVER_KEY, {"server_name": domain})


async def _any_present(bot_api: AppServiceAPI, stored: Stored) -> bool:
    """Whether one of the stored rooms is on this homeserver: the bot is in it, or its alias
    still points at it (the bot was kicked while the bridge was down: drift repair's job)."""
    if set(stored.rooms) & await rooms.joined_rooms(bot_api):
        return True
    for room_id, alias in list(stored.rooms.items())[: ALIAS_PROBES + 1]:
        if await rooms.resolve_alias(bot_api, alias) == room_id:
            return True
    return False


@attrs.frozen
class Move:
    """What ``set_aside`` put aside, as remembered under MOVES_KEY."""

    moved_at: int
    from_server: str | None
    to_server: str
    space_id: str | None
    rooms: dict[str, int]  # kind -> rooms marked moved
    agents: int

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


async def set_aside(db: Database, settings: ReconcileSettings) -> Move:
    """Put the old homeserver's state aside in one transaction: its rooms are marked ``moved``
    (kind, agent and owner kept), every agent keeps its row, pause and state but loses its room
    and what Matrix was told (so the next pass creates puppet, room and space child again, under
    this server's name), the old space and server are remembered, mautrix's caches of the old
    rooms are emptied. Messages, turns and replies already stored stay as they are."""
    state, agents = BridgeState(db), AgentStore(db)
    from_server = await recorded_server(state, agents)
    space_id = await state.get(SPACE_KEY)
    rows = await agents.all()
    moves = await state.get(MOVES_KEY, [])
    caches = [table for table in STATE_STORE_TABLES if await db.table_exists(table)]
    async with db.acquire() as conn, conn.transaction():
        kinds = await conn.fetch("SELECT kind FROM room WHERE kind <> $1", MOVED)
        await conn.execute("UPDATE room SET kind=$1 WHERE kind <> $1", MOVED)
        for row in rows:
            await conn.execute(
                "UPDATE agent SET mxid=$1, room_id=NULL, displayname=NULL, room_name=NULL,"
                " topic=NULL, in_space=$2, updated_at=$3 WHERE agent_id=$4",
                settings.mxid(row.agent_id),
                False,
                now_ms(),
                row.agent_id,
            )
        await conn.execute(
            "DELETE FROM bridge_state WHERE key IN ($1, $2)", SPACE_KEY, SPACE_NAME_KEY
        )
        for table in caches:
            await conn.execute(f"DELETE FROM {table}")
        move = Move(
            moved_at=now_ms(),
            from_server=from_server,
            to_server=settings.domain,
            space_id=space_id,
            rooms=dict(Counter(r["kind"] for r in kinds)),
            agents=len(rows),
        )
        await state.set(MOVES_KEY, [*moves, move.to_json()], conn)
        await state.set(SERVER_KEY, {"server_name": settings.domain}, conn)
    log.info("Set aside the state of %s: %s", from_server or "the old homeserver", move)
    return move
