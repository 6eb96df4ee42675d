"""Issue #12 against a real Synapse and the fake Letta: a homeserver failing for a moment, an
answer part over the size limit, `cancel` while every Letta slot is busy, a streamed turn kept
alive by pings, two bridges in one room, and what `status` tells a user."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest_asyncio
from aiohttp import web

from letta_appservice.db.room import RoomStore
from tests.harness import letta_replies as lr
from tests.harness.apps import Apps
from tests.harness.config import ADMIN
from tests.harness.conversation import dm_with, enter, new_user, provision, text_of
from tests.harness.events import by, joined, reply_to
from tests.harness.fake_letta import FakeLetta
from tests.harness.homeserver import Homeserver
from tests.harness.matrix_user import MatrixUser

TIMEOUT = 60


class FlakyProxy:
    """Stands between the appservice and Synapse; fails chosen requests for a while."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults: list[list[Any]] = []  # [method, path part, times left, status]
        self.failed: list[str] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    def fail(self, method: str, path_part: str, times: int, status: int = 500) -> None:
        self.faults.append([method, path_part, times, status])

    async def start(self) -> str:
        app = web.Application(client_max_size=10 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._http = aiohttp.ClientSession(auto_decompress=False)
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        for fault in self.faults:
            if fault[2] > 0 and request.method == fault[0] and fault[1] in request.path:
                fault[2] -= 1
                self.failed.append(f"{request.method} {request.path}")
                body = {"errcode": "M_UNKNOWN", "error": "Injected failure"}
                return web.json_response(body, status=fault[3])
        assert self._http is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with self._http.request(
            request.method,
            self.upstream + request.rel_url.raw_path_qs,
            headers=headers,
            data=await request.read(),
        ) as resp:
            body = await resp.read()
            skip = {"content-length", "transfer-encoding", "content-encoding"}
            out = {k: v for k, v in resp.headers.items() if k.lower() not in skip}
            return web.Response(status=resp.status, body=body, headers=out)


@pytest_asyncio.fixture
async def proxy(homeserver: Homeserver) -> AsyncIterator[FlakyProxy]:
    server = FlakyProxy(homeserver.url)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def bot_notice(bot: str, event_id: str) -> Any:
    return reply_to(bot, event_id, "m.notice")


# --- item 2: a homeserver failing for a moment loses nothing -------------------------------------


async def test_a_homeserver_failing_for_a_moment_loses_no_invite_notice_or_reply(
    apps: Apps,
    fake_letta: FakeLetta,
    homeserver: Homeserver,
    admin_user: MatrixUser,
    proxy: FlakyProxy,
) -> None:
    app = await apps.start(homeserver={"address": proxy.url})
    [helper] = await provision(app, fake_letta, "Helper")
    await enter(app, admin_user, helper.room)
    bot = app.config.bot_mxid

    # A person's invite: the puppet's join fails twice with 500, then goes through.
    alice = await new_user(homeserver, "alice")
    proxy.fail("POST", "/join", 2)
    dm = await dm_with(alice, helper.mxid)
    assert await RoomStore(app.db).get(dm) is not None

    # A command's reply fails once: it is posted later, and the command ran once.
    proxy.fail("PUT", "/send/m.room.message/cmd-", 1)
    asked = await admin_user.send_text(helper.room, f"!letta pause {helper.fake.id}")
    reply = await admin_user.wait_for_event(helper.room, bot_notice(bot, asked), TIMEOUT)
    assert reply["content"]["body"].startswith("Paused **Helper**")

    # The paused notice fails once too, and arrives.
    proxy.fail("PUT", "/send/m.room.message/letta.", 1)
    paused = await alice.send_text(dm, "anyone?")
    notice = await alice.wait_for_event(dm, reply_to(helper.mxid, paused, "m.notice"), TIMEOUT)
    assert "is paused" in notice["content"]["body"]
    assert len(proxy.failed) == 4, proxy.failed
    await alice.close()


# --- item 3: a part over the size limit ----------------------------------------------------------


async def test_a_tool_result_of_control_characters_does_not_lose_the_answer(
    apps: Apps, fake_letta: FakeLetta, admin_user: MatrixUser
) -> None:
    app = await apps.start(bridge={"show_tools": "notice"})
    [helper] = await provision(app, fake_letta, "Helper")
    await enter(app, admin_user, helper.room)
    helper.fake.responder = lambda _a, _t: [
        lr.tool_return("\x01" * 16_000, name="fetch_page"),
        lr.assistant("Here is the summary."),
    ]
    asked = await admin_user.send_text(helper.room, "summarise that page")
    answer = await admin_user.wait_for_event(helper.room, reply_to(helper.mxid, asked), TIMEOUT)
    assert answer["content"]["body"] == "Here is the summary."
    [tool] = [
        e
        for e in admin_user.events_seen(helper.room)
        if by(helper.mxid, "m.notice")(e) and "Tool result" in e["content"]["body"]
    ]
    assert "more characters not shown" in tool["content"]["body"]


# --- item 6: cancel while every Letta slot is busy -----------------------------------------------


async def test_cancel_is_answered_while_every_letta_slot_is_busy(
    apps: Apps, fake_letta: FakeLetta, admin_user: MatrixUser
) -> None:
    app = await apps.start(letta={"max_concurrency": 2})
    slow, slower = await provision(app, fake_letta, "Slow", "Slower")
    bot = app.config.bot_mxid
    for agent in (slow, slower):
        await enter(app, admin_user, agent.room)
        agent.fake.delay = 120
        await admin_user.send_text(agent.room, "think hard")
        await fake_letta.wait_for_in_flight(agent.fake.id, timeout=TIMEOUT)
    asked = await admin_user.send_text(slow.room, f"!letta cancel {slow.fake.id}")
    reply = await admin_user.wait_for_event(slow.room, bot_notice(bot, asked), TIMEOUT)
    assert reply["content"]["body"] == "Cancelled the running request of **Slow**."
    slower.fake.delay = 0
    asked = await admin_user.send_text(slower.room, f"!letta cancel {slower.fake.id}")
    await admin_user.wait_for_event(slower.room, bot_notice(bot, asked), TIMEOUT)


# --- item 8: a streamed turn kept alive by pings -------------------------------------------------


async def test_a_streamed_turn_kept_alive_by_pings_ends_at_its_deadline(
    apps: Apps, fake_letta: FakeLetta, admin_user: MatrixUser
) -> None:
    app = await apps.start(letta={"streaming": True, "timeout": 5, "turn_deadline": 4})
    [helper] = await provision(app, fake_letta, "Helper")
    await enter(app, admin_user, helper.room)
    helper.fake.delay, fake_letta.pings = 3_600, 3_600  # a ping a second for an hour
    asked = await admin_user.send_text(helper.room, "take your time")
    notice = await admin_user.wait_for_event(
        helper.room, reply_to(helper.mxid, asked, "m.notice"), TIMEOUT
    )
    assert notice["content"]["body"].startswith("The agent did not finish within 4 s")
    [conversation] = fake_letta.conversations_of(helper.fake.id)  # the room's, streamed
    assert fake_letta.requests_to(f"/v1/conversations/{conversation}/cancel")


# --- item 10: two bridges in one room ------------------------------------------------------------


async def test_two_bridges_in_one_room_do_not_answer_each_other(
    tmp_path: Any,
    apps: Apps,
    fake_letta: FakeLetta,
    homeserver: Homeserver,
) -> None:
    lab_letta = FakeLetta()
    lab_url = await lab_letta.start()
    alice = await new_user(homeserver, "alice")
    try:
        main = await apps.start(f"sqlite:{tmp_path / 'main.db'}")
        lab = await apps.start(
            database=f"sqlite:{tmp_path / 'lab.db'}", instance="lab", letta={"base_url": lab_url}
        )
        [alpha] = await provision(main, fake_letta, "Alpha")
        [beta] = await provision(lab, lab_letta, "Beta")
        group = await alice.create_room(
            preset="private_chat", name="Both", invite=[alpha.mxid, beta.mxid]
        )
        for puppet in (alpha.mxid, beta.mxid):
            await alice.wait_for_event(group, joined(puppet), TIMEOUT)
        # Each echoes the whole text, naming the other agent: that would be a mention.
        first = await alice.send_text(group, "Alpha and Beta, say hello")
        await alice.wait_for_event(group, reply_to(alpha.mxid, first), TIMEOUT)
        await alice.wait_for_event(group, reply_to(beta.mxid, first), TIMEOUT)
        last = await alice.send_text(group, "Alpha and Beta, last one")
        await alice.wait_for_event(group, reply_to(alpha.mxid, last), TIMEOUT)
        await alice.wait_for_event(group, reply_to(beta.mxid, last), TIMEOUT)
        await asyncio.gather(main.worker.wait_idle(), lab.worker.wait_idle())
        expected = ["Alpha and Beta, say hello", "Alpha and Beta, last one"]
        assert [text_of(m) for m in fake_letta.message_log] == expected
        assert [text_of(m) for m in lab_letta.message_log] == expected
    finally:
        await alice.close()
        await lab_letta.stop()


# --- item 15: what status tells a user -----------------------------------------------------------


async def test_status_shows_users_no_internal_hosts(
    apps: Apps, homeserver: Homeserver, admin_user: MatrixUser
) -> None:
    url = "http://svc:hunter2@127.0.0.1:9"  # nothing listens on the discard port
    app = await apps.start(letta={"base_url": url})
    bot = app.config.bot_mxid
    user = await new_user(homeserver, "pat")
    replies = {}
    for person in (user, admin_user):
        room = await person.create_room(
            invite=[bot], is_direct=True, preset="trusted_private_chat"
        )
        await person.wait_for_event(room, by(bot, "m.notice"), TIMEOUT)  # the greeting
        await person.mark()
        await person.send_text(room, "status")
        reply = await person.wait_for_event(room, by(bot, "m.notice"), TIMEOUT)
        replies[person.mxid] = reply["content"]["body"]
    assert "- Letta: **unreachable** (Letta cannot be reached)" in replies[user.mxid]
    assert "127.0.0.1" not in replies[user.mxid]
    assert "127.0.0.1:9" in replies[ADMIN] and "hunter2" not in replies[ADMIN]
    await user.close()
