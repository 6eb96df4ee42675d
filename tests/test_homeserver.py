"""The appservice against a real Synapse: registration, ping, user query, pushed transactions."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from letta_appservice.db.agent import AgentRow
from tests.harness.apps import Apps
from tests.harness.config import SERVER_NAME, free_port
from tests.harness.homeserver import Homeserver
from tests.harness.synapse import fresh_localpart


async def test_bot_registers_answers_whoami_and_the_ping_round_trip_works(
    apps: Apps, homeserver: Homeserver
) -> None:
    app = await apps.start()
    assert (await app.bot_intent.whoami()).user_id == f"@letta:{SERVER_NAME}"
    assert app.link.ping_ms is not None and app.link.ping_ms >= 0
    user = await homeserver.register_user(fresh_localpart())
    profile = await user.request("GET", f"/_matrix/client/v3/profile/@letta:{SERVER_NAME}")
    assert profile["displayname"] == "Letta Bridge"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{app.config.appservice.address}/ready") as resp:
            assert resp.status == 200
            assert await resp.json() == {"ready": True, "database": True, "homeserver": True}
    await user.close()


async def test_user_query_registers_known_puppets_only(apps: Apps, homeserver: Homeserver) -> None:
    app = await apps.start()
    agent_id = "agent-0b7f5a52-1c11-4b0e-9a43-55f5d1f0c001"
    mxid = f"@agent_0b7f5a52_1c11_4b0e_9a43_55f5d1f0c001:{SERVER_NAME}"
    await app.agents.upsert(AgentRow(agent_id=agent_id, mxid=mxid, name="Helper"))
    user = await homeserver.register_user(fresh_localpart())
    room = await user.create_room(preset="private_chat")
    # Synapse asks the appservice about an unknown user in its namespace before it pushes the
    # invite to us; the appservice registers the puppet of a known agent then.
    await user.invite(room, mxid)
    for _ in range(200):
        if await _status(user.request("GET", f"/_matrix/client/v3/profile/{mxid}")) == 200:
            break
        await asyncio.sleep(0.05)
    assert await _status(user.request("GET", f"/_matrix/client/v3/profile/{mxid}")) == 200
    await user.invite(
        room, unknown := f"@agent_ffffffff_0000_4000_8000_000000000000:{SERVER_NAME}"
    )
    invite = await app_event(app, room, unknown)
    assert invite is not None  # the invite was pushed to us, after the (negative) user query
    status = await _status(user.request("GET", f"/_matrix/client/v3/profile/{unknown}"))
    assert status == 404
    await user.close()


async def app_event(app, room: str, state_key: str) -> dict | None:
    for _ in range(200):
        row = await app.db.fetchrow(
            "SELECT event_json FROM inbox WHERE room_id=$1 AND event_json LIKE $2",
            room,
            f'%"state_key":"{state_key}"%',
        )
        if row:
            return row["event_json"]
        await asyncio.sleep(0.05)
    return None


async def _status(coro) -> int:
    try:
        await coro
    except Exception as e:  # MatrixError carries the HTTP status
        return e.status  # type: ignore[attr-defined]
    return 200


async def test_pushed_events_land_in_the_inbox_exactly_once(
    database_url: str, apps: Apps, homeserver: Homeserver
) -> None:
    app = await apps.start(database_url)
    user = await homeserver.register_user(fresh_localpart())
    room = await user.create_room(preset="private_chat", invite=[app.config.bot_mxid])
    await app.bot_intent.join_room(room)
    event_id = await user.send_text(room, "hello bridge")
    # Synapse pushes the event in a transaction; it is stored before the 200.
    for _ in range(300):
        stored = await app.inbox.get(event_id)
        if stored and stored.state == "done":
            break
        await asyncio.sleep(0.05)
    assert stored is not None and stored.state == "done"
    assert stored.event["content"]["body"] == "hello bridge"
    # It came in a transaction Synapse pushed, which was recorded with it.
    pushed = "SELECT event_count FROM appservice_txn WHERE txn_id=$1"
    assert await app.db.fetchval(pushed, stored.txn_id) >= 1
    # The state store learns memberships from pushed events (no extra requests).
    second = await homeserver.register_user(fresh_localpart())
    await user.invite(room, second.mxid)
    await second.join(room)
    for _ in range(200):
        if await app.state_store.is_joined(room, second.mxid):
            break
        await asyncio.sleep(0.05)
    assert await app.state_store.is_joined(room, second.mxid)
    await second.close()
    await user.close()


async def test_unreachable_links_are_logged_clearly_and_retried(
    apps: Apps, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="letta_appservice")
    # The homeserver is not where the config says: a clear error, no crash, /ready says 503.
    lost = await apps.start(homeserver={"address": f"http://127.0.0.1:{free_port()}"}, ready=False)
    line = await _log_line(caplog, "Cannot use the homeserver at")
    assert "Check homeserver.address" in line and "Retrying in" in line
    assert lost.config.appservice.as_token not in caplog.text
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{lost.config.appservice.address}/ready") as resp:
            assert resp.status == 503 and (await resp.json())["homeserver"] is False
    await apps.stop(lost)


async def test_homeserver_that_cannot_reach_us_is_reported(
    apps: Apps, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="letta_appservice")
    # Listen somewhere other than the registration's url: the homeserver's ping fails.
    app = await apps.start(instance="lab", appservice={"port": free_port()}, ready=False)
    line = await _log_line(caplog, "The homeserver cannot reach this appservice at")
    assert "appservice.address" in line and "Retrying in" in line
    assert app.link.homeserver_ok and app.link.ping_ms is None
    assert app.config.appservice.hs_token not in caplog.text
    await apps.stop(app)


async def _log_line(caplog: pytest.LogCaptureFixture, start: str) -> str:
    for _ in range(1200):  # mautrix retries a refused connection for a while first
        for record in caplog.records:
            if record.getMessage().startswith(start):
                return record.getMessage()
        await asyncio.sleep(0.05)
    raise AssertionError(f"no log line starting with {start!r}")
