"""The transaction endpoint (WebServer) on a real inbox, driven over HTTP as a homeserver
drives it: for the transaction and inbox tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import attrs

from letta_appservice.db.database import DatabaseURL, open_database
from letta_appservice.db.inbox import InboxStore
from letta_appservice.inbox.web import WebServer
from letta_appservice.metrics import Metrics
from tests.harness.config import free_port

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

    async def raw(self, request: bytes) -> tuple[int, dict[str, Any]]:
        """A request written byte by byte (headers aiohttp's client would refuse to send)."""
        host, port = self.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request)
        await writer.drain()
        response = await reader.read()
        writer.close()
        head, _, body = response.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)

    async def event_ids(self) -> list[str]:
        return [event_id for event_id, _txn in await self.rows()]

    async def rows(self) -> list[tuple[str, str]]:
        rows = await self.store.db.fetch("SELECT event_id, txn_id FROM inbox ORDER BY seq")
        return [(r["event_id"], r["txn_id"]) for r in rows]


@contextlib.asynccontextmanager
async def endpoint_on(database_url: str, **overrides: Any) -> AsyncIterator[Endpoint]:
    """``overrides``: WebServer arguments in place of the defaults (query_user, ready_check,
    max_body_size, refresh_gauges)."""
    db = await open_database(DatabaseURL.parse(database_url), in_child=False)
    store = InboxStore(db)
    wakes: list[int] = []

    async def query_user(mxid: str) -> bool:
        return mxid.startswith("@agent_")

    async def ready() -> dict[str, Any]:
        return {"database": True, "homeserver": True}

    options: dict[str, Any] = {
        "query_user": query_user,
        "ready_check": ready,
        "max_body_size": MAX_BODY,
        **overrides,
    }
    server = WebServer(
        hs_token=HS_TOKEN,
        inbox=store,
        on_stored=lambda: wakes.append(1),
        metrics=Metrics(),
        **options,
    )
    port = free_port()
    await server.start("127.0.0.1", port)
    try:
        async with aiohttp.ClientSession() as http:
            yield Endpoint(f"http://127.0.0.1:{port}", store, http, wakes)
    finally:
        await server.stop()
        await db.stop()
