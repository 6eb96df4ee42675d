"""The homeserver's ack on SQLite: it waits only for its own write, never behind the bridge's
other database work (a turn's bookkeeping, the state store) on SQLite's shared connection."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from letta_appservice.app import App
from letta_appservice.config import parse_config
from tests.harness.config import free_port
from tests.harness.events import message
from tests.harness.fake_letta import FakeLetta
from tests.harness.stub_homeserver import StubHomeserver

DOMAIN = "bridge.test"
HS_TOKEN = "ingest-hs-token-0123456789abcdef"


async def test_the_ack_does_not_wait_for_the_bridges_other_database_work(
    tmp_path: Path,
) -> None:
    hs, letta = StubHomeserver(DOMAIN), FakeLetta()
    await hs.start()
    await letta.start()
    port = free_port()
    config = parse_config(
        {
            "homeserver": {"address": hs.url, "domain": DOMAIN},
            "appservice": {
                "address": f"http://127.0.0.1:{port}",
                "hostname": "127.0.0.1",
                "port": port,
                "as_token": "ingest-as-token-0123456789abcdef",
                "hs_token": HS_TOKEN,
                "database": f"sqlite:{tmp_path}/bridge.db",
            },
            "letta": {"base_url": letta.url, "sync_interval": 3600},
            "bridge": {"permissions": {DOMAIN: "user"}},
        },
        env={},
    )
    app = App(config)
    await app.start()
    try:
        await app.wait_ready(timeout=60)
        url = f"http://127.0.0.1:{port}/_matrix/app/v1/transactions/t1"
        headers = {"Authorization": f"Bearer {HS_TOKEN}"}
        body = json.dumps({"events": [message(1)]})
        async with aiohttp.ClientSession() as http:
            # A long statement of the bridge's own holds the shared connection meanwhile.
            async with app.db.acquire():
                put = http.put(url, data=body, headers=headers)
                async with await asyncio.wait_for(put, timeout=30) as resp:
                    assert resp.status == 200
        stored = await app.inbox.get("$event1")
        assert stored is not None and stored.txn_id == "t1"
    finally:
        await app.stop()
        await letta.stop()
        await hs.stop()
