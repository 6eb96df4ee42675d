"""The inbox under faults and hostile input, on SQLite and PostgreSQL: nothing lost (a reused
txnId), nothing blocked (unstorable events, deep JSON, odd tokens, a busy lane, a database
error while recording an outcome), and a metrics page that does not count the table."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from mautrix.types import Member, Membership, RoomID, UserID

from letta_appservice.db.database import DatabaseURL, open_database
from letta_appservice.db.inbox import InboxEvent, InboxStore
from letta_appservice.inbox.worker import InboxWorker, Retry
from letta_appservice.matrix.state_store import StateStore
from tests.harness.endpoint import Endpoint, endpoint_on
from tests.harness.observe import eventually, spy_queries


def event(n: int | str, room: str = "!room:test.local", **over: Any) -> dict[str, Any]:
    return {
        "event_id": f"$e{n}",
        "room_id": room,
        "sender": "@alice:test.local",
        "type": "m.room.message",
        "origin_server_ts": 1700000000000,
        "content": {"msgtype": "m.text", "body": f"hello {n}"},
        **over,
    }


@pytest_asyncio.fixture
async def endpoint(database_url: str) -> AsyncIterator[Endpoint]:
    # A body limit past the default 64 KiB: deeply nested JSON must reach the parser.
    async with endpoint_on(database_url, max_body_size=1024 * 1024) as e:
        yield e


# --- 1. transaction ids reused after a homeserver restart ---------------------------------------


async def test_a_txn_id_reused_with_other_events_stores_them(endpoint: Endpoint) -> None:
    assert (await endpoint.put("1", {"events": [event(1), event(2)]}))[0] == 200
    # Synapse on SQLite counts txnIds from 1 again after a restart: new events, same id.
    assert (await endpoint.put("1", {"events": [event(3), event(4)]}))[0] == 200
    assert await endpoint.event_ids() == ["$e1", "$e2", "$e3", "$e4"]
    assert len(endpoint.wakes) == 2
    # A true redelivery of the last batch is still answered without work.
    assert (await endpoint.put("1", {"events": [event(3), event(4)]}))[0] == 200
    assert len(endpoint.wakes) == 2
    # A reused id whose batch overlaps stored events: the new one is kept, the old not twice.
    assert (await endpoint.put("1", {"events": [event(1), event(5)]}))[0] == 200
    assert await endpoint.event_ids() == ["$e1", "$e2", "$e3", "$e4", "$e5"]


async def test_a_txn_recorded_before_the_digest_existed_is_not_trusted(
    endpoint: Endpoint,
) -> None:
    await endpoint.store.db.execute(
        "INSERT INTO appservice_txn (txn_id, received_at, event_count) VALUES ('old', 0, 1)"
    )
    assert (await endpoint.put("old", {"events": [event(1)]}))[0] == 200
    assert await endpoint.event_ids() == ["$e1"]


# --- 4. events that cannot be stored are set aside alone ----------------------------------------


UNSTORABLE = {
    "nul_event_id": event("nul", event_id="$a\u0000b"),
    "nul_room": event("r", room="!a\u0000b:test.local"),
    "nul_sender": event("s", sender="@a\u0000b:test.local"),
    "nul_type": event("t", type="m.room.message\u0000"),
    "surrogate_sender": event("u", sender="@\ud800:test.local"),
    "long_event_id": event("l", event_id="$" + "x" * 3000),
    "missing_sender": {k: v for k, v in event("m").items() if k != "sender"},
    "numeric_room": event("n", room_id=5),
    "content_not_object": event("c", content="text"),
    "state_key_not_string": event("k", state_key=7),
    "not_an_object": ["junk"],
}


@pytest.mark.parametrize("case", sorted(UNSTORABLE))
async def test_an_unstorable_event_is_set_aside_and_the_rest_stored(
    endpoint: Endpoint, case: str
) -> None:
    body = {"events": [event(1), UNSTORABLE[case], event(2)]}
    assert (await endpoint.put("t", body))[0] == 200
    assert await endpoint.event_ids() == ["$e1", "$e2"]


async def test_ids_up_to_the_specs_255_bytes_are_stored(endpoint: Endpoint) -> None:
    at_limit = "$" + "\u00e9" * 127  # 255 bytes in UTF-8, 128 characters
    over = "$" + "x" * 255  # 256 bytes
    body = {"events": [event(1, event_id=at_limit), event(2, event_id=over)]}
    assert (await endpoint.put("t", body))[0] == 200
    assert await endpoint.event_ids() == [at_limit]


async def test_nul_in_content_and_txn_id_is_stored(endpoint: Endpoint) -> None:
    odd = event(1, content={"msgtype": "m.text", "body": "a\u0000b \ud83d"})
    # %00 in the path arrives as a NUL in the txnId.
    assert (await endpoint.put("t%00x", {"events": [odd]}))[0] == 200
    assert (await endpoint.put("t%00x", {"events": [odd]}))[0] == 200
    stored = await endpoint.store.get("$e1")
    assert stored is not None and stored.event["content"]["body"] == "a\u0000b \ud83d"
    assert len(endpoint.wakes) == 1


async def test_txn_ids_the_databases_cannot_hold_are_told_apart(store: InboxStore) -> None:
    # Too long, or a lone surrogate (not UTF-8): each kept under a digest of its own, so a
    # redelivery is still known as one.
    long_a, long_b, surrogate = "a" * 300, "b" * 300, "t\ud800x"
    for n, txn in enumerate((long_a, long_b, surrogate)):
        assert (await store.store_transaction(txn, [event(n)])).new_events == 1
    for n, txn in enumerate((long_a, long_b, surrogate)):
        assert (await store.store_transaction(txn, [event(n)])).duplicate_txn


async def test_an_event_too_deep_to_encode_is_set_aside_alone(store: InboxStore) -> None:
    # Parsed just under Python's recursion limit, it can be just over it to encode again.
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    result = await store.store_transaction(
        "t", [event(1), event(2, content={"d": deep}), event(3)]
    )
    assert (result.new_events, result.rejected) == (2, 1)
    stored = await store.db.fetch("SELECT event_id FROM inbox ORDER BY seq")
    assert [r["event_id"] for r in stored] == ["$e1", "$e3"]


# --- 5. hostile bodies and tokens get 4xx, never a 500 retried forever --------------------------


async def test_deeply_nested_json_is_refused_not_failed(endpoint: Endpoint) -> None:
    deep = '{"events": [' + "[" * 100_000 + "]" * 100_000 + "]}"
    status, body = await endpoint.put("deep", deep)
    assert (status, body) == (400, {"errcode": "M_BAD_JSON", "error": "Body is nested too deeply"})
    # One event with deep content: the body cannot be parsed, so it is refused as a whole.
    inner = json.dumps(event(1, content={"deep": "__"})).replace('"__"', "[" * 3000 + "]" * 3000)
    status, body = await endpoint.put("deep2", '{"events": [' + inner + "]}")
    assert (status, body["errcode"]) == (400, "M_BAD_JSON")
    assert (await endpoint.put("deep", {"events": [event(2)]}))[0] == 200


@pytest.mark.parametrize(
    "request_line",
    [
        b"PUT /_matrix/app/v1/transactions/t HTTP/1.1\r\nAuthorization: Bearer \xff\xfe\xfd\r\n",
        b"PUT /_matrix/app/v1/transactions/t?access_token=%ff%fe HTTP/1.1\r\n",
        b"PUT /_matrix/app/v1/transactions/t HTTP/1.1\r\nAuthorization: Bearer caf\xc3\xa9\r\n",
    ],
)
async def test_a_token_that_is_not_utf8_is_forbidden(
    endpoint: Endpoint, request_line: bytes
) -> None:
    body = json.dumps({"events": [event(1)]}).encode()
    request = request_line + b"Host: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(
        body
    )
    status, resp = await endpoint.raw(request + body)
    assert (status, resp["errcode"]) == (403, "M_FORBIDDEN")
    assert await endpoint.event_ids() == []


# --- 7. a busy lane cannot starve the others ----------------------------------------------------


async def test_a_busy_lane_does_not_starve_an_idle_one(store: InboxStore) -> None:
    busy = [event(f"busy{i}", room="!busy:test.local") for i in range(60)]
    for start in range(0, len(busy), 20):
        await store.store_transaction(f"b{start}", busy[start : start + 20])
    await store.store_transaction("idle", [event("idle", room="!idle:test.local")])
    release = asyncio.Event()
    handled: list[str] = []

    async def handler(ev: InboxEvent) -> None:
        if ev.room_id == "!busy:test.local":
            await release.wait()  # one slow agent
        handled.append(ev.event_id)

    # Small limits stand in for the defaults (2,000 claimed) without storing thousands.
    worker = InboxWorker(store, handler, claim_batch=5, max_claimed=20)
    await worker.start()
    try:
        await eventually(lambda: asyncio.sleep(0, "$eidle" in handled))
        release.set()
        await worker.wait_idle(timeout=60)
    finally:
        await worker.stop()
    assert [e for e in handled if "busy" in e] == [e["event_id"] for e in busy]
    assert (await store.counts())["done"] == 61


async def test_parked_events_survive_a_restart_in_order(store: InboxStore) -> None:
    await store.store_transaction("t", [event(i, room="!busy:test.local") for i in range(30)])
    started = asyncio.Event()

    async def stuck(_ev: InboxEvent) -> None:
        started.set()
        await asyncio.sleep(3600)

    first = InboxWorker(store, stuck, claim_batch=5, max_claimed=20, lane_cap=4)
    await first.start()
    await asyncio.wait_for(started.wait(), 30)
    await eventually(
        lambda: store.db.fetchval("SELECT COUNT(*) = 26 FROM inbox WHERE lane IS NOT NULL")
    )
    await first.stop()
    handled: list[str] = []

    async def handler(ev: InboxEvent) -> None:
        handled.append(ev.event_id)

    second = InboxWorker(store, handler, claim_batch=5, max_claimed=20, lane_cap=4)
    await second.start()
    try:
        await second.wait_idle(timeout=60)
    finally:
        await second.stop()
    assert handled == [f"$e{i}" for i in range(30)]


# --- 9. a lane survives errors in its own bookkeeping -------------------------------------------


async def test_a_database_error_while_recording_an_outcome_does_not_kill_the_lane(
    store: InboxStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.store_transaction("t", [event(1), event(2), event(3)])
    failures = {"finish": 2, "postpone": 2}
    for name in failures:
        real = getattr(store, name)

        async def flaky(*args: Any, _real: Any = real, _name: str = name) -> Any:
            if failures[_name]:
                failures[_name] -= 1
                raise ConnectionError("database went away")
            return await _real(*args)

        monkeypatch.setattr(store, name, flaky)
    calls: list[str] = []

    async def handler(ev: InboxEvent) -> None:
        calls.append(ev.event_id)
        if ev.event_id == "$e1":
            raise ValueError("bug")
        if ev.event_id == "$e2" and calls.count("$e2") == 1:
            raise Retry(0.01, "busy")

    worker = InboxWorker(store, handler)
    await worker.start()
    try:
        await worker.wait_idle(timeout=60)
    finally:
        await worker.stop()
    rows = await store.db.fetch("SELECT event_id, state FROM inbox ORDER BY seq")
    assert [(r["event_id"], r["state"]) for r in rows] == [
        ("$e1", "failed"),
        ("$e2", "done"),
        ("$e3", "done"),
    ]
    assert failures == {"finish": 0, "postpone": 0}


# --- 16. the metrics page does not count the table ----------------------------------------------


async def test_metrics_scrapes_cost_no_inbox_query(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    await endpoint.put("a", {"events": [event(1), event(2), event(3)]})
    worker = InboxWorker(endpoint.store, lambda _ev: asyncio.sleep(0))
    await worker.start()
    await worker.wait_idle()
    await worker.stop()
    await endpoint.put("b", {"events": [event(4)]})
    queries = spy_queries(endpoint.store.db, monkeypatch)
    for _ in range(5):
        async with endpoint.http.get(f"{endpoint.url}/metrics") as r:
            text = await r.text()
    assert queries == []
    assert 'letta_appservice_inbox_events{state="done"} 3.0' in text
    assert 'letta_appservice_inbox_events{state="pending"} 1.0' in text
    assert 'letta_appservice_inbox_events{state="processing"} 0.0' in text


async def test_a_member_profile_the_database_cannot_hold_is_kept_without_it(
    database_url: str,
) -> None:
    """Found by the fault suite on PostgreSQL: a display name with a NUL (or a number) failed
    the member event, and every later lookup of that person's name, so they were never
    answered; a user id with a NUL failed its member event."""
    db = await open_database(DatabaseURL.parse(database_url), in_child=False)
    try:
        states = StateStore(db)
        await StateStore.upgrade_table.upgrade(db)
        room, alice = RoomID("!r:test.local"), UserID("@alice:test.local")
        for name in ("Al\x00ice", 42):
            member = Member(Membership.JOIN, displayname=name)  # type: ignore[arg-type]
            await states.set_member(room, alice, member)
            assert await states.get_member(room, alice) == Member(Membership.JOIN)
        nul = UserID("@nul\x00:test.local")
        await states.set_member(room, nul, Member(Membership.JOIN))
        assert await states.get_member(room, nul) is None
        await states.set_members(room, {alice: Member(Membership.JOIN, displayname="A\x00")})
        assert await states.get_members(room) == [alice]
    finally:
        await db.stop()
