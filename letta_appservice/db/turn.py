"""The letta_turn table: a finished Letta turn stored as the parts to post, before posting."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from mautrix.util.async_db import Database

from .database import now_ms


class TurnStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, source_event_id: str, agent_id: str) -> list[dict[str, Any]] | None:
        raw = await self.db.fetchval(
            "SELECT parts FROM letta_turn WHERE source_event_id=$1 AND agent_id=$2",
            source_event_id,
            agent_id,
        )
        return None if raw is None else json.loads(raw)

    async def put(
        self, source_event_id: str, agent_id: str, room_id: str, parts: Sequence[dict[str, Any]]
    ) -> None:
        await self.db.execute(
            "INSERT INTO letta_turn (source_event_id, agent_id, room_id, parts, created_at)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            source_event_id,
            agent_id,
            room_id,
            json.dumps(list(parts), separators=(",", ":")),
            now_ms(),
        )

    async def prune(self, older_than_ms: int) -> int:
        rows = await self.db.fetch(
            "DELETE FROM letta_turn WHERE created_at < $1 RETURNING agent_id", older_than_ms
        )
        return len(rows)
