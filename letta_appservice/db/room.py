"""The room table: every room the bridge knows and what it is for."""

from __future__ import annotations

import time
import weakref
from typing import Any

import attrs
from mautrix.util.async_db import Database

from .database import now_ms

# AGENT: an agent's own room (the reconciler's); INVITED: any room a person invited puppets
# into (a DM or a group room); MANAGEMENT: a user's DM with the bot; ARCHIVED: a reset's old room;
# MOVED: a room on the homeserver the bridge left (move-homeserver), kept for the record only.
AGENT, INVITED, MANAGEMENT, ARCHIVED, MOVED = "agent", "invited", "management", "archived", "moved"
# The table is read again this often, for rows another process wrote (import-legacy).
RELOAD_INTERVAL = 60.0


@attrs.define
class RoomRow:
    room_id: str
    kind: str
    agent_id: str | None = None
    mode: str | None = None  # open | mention | off; None = the kind's default
    owner: str | None = None
    bridged_at: int = attrs.field(factory=now_ms)

    _fields = "room_id, kind, agent_id, mode, owner, bridged_at"

    @classmethod
    def from_row(cls, row: Any) -> RoomRow:
        return cls(**dict(row))


@attrs.define
class _Cache:
    rows: dict[str, RoomRow] | None = None
    loaded_at: float = 0.0
    writes: int = 0


# One copy per database, shared by every RoomStore on it in this process.
_CACHES: weakref.WeakKeyDictionary[Database, _Cache] = weakref.WeakKeyDictionary()


class RoomStore:
    """The room table, held in memory (it is small: the bridge's own rooms), so routing an
    event of a room the bridge does not serve never touches the database. Writes go through
    to the table and the copy, which every RoomStore on the same database shares; it is read
    again every ``RELOAD_INTERVAL`` for rows another process wrote."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._cache = _CACHES.setdefault(db, _Cache())

    async def _cached(self) -> dict[str, RoomRow]:
        cache = self._cache
        while cache.rows is None or time.monotonic() - cache.loaded_at > RELOAD_INTERVAL:
            writes = cache.writes
            rows = await self.db.fetch(f"SELECT {RoomRow._fields} FROM room")
            if writes == cache.writes:  # else a write raced the read: read again
                cache.rows = {r["room_id"]: RoomRow.from_row(r) for r in rows}
                cache.loaded_at = time.monotonic()
        return cache.rows

    async def get(self, room_id: str) -> RoomRow | None:
        row = (await self._cached()).get(room_id)
        return attrs.evolve(row) if row else None  # a copy: callers change rows, then upsert

    async def management_room(self, owner: str) -> RoomRow | None:
        for row in (await self._cached()).values():
            if row.kind == MANAGEMENT and row.owner == owner:
                return attrs.evolve(row)
        return None

    async def upsert(self, room: RoomRow) -> None:
        self._cache.writes += 1
        await self.db.execute(
            f"INSERT INTO room ({RoomRow._fields}) VALUES ($1, $2, $3, $4, $5, $6)"
            " ON CONFLICT (room_id) DO UPDATE SET kind=excluded.kind, agent_id=excluded.agent_id,"
            " mode=excluded.mode, owner=excluded.owner",
            room.room_id,
            room.kind,
            room.agent_id,
            room.mode,
            room.owner,
            room.bridged_at,
        )
        if (rows := self._cache.rows) is not None:
            old = rows.get(room.room_id)
            # bridged_at is kept on conflict, as in the table.
            bridged_at = old.bridged_at if old else room.bridged_at
            rows[room.room_id] = attrs.evolve(room, bridged_at=bridged_at)

    async def delete(self, room_id: str) -> None:
        self._cache.writes += 1
        await self.db.execute("DELETE FROM room WHERE room_id=$1", room_id)
        if self._cache.rows is not None:
            self._cache.rows.pop(room_id, None)
