"""The agent table: one row per Letta agent ever bridged, with what Matrix was last told."""

from __future__ import annotations

from typing import Any

import attrs
from mautrix.util.async_db import Database

from .database import now_ms

ACTIVE, DELETED = "active", "deleted"


@attrs.define
class AgentRow:
    agent_id: str
    mxid: str
    name: str
    description: str | None = None
    room_id: str | None = None
    state: str = ACTIVE
    paused: bool = False
    displayname: str | None = None
    room_name: str | None = None
    topic: str | None = None
    in_space: bool = False
    created_at: int = attrs.field(factory=now_ms)
    updated_at: int = attrs.field(factory=now_ms)

    _fields = (
        "agent_id, mxid, name, description, room_id, state, paused, displayname, room_name,"
        " topic, in_space, created_at, updated_at"
    )

    @classmethod
    def from_row(cls, row: Any) -> AgentRow:
        data = dict(row)
        data["paused"], data["in_space"] = bool(data["paused"]), bool(data["in_space"])
        return cls(**data)

    def values(self) -> tuple[Any, ...]:
        return attrs.astuple(self, recurse=False)


class AgentStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def all(self) -> list[AgentRow]:
        rows = await self.db.fetch(f"SELECT {AgentRow._fields} FROM agent ORDER BY created_at")
        return [AgentRow.from_row(r) for r in rows]

    async def get(self, agent_id: str) -> AgentRow | None:
        row = await self.db.fetchrow(
            f"SELECT {AgentRow._fields} FROM agent WHERE agent_id=$1", agent_id
        )
        return AgentRow.from_row(row) if row else None

    async def get_by_mxid(self, mxid: str) -> AgentRow | None:
        row = await self.db.fetchrow(f"SELECT {AgentRow._fields} FROM agent WHERE mxid=$1", mxid)
        return AgentRow.from_row(row) if row else None

    async def get_by_room(self, room_id: str) -> AgentRow | None:
        row = await self.db.fetchrow(
            f"SELECT {AgentRow._fields} FROM agent WHERE room_id=$1", room_id
        )
        return AgentRow.from_row(row) if row else None

    async def upsert(self, agent: AgentRow) -> None:
        agent.updated_at = now_ms()
        cols = AgentRow._fields.split(", ")
        placeholders = ", ".join(f"${i + 1}" for i in range(len(cols)))
        kept = ("agent_id", "created_at")
        updates = ", ".join(f"{c}=excluded.{c}" for c in cols if c not in kept)
        await self.db.execute(
            f"INSERT INTO agent ({AgentRow._fields}) VALUES ({placeholders})"
            f" ON CONFLICT (agent_id) DO UPDATE SET {updates}",
            *agent.values(),
        )

    async def counts(self) -> dict[str, int]:
        """Agents by state (active, deleted), and how many active ones are paused."""
        rows = await self.db.fetch(
            "SELECT state, paused, COUNT(*) AS n FROM agent GROUP BY state, paused"
        )
        out = {ACTIVE: 0, DELETED: 0, "paused": 0}
        for r in rows:
            out[r["state"]] = out.get(r["state"], 0) + r["n"]
            if r["state"] == ACTIVE and r["paused"]:
                out["paused"] += r["n"]
        return out
