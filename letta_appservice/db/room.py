"""The room table: every room the bridge knows and what it is for."""

from __future__ import annotations

from typing import Any

import attrs
from mautrix.util.async_db import Database

from .database import now_ms

# AGENT: an agent's own room (the reconciler's); INVITED: any room a person invited puppets
# into (a DM or a group room); MANAGEMENT: a user's DM with the bot; ARCHIVED: a reset's old room.
AGENT, INVITED, MANAGEMENT, ARCHIVED = "agent", "invited", "management", "archived"


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


class RoomStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, room_id: str) -> RoomRow | None:
        row = await self.db.fetchrow(
            f"SELECT {RoomRow._fields} FROM room WHERE room_id=$1", room_id
        )
        return RoomRow.from_row(row) if row else None

    async def management_room(self, owner: str) -> RoomRow | None:
        row = await self.db.fetchrow(
            f"SELECT {RoomRow._fields} FROM room WHERE kind=$1 AND owner=$2", MANAGEMENT, owner
        )
        return RoomRow.from_row(row) if row else None

    async def upsert(self, room: RoomRow) -> None:
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

    async def delete(self, room_id: str) -> None:
        await self.db.execute("DELETE FROM room WHERE room_id=$1", room_id)
