"""The real App, started against a stub homeserver and the fake Letta on SQLite: what the
running process does beyond any one flow."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from letta_appservice.app import App
from letta_appservice.reconcile.link import HomeserverLink
from tests.harness.config import INSTANCES, SERVER_NAME, make_config
from tests.harness.events import message
from tests.harness.fake_letta import FakeLetta
from tests.harness.observe import eventually
from tests.harness.stub_homeserver import StubHomeserver

INSTANCE = INSTANCES["letta"]


@contextlib.asynccontextmanager
async def running_app(tmp_path: Path) -> AsyncIterator[App]:
    hs, letta = StubHomeserver(SERVER_NAME), FakeLetta()
    await hs.start()
    await letta.start()
    config = make_config(hs.url, f"sqlite:{tmp_path}/bridge.db", letta.url)
    app = App(config)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()
        await letta.stop()
        await hs.stop()


async def test_the_ack_does_not_wait_for_the_bridges_other_database_work(
    tmp_path: Path,
) -> None:
    """On SQLite the inbox has its own connection: the homeserver's 200 never queues behind a
    turn's bookkeeping or the state store on the bridge's shared one."""
    async with running_app(tmp_path) as app:
        await app.wait_ready(timeout=60)
        url = f"http://127.0.0.1:{app.config.appservice.port}/_matrix/app/v1/transactions/t1"
        headers = {"Authorization": f"Bearer {INSTANCE.hs_token}"}
        body = json.dumps({"events": [message(1)]})
        async with aiohttp.ClientSession() as http:
            # A long statement of the bridge's own holds the shared connection meanwhile.
            async with app.db.acquire():
                put = http.put(url, data=body, headers=headers)
                async with await asyncio.wait_for(put, timeout=30) as resp:
                    assert resp.status == 200
        stored = await app.inbox.get("$event1")
        assert stored is not None and stored.txn_id == "t1"


async def test_a_background_task_that_fails_is_logged_when_it_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The homeserver link failing unexpectedly once meant a bridge that never became ready
    and said nothing until it was stopped."""

    async def broken(_link: HomeserverLink) -> None:
        raise RuntimeError("link broke")

    monkeypatch.setattr(HomeserverLink, "run", broken)
    caplog.set_level(logging.ERROR, logger="letta_appservice")

    def logged() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "Background task" in r.getMessage()]

    async with running_app(tmp_path):
        await eventually(lambda: asyncio.sleep(0, bool(logged())))
        [record] = logged()
        assert record.getMessage() == "Background task bootstrap stopped"
        assert record.exc_info and "link broke" in str(record.exc_info[1])
