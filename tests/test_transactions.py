"""The transaction endpoint, driven over HTTP as a homeserver would, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import attrs
import pytest
import pytest_asyncio

from letta_appservice.db.database import DatabaseURL, open_database
from letta_appservice.db.inbox import InboxStore
from letta_appservice.inbox.web import WebServer
from letta_appservice.metrics import Metrics
from tests.harness.config import free_port
from tests.harness.events import message

HS_TOKEN = "hs-token-for-tests-0123456789"
MAX_BODY = 64 * 1024


@attrs.define
class Endpoint:
    url: str
    store: InboxStore
    http: aiohttp.ClientSession
    wakes: list[int]

    async def put(
        self, txn: str, body: Any, token: str | None = HS_TOKEN, how: str = "header"
    ) -> tuple[int, dict[str, Any]]:
        headers, params = {}, {}
        if token is not None and how == "header":
            headers["Authorization"] = f"Bearer {token}"
        elif token is not None:
            params["access_token"] = token
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        async with self.http.put(
            f"{self.url}/_matrix/app/v1/transactions/{txn}",
            data=data,
            headers=headers,
            params=params,
        ) as resp:
            return resp.status, await resp.json()

    async def rows(self) -> list[tuple[str, str]]:
        rows = await self.store.db.fetch("SELECT event_id, txn_id FROM inbox ORDER BY seq")
        return [(r["event_id"], r["txn_id"]) for r in rows]


@pytest_asyncio.fixture
async def endpoint(database_url: str) -> AsyncIterator[Endpoint]:
    db = await open_database(DatabaseURL.parse(database_url), in_child=False)
    store = InboxStore(db)
    wakes: list[int] = []

    async def query_user(mxid: str) -> bool:
        return mxid.startswith("@agent_")

    async def ready() -> dict[str, Any]:
        return {"database": True, "homeserver": True}

    server = WebServer(
        hs_token=HS_TOKEN,
        max_body_size=MAX_BODY,
        inbox=store,
        on_stored=lambda: wakes.append(1),
        query_user=query_user,
        ready_check=ready,
        metrics=Metrics(),
    )
    port = free_port()
    await server.start("127.0.0.1", port)
    async with aiohttp.ClientSession() as http:
        yield Endpoint(f"http://127.0.0.1:{port}", store, http, wakes)
    await server.stop()
    await db.stop()


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


@pytest.mark.parametrize(
    ("token", "status", "errcode"),
    [(None, 401, "M_UNAUTHORIZED"), ("wrong", 403, "M_FORBIDDEN"), ("", 401, "M_UNAUTHORIZED")],
)
async def test_bad_tokens_are_refused(
    endpoint: Endpoint, token: str | None, status: int, errcode: str
) -> None:
    got_status, body = await endpoint.put("t", {"events": [message(1)]}, token=token)
    assert (got_status, body["errcode"]) == (status, errcode)
    assert await endpoint.rows() == []


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
    assert (status, resp["errcode"]) == (400, errcode)
    # A malformed body records nothing, not even the txn id: a corrected retry still works.
    assert (await endpoint.put("bad", {"events": [message(1)]}))[0] == 200
    assert await endpoint.rows() == [("$event1", "bad")]


async def test_oversized_body_gets_413(endpoint: Endpoint) -> None:
    big = message(1)
    big["content"]["body"] = "x" * (MAX_BODY + 10)
    status, resp = await endpoint.put("big", {"events": [big]})
    assert (status, resp["errcode"]) == (413, "M_TOO_LARGE")
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
        assert r.status == 200
    async with http.get(f"{url}/_matrix/app/v1/users/@bob:test.local", headers=auth) as r:
        assert (r.status, (await r.json())["errcode"]) == (404, "M_NOT_FOUND")
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
    assert (status, resp["errcode"]) == (500, "M_UNKNOWN")
    assert await endpoint.rows() == []
