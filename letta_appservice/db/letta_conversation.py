"""The letta_conversation table: which Letta conversation holds a room's (or thread's)
exchange with an agent."""

from __future__ import annotations

from mautrix.util.async_db import Database

from .database import now_ms


class LettaConversationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, agent_id: str, room_id: str, thread_id: str = "") -> str | None:
        return await self.db.fetchval(
            "SELECT conversation_id FROM letta_conversation"
            " WHERE agent_id=$1 AND room_id=$2 AND thread_id=$3",
            agent_id,
            room_id,
            thread_id,
        )

    async def put(self, agent_id: str, room_id: str, thread_id: str, conversation_id: str) -> None:
        await self.db.execute(
            "INSERT INTO letta_conversation"
            " (agent_id, room_id, thread_id, conversation_id, created_at)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (agent_id, room_id, thread_id)"
            " DO UPDATE SET conversation_id=excluded.conversation_id,"
            " created_at=excluded.created_at",
            agent_id,
            room_id,
            thread_id,
            conversation_id,
            now_ms(),
        )

    async def forget(self, room_id: str, agent_id: str | None = None) -> None:
        """Drop the room's mappings (of one agent, or all), its threads' too: their next
        messages start fresh conversations."""
        if agent_id is None:
            await self.db.execute("DELETE FROM letta_conversation WHERE room_id=$1", room_id)
            return
        await self.db.execute(
            "DELETE FROM letta_conversation WHERE room_id=$1 AND agent_id=$2", room_id, agent_id
        )
