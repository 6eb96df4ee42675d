"""The sent_event table: Matrix events posted for an inbox event, one row per part."""

from __future__ import annotations

from mautrix.util.async_db import Database

from .database import now_ms


class SentEventStore:
    """Parts are numbered per (source event, agent); agent '' is the bridge bot. A part found
    here is never posted again, whatever happens to the inbox row."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def parts(self, source_event_id: str, agent_id: str = "") -> dict[int, str]:
        """part number -> event id of everything already posted for this source and agent."""
        rows = await self.db.fetch(
            "SELECT part, event_id FROM sent_event WHERE source_event_id=$1 AND agent_id=$2",
            source_event_id,
            agent_id,
        )
        return {r["part"]: r["event_id"] for r in rows}

    async def add(
        self, source_event_id: str, agent_id: str, part: int, room_id: str, event_id: str
    ) -> None:
        await self.db.execute(
            "INSERT INTO sent_event (source_event_id, agent_id, part, room_id, event_id, sent_at)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            source_event_id,
            agent_id,
            part,
            room_id,
            event_id,
            now_ms(),
        )

    async def prune(self, older_than_ms: int) -> int:
        rows = await self.db.fetch(
            "DELETE FROM sent_event WHERE sent_at < $1 RETURNING part", older_than_ms
        )
        return len(rows)
