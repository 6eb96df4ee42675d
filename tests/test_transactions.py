"""The transaction endpoint, driven over HTTP as a homeserver would, on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.harness.endpoint import HS_TOKEN, MAX_BODY, Endpoint, endpoint_on
from tests.harness.events import message


async def test_events_are_stored_before_the_ack(endpoint: Endpoint) -> None:
    status, body = await endpoint.put("t1", {"events": [message(1), message(2)]})
    assert (status, body) == (200, {})
    assert await endpoint.rows() == [("$event1", "t1"), ("$event2", "t1")]
    stored = await endpoint.store.get("$event2")
    assert stored is not None and stored.state == "pending"
    assert stored.event["content"]["body"] == "hello 2"
    assert endpoint.wakes == [1]


async def test_redelivered_transaction_is_stored_once(endpoint: Endpoint) -> None:
    for _ in range(3):
        assert (await endpoint.put("same", {"events": [message(1)]}))[0] == 200
        async with endpoint.http.get(f"{endpoint.url}/metrics") as r:  # one event waiting
            assert 'letta_appservice_inbox_events{state="pending"} 1.0' in await r.text()
    assert await endpoint.rows() == [("$event1", "same")]
    assert len(endpoint.wakes) == 1  # the worker is not woken for nothing


async def test_rebatched_events_are_stored_once(endpoint: Endpoint) -> None:
    await endpoint.put("a", {"events": [message(1), message(2)]})
    # The homeserver retries with a new batch: one old event, one new.
    await endpoint.put("b", {"events": [message(2), message(3)]})
    assert await endpoint.rows() == [("$event1", "a"), ("$event2", "a"), ("$event3", "b")]


async def test_token_in_query_string_is_accepted(endpoint: Endpoint) -> None:
    assert (await endpoint.put("q", {"events": [message(1)]}, how="query"))[0] == 200
    assert await endpoint.rows() == [("$event1", "q")]


NEAR_MISSES = [
    HS_TOKEN[:1],  # a prefix, down to one character
    HS_TOKEN[:-1],
    HS_TOKEN + "0",  # the token and more
    HS_TOKEN.upper(),
    f" {HS_TOKEN}",
    HS_TOKEN[::-1],
    "wrong",
]


@pytest.mark.parametrize(
    ("token", "status", "errcode"),
    [(None, 401, "M_UNAUTHORIZED"), ("", 401, "M_UNAUTHORIZED")]
    + [(near, 403, "M_FORBIDDEN") for near in NEAR_MISSES],
)
@pytest.mark.parametrize("how", ["header", "query"])
async def test_bad_tokens_are_refused(
    endpoint: Endpoint, token: str | None, status: int, errcode: str, how: str
) -> None:
    got_status, body = await endpoint.put("t", {"events": [message(1)]}, token=token, how=how)
    error = "Missing hs_token" if status == 401 else "Invalid hs_token"
    assert (got_status, body) == (status, {"errcode": errcode, "error": error})
    assert await endpoint.rows() == []
    assert endpoint.wakes == []


async def test_every_endpoint_wants_the_whole_token(endpoint: Endpoint) -> None:
    url, near = endpoint.url, HS_TOKEN[:1]
    for how in ("Bearer", "bearer", "Basic"):  # only "Bearer <token>" carries it
        headers = {"Authorization": f"{how} {near if how == 'Bearer' else HS_TOKEN}"}
        async with endpoint.http.post(f"{url}/_matrix/app/v1/ping", headers=headers) as r:
            assert r.status in (401, 403)
        async with endpoint.http.get(
            f"{url}/_matrix/app/v1/users/@agent_1:t", headers=headers
        ) as r:
            assert r.status in (401, 403)
        async with endpoint.http.get(f"{url}/_matrix/app/v1/rooms/%23a:t", headers=headers) as r:
            assert r.status in (401, 403)


async def test_a_rebatched_event_already_handled_is_not_queued_again(endpoint: Endpoint) -> None:
    await endpoint.put("a", {"events": [message(1), message(2)]})
    [first, second] = await endpoint.store.claim(10)
    await endpoint.store.finish(first.seq)
    await endpoint.store.finish(second.seq, "failed", "gave up")
    # The homeserver retries under a new txnId with the handled events and a new one.
    assert (await endpoint.put("b", {"events": [message(2), message(1), message(3)]}))[0] == 200
    handled = [await endpoint.store.get(f"$event{n}") for n in (1, 2)]
    assert [(e.state, e.txn_id, e.error) for e in handled if e] == [
        ("done", "a", None),
        ("failed", "a", "gave up"),
    ]
    assert [e.event_id for e in await endpoint.store.claim(10)] == ["$event3"]
    counts = await endpoint.store.counts()
    assert (counts["pending"], counts["processing"], counts["done"]) == (0, 1, 1)


@pytest.mark.parametrize(
    ("body", "errcode"),
    [
        (b"{not json", "M_NOT_JSON"),
        (b"\xff\xfe", "M_NOT_JSON"),
        (b"", "M_NOT_JSON"),
        (b"[]", "M_BAD_JSON"),
        ({"events": "nope"}, "M_BAD_JSON"),
        ({"no_events": []}, "M_BAD_JSON"),
    ],
)
async def test_malformed_bodies_get_bad_json(endpoint: Endpoint, body: Any, errcode: str) -> None:
    status, resp = await endpoint.put("bad", body)
    error = (
        "Body is not valid JSON"
        if errcode == "M_NOT_JSON"
        else ("Body must be an object with an events list")
    )
    assert (status, resp) == (400, {"errcode": errcode, "error": error})
    # A malformed body records nothing, not even the txn id: a corrected retry still works.
    assert (await endpoint.put("bad", {"events": [message(1)]}))[0] == 200
    assert await endpoint.rows() == [("$event1", "bad")]


async def test_oversized_body_gets_413(endpoint: Endpoint) -> None:
    big = message(1)
    big["content"]["body"] = "x" * (MAX_BODY + 10)
    status, resp = await endpoint.put("big", {"events": [big]})
    assert (status, resp) == (
        413,
        {"errcode": "M_TOO_LARGE", "error": "Transaction body too large"},
    )
    assert await endpoint.rows() == []
    assert (await endpoint.put("after", {"events": [message(2)]}))[0] == 200


async def test_unknown_fields_and_malformed_events_do_not_block_the_rest(
    endpoint: Endpoint,
) -> None:
    body = {
        "events": [message(1), {"type": "m.room.message"}, "junk", message(2)],
        "ephemeral": [{"type": "m.typing", "content": {}}],
        "org.example.future_field": {"x": 1},
    }
    assert (await endpoint.put("mixed", body))[0] == 200
    assert await endpoint.rows() == [("$event1", "mixed"), ("$event2", "mixed")]


async def test_empty_transaction_is_fine(endpoint: Endpoint) -> None:
    assert (await endpoint.put("empty", {"events": []}))[0] == 200
    assert await endpoint.rows() == []


async def test_ping_user_query_and_operator_endpoints(endpoint: Endpoint) -> None:
    auth = {"Authorization": f"Bearer {HS_TOKEN}"}
    http, url = endpoint.http, endpoint.url
    async with http.post(f"{url}/_matrix/app/v1/ping", json={"transaction_id": "x"}) as r:
        assert r.status == 401
    async with http.post(f"{url}/_matrix/app/v1/ping", json={}, headers=auth) as r:
        assert (r.status, await r.json()) == (200, {})
    async with http.get(f"{url}/_matrix/app/v1/users/@agent_1:test.local", headers=auth) as r:
        assert (r.status, await r.json()) == (200, {})
    async with http.get(f"{url}/_matrix/app/v1/users/@bob:test.local", headers=auth) as r:
        assert (r.status, await r.json()) == (
            404, {"errcode": "M_NOT_FOUND", "error": "No such user"}
        )  # fmt: skip
    async with http.get(f"{url}/_matrix/app/v1/users/@agent_1:test.local") as r:
        assert r.status == 401
    async with http.get(f"{url}/_matrix/app/v1/unknown", headers=auth) as r:
        assert (r.status, (await r.json())["errcode"]) == (404, "M_UNRECOGNIZED")
    async with http.get(f"{url}/health") as r:
        assert (r.status, await r.json()) == (200, {"status": "ok"})
    async with http.get(f"{url}/ready") as r:
        assert r.status == 200 and (await r.json())["ready"] is True
    await endpoint.put("m", {"events": [message(1), message(2)]})
    await endpoint.put("m", {"events": [message(1), message(2)]})
    async with http.get(f"{url}/metrics") as r:
        text = await r.text()
    assert 'letta_appservice_transactions_total{result="stored"} 1.0' in text
    assert 'letta_appservice_transactions_total{result="duplicate"} 1.0' in text
    assert 'letta_appservice_events_total{result="new"} 2.0' in text
    assert 'letta_appservice_inbox_events{state="pending"} 2.0' in text


async def test_a_database_failure_answers_500_so_the_homeserver_retries(
    endpoint: Endpoint,
) -> None:
    await endpoint.store.db.execute("DROP TABLE appservice_txn")
    status, resp = await endpoint.put("t", {"events": [message(1)]})
    assert (status, resp) == (
        500, {"errcode": "M_UNKNOWN", "error": "Could not store the transaction"}
    )  # fmt: skip
    assert await endpoint.rows() == []


async def test_a_transaction_that_fails_part_way_is_stored_whole_when_retried(
    endpoint: Endpoint,
) -> None:
    # The database refuses the events after it recorded the txnId (a constraint of its own
    # that two of them break): nothing of the transaction may stay, or the retry is lost.
    await endpoint.store.db.execute("CREATE UNIQUE INDEX one_per_room ON inbox (room_id)")
    body = {"events": [message(1), message(2)]}
    assert (await endpoint.put("t", body))[0] == 500
    await endpoint.store.db.execute("DROP INDEX one_per_room")
    assert await endpoint.put("t", body) == (200, {})  # the homeserver's retry
    assert await endpoint.rows() == [("$event1", "t"), ("$event2", "t")]
    assert endpoint.wakes == [1]


async def test_failing_checks_answer_as_a_matrix_server_and_an_operator_expect(
    sqlite_url: str,
) -> None:
    async def broken_query(_mxid: str) -> bool:
        raise RuntimeError("database gone")

    async def not_ready() -> dict[str, Any]:
        return {"database": True, "homeserver": "unreachable"}

    refreshed: list[int] = []

    async def broken_gauges() -> None:
        refreshed.append(1)
        raise RuntimeError("no gauges")

    auth = {"Authorization": f"Bearer {HS_TOKEN}"}
    async with endpoint_on(
        sqlite_url, query_user=broken_query, ready_check=not_ready, refresh_gauges=broken_gauges
    ) as e:
        async with e.http.get(f"{e.url}/_matrix/app/v1/users/@agent_1:t", headers=auth) as r:
            assert (r.status, await r.json()) == (
                500, {"errcode": "M_UNKNOWN", "error": "User query failed"}
            )  # fmt: skip
        async with e.http.get(f"{e.url}/_matrix/app/v1/rooms/%23agent_1:t", headers=auth) as r:
            assert (r.status, await r.json()) == (
                404, {"errcode": "M_NOT_FOUND", "error": "No such room alias"}
            )  # fmt: skip
        async with e.http.get(f"{e.url}/ready") as r:
            body = await r.json()
            assert r.status == 503 and body == {
                "ready": False, "database": True, "homeserver": "unreachable"
            }  # fmt: skip
        async with e.http.get(f"{e.url}/metrics") as r:  # the page still renders
            assert r.status == 200 and "letta_appservice_inbox_events" in await r.text()
        assert refreshed == [1]
        async with e.http.delete(f"{e.url}/_matrix/app/v1/transactions/t", headers=auth) as r:
            assert (r.status, (await r.json())["errcode"]) == (405, "M_UNRECOGNIZED")
        # Homeservers before the v1 paths push to /transactions/{txnId}.
        async with e.http.put(
            f"{e.url}/transactions/old", json={"events": [message(1)]}, headers=auth
        ) as r:
            assert r.status == 200
        assert await e.rows() == [("$event1", "old")]
        await e.store.db.execute("DROP TABLE inbox")  # counts fail: the page still renders
        async with e.http.get(f"{e.url}/metrics") as r:
            assert r.status == 200


async def test_every_outcome_is_counted(endpoint: Endpoint) -> None:
    big = message(9)
    big["content"]["body"] = "x" * (MAX_BODY + 10)
    await endpoint.put("denied", {"events": [message(1)]}, token="wrong")
    await endpoint.put("big", {"events": [big]})
    await endpoint.put("ok", {"events": [message(1), {"type": "junk"}]})
    await endpoint.put("ok2", {"events": [message(1), message(2)]})
    async with endpoint.http.get(f"{endpoint.url}/metrics") as r:
        text = await r.text()
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    for line in (
        'letta_appservice_transactions_total{result="denied"} 1.0',
        'letta_appservice_transactions_total{result="too_large"} 1.0',
        'letta_appservice_transactions_total{result="stored"} 2.0',
        'letta_appservice_events_total{result="new"} 2.0',
        'letta_appservice_events_total{result="duplicate"} 1.0',
        'letta_appservice_events_total{result="rejected"} 1.0',  # the junk event set aside
    ):
        assert line in text
    await endpoint.store.db.execute("DROP TABLE appservice_txn")
    await endpoint.put("broken", {"events": [message(3)]})
    async with endpoint.http.get(f"{endpoint.url}/metrics") as r:
        assert 'letta_appservice_transactions_total{result="error"} 1.0' in await r.text()


async def test_metrics_answer_when_the_inbox_cannot_be_counted_and_log_no_error(
    endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    await endpoint.put("t", {"events": [message(1)]})
    await endpoint.store.db.execute("DROP TABLE inbox")  # before the first count
    async with endpoint.http.get(f"{endpoint.url}/metrics") as r:
        assert r.status == 200
        assert 'letta_appservice_transactions_total{result="stored"} 1.0' in await r.text()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_an_event_the_store_sets_aside_is_counted_as_rejected(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An event parsed just under Python's recursion limit can be just over it to encode again:
    # made so here, as the parse leaves it to the store.
    real = endpoint.store.store_transaction

    async def deeper(txn_id: str, events: list[dict[str, Any]]) -> Any:
        deep: list[object] = []
        for _ in range(100_000):
            deep = [deep]
        events[1]["content"] = {"d": deep}
        return await real(txn_id, events)

    monkeypatch.setattr(endpoint.store, "store_transaction", deeper)
    assert (await endpoint.put("t", {"events": [message(1), message(2)]}))[0] == 200
    assert await endpoint.event_ids() == ["$event1"]
    async with endpoint.http.get(f"{endpoint.url}/metrics") as r:
        text = await r.text()
    assert 'letta_appservice_events_total{result="rejected"} 1.0' in text
    assert 'letta_appservice_events_total{result="duplicate"} 0.0' in text
