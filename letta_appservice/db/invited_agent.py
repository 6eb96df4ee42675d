"""The invited_agent table: agents whose puppet a person invited into a room (DMs, groups)."""

from __future__ import annotations

from mautrix.util.async_db import Database

from .database import now_ms


class InvitedAgentStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def agents_in(self, room_id: str) -> list[str]:
        rows = await self.db.fetch(
            "SELECT agent_id FROM invited_agent WHERE room_id=$1 ORDER BY added_at, agent_id",
            room_id,
        )
        return [r["agent_id"] for r in rows]

    async def add(self, room_id: str, agent_id: str) -> None:
        await self.db.execute(
            "INSERT INTO invited_agent (room_id, agent_id, added_at) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING",
            room_id,
            agent_id,
            now_ms(),
        )

    async def remove(self, room_id: str, agent_id: str) -> None:
        await self.db.execute(
            "DELETE FROM invited_agent WHERE room_id=$1 AND agent_id=$2", room_id, agent_id
        )
