"""The inbox table: pushed events stored before the ack, then worked off in order."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import attrs
from mautrix.types import Event
from mautrix.types.util.serializable import SerializerError
from mautrix.util.async_db import Database, Scheme

from .database import now_ms
from .state_counts import StateCounts

log = logging.getLogger("letta_appservice.inbox")

T = TypeVar("T")
_PARAM = re.compile(r"\$(\d+)")
PENDING, PROCESSING, DONE, FAILED = "pending", "processing", "done", "failed"
STATES = (PENDING, PROCESSING, DONE, FAILED)
_CHUNK = 100  # events per INSERT statement (8 parameters each)
_ID_KEYS = ("event_id", "room_id", "sender", "type")
# The spec's limit for ids and event types; also keeps a row within PostgreSQL's index limit.
_MAX_ID_BYTES = 255


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

    @functools.cached_property
    def parsed(self) -> Event | None:
        """The event as mautrix's types, parsed once; None when its content does not fit the
        type it claims (a membership of 7, power levels that are not a map). Such an event
        is passed over with a log line: it is a sender's doing, not the bridge's failure."""
        try:
            return Event.deserialize(self.event)
        except SerializerError as e:
            why = repr(e.__cause__ or e)
            log.warning("%s (%.80s) is malformed, passed over: %s", self.event_id, self.event_type,
                        why)  # fmt: skip
            return None


@attrs.frozen
class StoreResult:
    duplicate_txn: bool
    new_events: int
    rejected: int = 0  # events whose JSON could not be encoded (nested too deeply)


def unstorable(event: Any) -> str | None:
    """Why ``event`` cannot go into the inbox (None: it can). An event set aside here is
    skipped alone; the rest of its transaction is stored and acknowledged. Ids must be
    strings the databases can hold: no NUL (PostgreSQL TEXT refuses it), valid UTF-8 (no lone
    surrogates), within the spec's 255 bytes. The event's JSON itself is stored escaped
    (ASCII), so NULs or odd characters in its content are fine."""
    if not isinstance(event, dict):
        return "not an object"
    for key in _ID_KEYS:
        value = event.get(key)
        if not isinstance(value, str) or not value:
            return f"{key} missing or not a string"
        if "\x00" in value:
            return f"{key} holds a NUL character"
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            return f"{key} is not valid UTF-8"
        if size > _MAX_ID_BYTES:
            return f"{key} longer than {_MAX_ID_BYTES} bytes"
    if not isinstance(event.get("content", {}), dict):
        return "content is not an object"
    if not isinstance(event.get("state_key", ""), str):
        return "state_key is not a string"
    return None


def storable_key(value: str) -> str:
    """A transaction id as stored: the homeserver's own, or a digest of one the databases
    cannot hold (NUL, invalid UTF-8, too long), so no txnId can make the store fail."""
    if "\x00" not in value:
        try:
            if len(value.encode("utf-8")) <= _MAX_ID_BYTES:
                return value
        except UnicodeEncodeError:
            pass
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return f"sha256:{digest}"


def events_digest(events: Sequence[dict[str, Any]]) -> str:
    """What a transaction carried: its event ids, in order. A txnId seen again with the same
    digest is a redelivery; with another, the homeserver reused the id (Synapse on SQLite
    counts txnIds from 1 again after a restart) and the events are new."""
    return hashlib.sha256("\n".join(e["event_id"] for e in events).encode()).hexdigest()


_TXN_SQL = (
    "INSERT INTO appservice_txn (txn_id, received_at, event_count, events_hash)"
    " VALUES ($1, $2, $3, $4) ON CONFLICT (txn_id) DO UPDATE"
    " SET received_at=excluded.received_at, event_count=excluded.event_count,"
    " events_hash=excluded.events_hash WHERE appservice_txn.events_hash IS NULL"
    " OR appservice_txn.events_hash <> excluded.events_hash RETURNING 1"
)


def _insert_sql(n: int) -> str:
    values = ", ".join(
        "(" + ", ".join(f"${i * 8 + j + 1}" for j in range(8)) + ")" for i in range(n)
    )
    return (
        "INSERT INTO inbox (event_id, room_id, sender, event_type, event_json, txn_id,"
        f" received_at, updated_at) VALUES {values} ON CONFLICT (event_id) DO NOTHING"
        " RETURNING seq"
    )


def _qmarks(sql: str) -> str:
    """$1 -> ?1, as mautrix rewrites statements for SQLite."""
    return _PARAM.sub(r"?\1", sql)


def _fetch_sync(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> list[Any]:
    return conn.execute(_qmarks(sql), args).fetchall()


def _store_sync(
    conn: sqlite3.Connection, txn_args: Sequence[Any], chunks: list[tuple[str, list[Any]]]
) -> StoreResult:
    """InboxStore._store on SQLite, in aiosqlite's thread: one transaction, one hand-over.
    IMMEDIATE takes the write lock first, waiting (busy_timeout) for the other connection."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if not conn.execute(_qmarks(_TXN_SQL), txn_args).fetchall():
            result = StoreResult(duplicate_txn=True, new_events=0)
        else:
            new = sum(len(_fetch_sync(conn, sql, args)) for sql, args in chunks)
            result = StoreResult(False, new)
        conn.execute("COMMIT")
        return result
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class InboxStore:
    """Owns the inbox and transaction tables. Keeps the number of events per state in memory,
    adjusted by each write (the worker is the only writer besides the endpoint), so the
    metrics page costs no query; ``recount()`` takes them from the table again."""

    def __init__(self, db: Database) -> None:
        self.db = db
        # The worker's own statements wait while a transaction is being stored: on SQLite's
        # single connection the homeserver's ack would otherwise queue behind them.
        self._sqlite = db.scheme == Scheme.SQLITE
        self._storing = 0
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._counts = StateCounts(STATES)

    async def store_transaction(
        self, txn_id: str, events: Sequence[dict[str, Any]]
    ) -> StoreResult:
        """Record ``txn_id`` and insert its events in ONE database transaction. Events already
        stored (a retry re-batched under a new txnId) are kept once, keyed by event_id; a
        txnId already seen is a fast path only when it carried the same event ids."""
        now = now_ms()
        txn_key = storable_key(txn_id)
        rows = []
        for ev in events:
            try:
                encoded = json.dumps(ev, separators=(",", ":"))
            except RecursionError:  # parsed just under Python's limit, encoded just over it
                log.warning("Set aside %.80r: nested too deeply to store", ev["event_id"])
                continue
            row = (ev["event_id"], ev["room_id"], ev["sender"], ev["type"], encoded)
            rows.append((*row, txn_key, now, now))
        self._storing += 1
        self._quiet.clear()
        try:
            async with self._counts.writing() as moved:
                result = await self._store(txn_key, now, rows, events_digest(events))
                moved(result.new_events, None, PENDING)
        finally:
            self._storing -= 1
            if not self._storing:
                self._quiet.set()
        return attrs.evolve(result, rejected=len(events) - len(rows))

    async def _store(
        self, txn_key: str, now: int, rows: list[tuple[Any, ...]], digest: str
    ) -> StoreResult:
        txn_args = (txn_key, now, len(rows), digest)
        # One multi-row statement per chunk: a single round trip, and RETURNING tells which
        # events were new (works on both SQLite >= 3.35 and PostgreSQL).
        chunks = [
            (_insert_sql(len(chunk)), [v for row in chunk for v in row])
            for chunk in (rows[i : i + _CHUNK] for i in range(0, len(rows), _CHUNK))
        ]
        if self._sqlite:
            return await self._on_sqlite_thread(_store_sync, txn_args, chunks)
        async with self.db.acquire() as conn, conn.transaction():
            if not await conn.fetchval(_TXN_SQL, *txn_args):
                return StoreResult(duplicate_txn=True, new_events=0)
            new = sum([len(await conn.fetch(sql, *args)) for sql, args in chunks])
        return StoreResult(False, new)

    async def _after_ingest(self) -> None:
        if self._sqlite:  # PostgreSQL has a pool: nothing to queue behind
            await self._quiet.wait()

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        if self._sqlite:
            return await self._on_sqlite_thread(_fetch_sync, sql, args)
        return await self.db.fetch(sql, *args)

    async def _on_sqlite_thread(self, work: Callable[..., T], *args: Any) -> T:
        """Run ``work(connection, *args)`` in aiosqlite's thread in ONE hand-over. Through
        aiosqlite's API every statement costs about three (execute, fetch, close), and under
        load those hand-overs, not SQLite, were what the homeserver's ack waited for."""
        async with self.db.acquire() as conn:
            aio = conn.wrapped
            return await aio._execute(work, aio._conn, *args)

    async def resume_unfinished(self) -> int:
        """After a crash or restart, events that were being worked on, or parked behind a busy
        lane, are pending again (their lanes are worked out anew)."""
        async with self._counts.writing():
            rows = await self.db.fetch(
                "UPDATE inbox SET state=$1, lane=NULL WHERE state=$2 OR lane IS NOT NULL"
                " RETURNING seq",
                PENDING,
                PROCESSING,
            )
        await self.recount()
        return len(rows)

    async def claim(self, limit: int) -> list[InboxEvent]:
        """Take up to ``limit`` pending events in arrival order and mark them processing
        (one statement, so the claim is atomic and cheap). Parked events are not taken: their
        lane takes them back itself (``unpark``)."""
        await self._after_ingest()
        async with self._counts.writing() as moved:
            rows = await self._fetch(
                f"UPDATE inbox SET state=$1, updated_at=$2 WHERE seq IN (SELECT seq FROM inbox"
                f" WHERE state=$3 AND lane IS NULL ORDER BY seq LIMIT $4)"
                f" RETURNING {InboxEvent._columns}",
                PROCESSING,
                now_ms(),
                PENDING,
                limit,
            )
            moved(len(rows), PENDING, PROCESSING)
        return sorted((InboxEvent(**dict(r)) for r in rows), key=lambda e: e.seq)

    async def park(self, lanes: dict[str, list[int]]) -> None:
        """Claimed events of busy lanes go back to waiting, in the database rather than in
        memory, marked with their lane so that only that lane takes them (in order)."""
        await self._after_ingest()
        async with self._counts.writing() as moved:
            async with self.db.acquire() as conn, conn.transaction():
                for lane, seqs in lanes.items():
                    for chunk, marks in _seq_chunks(seqs, first=3):
                        await conn.execute(
                            f"UPDATE inbox SET state=$1, lane=$2 WHERE seq IN ({marks})",
                            PENDING,
                            lane,
                            *chunk,
                        )
            moved(sum(map(len, lanes.values())), PROCESSING, PENDING)

    async def unpark(self, lane: str, limit: int) -> list[InboxEvent]:
        """The oldest ``limit`` events parked for ``lane``, claimed again."""
        await self._after_ingest()
        async with self._counts.writing() as moved:
            rows = await self._fetch(
                f"UPDATE inbox SET state=$1, lane=NULL, updated_at=$2 WHERE seq IN (SELECT seq"
                f" FROM inbox WHERE state=$3 AND lane=$4 ORDER BY seq LIMIT $5)"
                f" RETURNING {InboxEvent._columns}",
                PROCESSING,
                now_ms(),
                PENDING,
                lane,
                limit,
            )
            moved(len(rows), PENDING, PROCESSING)
        return sorted((InboxEvent(**dict(r)) for r in rows), key=lambda e: e.seq)

    async def finish_many(self, seqs: Sequence[int], state: str = DONE) -> None:
        """Mark many claimed events finished in one statement per chunk."""
        await self._after_ingest()
        for chunk, marks in _seq_chunks(seqs, first=3):
            async with self._counts.writing() as moved:
                await self._fetch(
                    f"UPDATE inbox SET state=$1, updated_at=$2 WHERE seq IN ({marks})",
                    state,
                    now_ms(),
                    *chunk,
                )
                moved(len(chunk), PROCESSING, state)

    async def finish(self, seq: int, state: str = DONE, error: str | None = None) -> None:
        async with self._counts.writing() as moved:
            await self.db.execute(
                "UPDATE inbox SET state=$1, error=$2, updated_at=$3 WHERE seq=$4",
                state,
                error,
                now_ms(),
                seq,
            )
            moved(1, PROCESSING, state)

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
        """Events per state (parked ones are pending), kept in memory after the first count."""
        return await self._counts.get(self._count_table)

    async def recount(self) -> None:
        """Count the table (a scan: at start, and after the hourly prune)."""
        await self._counts.recount(self._count_table)

    async def _count_table(self) -> dict[str, int]:
        rows = await self.db.fetch("SELECT state, COUNT(*) AS n FROM inbox GROUP BY state")
        return {r["state"]: r["n"] for r in rows}

    async def prune(self, older_than_ms: int) -> int:
        """Forget finished events and transaction ids older than the cut-off."""
        rows = await self.db.fetch(
            "DELETE FROM inbox WHERE state IN ($1, $2) AND updated_at < $3 RETURNING seq",
            DONE,
            FAILED,
            older_than_ms,
        )
        await self.db.execute("DELETE FROM appservice_txn WHERE received_at < $1", older_than_ms)
        await self.recount()
        return len(rows)


def _seq_chunks(seqs: Sequence[int], *, first: int) -> Iterator[tuple[Sequence[int], str]]:
    """``seqs`` 500 at a time, each chunk with its ``$first, …`` placeholders."""
    for start in range(0, len(seqs), 500):
        chunk = seqs[start : start + 500]
        yield chunk, ", ".join(f"${i + first}" for i in range(len(chunk)))
