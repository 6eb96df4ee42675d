"""The inbox table: pushed events stored before the ack, then worked off in order."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import attrs
from mautrix.util.async_db import Database

from .database import now_ms

PENDING, PROCESSING, DONE, FAILED = "pending", "processing", "done", "failed"
STATES = (PENDING, PROCESSING, DONE, FAILED)
_CHUNK = 100  # events per INSERT statement (8 parameters each)


@attrs.define
class InboxEvent:
    seq: int
    event_id: str
    room_id: str
    sender: str
    event_type: str
    event_json: str
    txn_id: str
    state: str
    attempts: int
    not_before: int
    received_at: int
    error: str | None = None

    _columns = (
        "seq, event_id, room_id, sender, event_type, event_json, txn_id, state, attempts,"
        " not_before, received_at, error"
    )

    @functools.cached_property
    def event(self) -> dict[str, Any]:
        """The event as pushed, parsed once (the router and its helpers all read it)."""
        return json.loads(self.event_json)


@attrs.frozen
class StoreResult:
    duplicate_txn: bool
    new_events: int


class InboxStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def store_transaction(
        self, txn_id: str, events: Sequence[dict[str, Any]]
    ) -> StoreResult:
        """Record ``txn_id`` and insert its events in ONE database transaction. Events already
        stored (a retry re-batched under a new txnId) are kept once, keyed by event_id."""
        now = now_ms()
        rows = [
            (
                ev["event_id"],
                ev["room_id"],
                ev["sender"],
                ev["type"],
                json.dumps(ev, separators=(",", ":")),
                txn_id,
                now,
                now,
            )
            for ev in events
        ]
        async with self.db.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(
                "INSERT INTO appservice_txn (txn_id, received_at, event_count) VALUES ($1, $2, $3)"
                " ON CONFLICT (txn_id) DO NOTHING RETURNING 1",
                txn_id,
                now,
                len(rows),
            )
            if not inserted:
                return StoreResult(duplicate_txn=True, new_events=0)
            new = 0
            for start in range(0, len(rows), _CHUNK):
                chunk = rows[start : start + _CHUNK]
                # One multi-row statement per chunk: a single round trip, and RETURNING tells
                # which events were new (works on both SQLite >= 3.35 and PostgreSQL).
                values = ", ".join(
                    "(" + ", ".join(f"${i * 8 + j + 1}" for j in range(8)) + ")"
                    for i in range(len(chunk))
                )
                new += len(
                    await conn.fetch(
                        "INSERT INTO inbox (event_id, room_id, sender, event_type, event_json,"
                        f" txn_id, received_at, updated_at) VALUES {values}"
                        " ON CONFLICT (event_id) DO NOTHING RETURNING seq",
                        *(v for row in chunk for v in row),
                    )
                )
        return StoreResult(duplicate_txn=False, new_events=new)

    async def resume_unfinished(self) -> int:
        """After a crash or restart, events that were being worked on are pending again."""
        rows = await self.db.fetch(
            "UPDATE inbox SET state=$1 WHERE state=$2 RETURNING seq", PENDING, PROCESSING
        )
        return len(rows)

    async def claim(self, limit: int) -> list[InboxEvent]:
        """Take up to ``limit`` pending events in arrival order and mark them processing
        (one statement, so the claim is atomic and cheap)."""
        rows = await self.db.fetch(
            f"UPDATE inbox SET state=$1, updated_at=$2 WHERE seq IN (SELECT seq FROM inbox"
            f" WHERE state=$3 ORDER BY seq LIMIT $4) RETURNING {InboxEvent._columns}",
            PROCESSING,
            now_ms(),
            PENDING,
            limit,
        )
        return sorted((InboxEvent(**dict(r)) for r in rows), key=lambda e: e.seq)

    async def finish_many(self, seqs: Sequence[int], state: str = DONE) -> None:
        """Mark many events finished in one statement per chunk."""
        for start in range(0, len(seqs), 500):
            chunk = seqs[start : start + 500]
            marks = ", ".join(f"${i + 3}" for i in range(len(chunk)))
            await self.db.execute(
                f"UPDATE inbox SET state=$1, updated_at=$2 WHERE seq IN ({marks})",
                state,
                now_ms(),
                *chunk,
            )

    async def finish(self, seq: int, state: str = DONE, error: str | None = None) -> None:
        await self.db.execute(
            "UPDATE inbox SET state=$1, error=$2, updated_at=$3 WHERE seq=$4",
            state,
            error,
            now_ms(),
            seq,
        )

    async def postpone(self, seq: int, not_before: int, error: str) -> int:
        """Count an attempt and remember when to try again; returns the attempt count."""
        return await self.db.fetchval(
            "UPDATE inbox SET attempts=attempts+1, not_before=$1, error=$2, updated_at=$3"
            " WHERE seq=$4 RETURNING attempts",
            not_before,
            error,
            now_ms(),
            seq,
        )

    async def get(self, event_id: str) -> InboxEvent | None:
        row = await self.db.fetchrow(
            f"SELECT {InboxEvent._columns} FROM inbox WHERE event_id=$1", event_id
        )
        return InboxEvent(**dict(row)) if row else None

    async def counts(self) -> dict[str, int]:
        rows = await self.db.fetch("SELECT state, COUNT(*) AS n FROM inbox GROUP BY state")
        out = dict.fromkeys(STATES, 0)
        out.update({r["state"]: r["n"] for r in rows})
        return out

    async def prune(self, older_than_ms: int) -> int:
        """Forget finished events and transaction ids older than the cut-off."""
        rows = await self.db.fetch(
            "DELETE FROM inbox WHERE state IN ($1, $2) AND updated_at < $3 RETURNING seq",
            DONE,
            FAILED,
            older_than_ms,
        )
        await self.db.execute("DELETE FROM appservice_txn WHERE received_at < $1", older_than_ms)
        return len(rows)
