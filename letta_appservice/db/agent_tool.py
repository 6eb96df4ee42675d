"""The agent_tool table (an agent's tool secret hash, admin switch, synced version) and the
agent_dm table (the direct chat an agent's tool opened with a person)."""

from __future__ import annotations

from typing import Any

import attrs
from mautrix.util.async_db import Database


@attrs.define
class AgentToolRow:
    agent_id: str
    secret_hash: str | None = None
    enabled: bool | None = None  # an admin's switch; None = as the config says
    synced: str | None = None  # tool version set up in Letta; None = nothing there

    _fields = "agent_id, secret_hash, enabled, synced"

    @classmethod
    def from_row(cls, row: Any) -> AgentToolRow:
        data = dict(row)
        if data["enabled"] is not None:
            data["enabled"] = bool(data["enabled"])
        return cls(**data)


class AgentToolStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def all(self) -> dict[str, AgentToolRow]:
        rows = await self.db.fetch(f"SELECT {AgentToolRow._fields} FROM agent_tool")
        return {r["agent_id"]: AgentToolRow.from_row(r) for r in rows}

    async def get(self, agent_id: str) -> AgentToolRow | None:
        row = await self.db.fetchrow(
            f"SELECT {AgentToolRow._fields} FROM agent_tool WHERE agent_id=$1", agent_id
        )
        return AgentToolRow.from_row(row) if row else None

    async def upsert(self, row: AgentToolRow) -> None:
        await self.db.execute(
            f"INSERT INTO agent_tool ({AgentToolRow._fields}) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (agent_id) DO UPDATE SET secret_hash=excluded.secret_hash,"
            " enabled=excluded.enabled, synced=excluded.synced",
            row.agent_id,
            row.secret_hash,
            row.enabled,
            row.synced,
        )

    async def forget_synced(self) -> None:
        """Every agent's tools are gone from Letta (they were deleted there)."""
        await self.db.execute("UPDATE agent_tool SET synced=NULL WHERE synced IS NOT NULL")

    async def dm(self, agent_id: str, user_id: str) -> str | None:
        return await self.db.fetchval(
            "SELECT room_id FROM agent_dm WHERE agent_id=$1 AND user_id=$2", agent_id, user_id
        )

    async def set_dm(self, agent_id: str, user_id: str, room_id: str) -> None:
        await self.db.execute(
            "INSERT INTO agent_dm (agent_id, user_id, room_id) VALUES ($1, $2, $3)"
            " ON CONFLICT (agent_id, user_id) DO UPDATE SET room_id=excluded.room_id",
            agent_id,
            user_id,
            room_id,
        )
