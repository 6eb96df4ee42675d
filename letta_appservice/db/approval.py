"""The approval table: tool-approval cards posted by agents' puppets and their decisions."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs
from mautrix.util.async_db import Database

from .database import now_ms

APPROVE, DENY, ELSEWHERE = "approve", "deny", "elsewhere"
_COLUMNS = (
    "card_event_id, room_id, agent_id, asker, relation, calls, card, created_at, decision,"
    " decided_by, decision_event_id, reason, decided_at"
)


@attrs.define
class ApprovalRow:
    card_event_id: str
    room_id: str
    agent_id: str
    asker: str
    relation: Mapping[str, Any]
    calls: list[dict[str, str]]  # {id, name, arguments}
    card: dict[str, Any]  # the card's part as first posted (Part.to_json)
    created_at: int = 0
    decision: str | None = None
    decided_by: str | None = None
    decision_event_id: str | None = None
    reason: str | None = None
    decided_at: int | None = None

    @classmethod
    def from_row(cls, row: Any) -> ApprovalRow:
        return cls(
            card_event_id=row["card_event_id"],
            room_id=row["room_id"],
            agent_id=row["agent_id"],
            asker=row["asker"],
            relation=json.loads(row["relation"]),
            calls=json.loads(row["calls"]),
            card=json.loads(row["card"]),
            created_at=row["created_at"],
            decision=row["decision"],
            decided_by=row["decided_by"],
            decision_event_id=row["decision_event_id"],
            reason=row["reason"],
            decided_at=row["decided_at"],
        )


class ApprovalStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, card_event_id: str) -> ApprovalRow | None:
        row = await self.db.fetchrow(
            f"SELECT {_COLUMNS} FROM approval WHERE card_event_id=$1", card_event_id
        )
        return None if row is None else ApprovalRow.from_row(row)

    async def add(self, row: ApprovalRow) -> None:
        """Record a posted card (again after a restart: nothing changes)."""
        await self.db.execute(
            "INSERT INTO approval (card_event_id, room_id, agent_id, asker, relation, calls,"
            " card, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            row.card_event_id,
            row.room_id,
            row.agent_id,
            row.asker,
            json.dumps(dict(row.relation)),
            json.dumps(row.calls),
            json.dumps(row.card),
            now_ms(),
        )

    async def claim(
        self, card_event_id: str, event_id: str, by: str, decision: str, reason: str
    ) -> ApprovalRow | None:
        """Decide the card unless someone else did first; the row when ``event_id`` holds the
        decision (claimed now, or by the same event before a retry), else None."""
        await self.db.execute(
            "UPDATE approval SET decision=$3, decided_by=$4, decision_event_id=$2, reason=$5,"
            " decided_at=$6 WHERE card_event_id=$1 AND decision IS NULL",
            card_event_id,
            event_id,
            decision,
            by,
            reason,
            now_ms(),
        )
        row = await self.get(card_event_id)
        return row if row is not None and row.decision_event_id == event_id else None

    async def decided_elsewhere(self, card_event_id: str) -> None:
        await self.db.execute(
            "UPDATE approval SET decision=$2 WHERE card_event_id=$1", card_event_id, ELSEWHERE
        )

    async def prune(self, older_than_ms: int) -> int:
        """Forget cards decided before the cut-off (a late reaction to one is then ignored);
        undecided cards stay whatever their age: Letta may still be waiting on them."""
        rows = await self.db.fetch(
            "DELETE FROM approval WHERE decision IS NOT NULL"
            " AND COALESCE(decided_at, created_at) < $1 RETURNING card_event_id",
            older_than_ms,
        )
        return len(rows)
