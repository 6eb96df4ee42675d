"""Self-test of the Synapse harness: users talk, and an appservice gets its transactions."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from tests.harness import MatrixError, MatrixUser, SynapseServer, fresh_localpart

BOT_LOCALPART = "harness_bot"


@dataclass
class Receiver:
    """Stands in for an appservice: records every pushed transaction."""

    hs_token: str
    transactions: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    bad_auth: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.hs_token}":
            self.bad_auth += 1
            return web.json_response({"errcode": "M_FORBIDDEN"}, status=403)
        self.transactions.append(await request.json())
        self.changed.set()
        return web.json_response({})

    def pushed_events(self) -> list[dict[str, Any]]:
        return [event for txn in self.transactions for event in txn.get("events", [])]

    async def wait_for_event(self, predicate: Any, timeout: float = 30) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                self.changed.clear()
                for event in self.pushed_events():
                    if predicate(event):
                        return event
                await self.changed.wait()


@dataclass
class Env:
    synapse: SynapseServer
    receiver: Receiver
    as_token: str

    @property
    def bot_mxid(self) -> str:
        return f"@{BOT_LOCALPART}:{self.synapse.server_name}"


def _write_registration(path: Path, url: str, as_token: str, hs_token: str) -> None:
    path.write_text(
        "id: harness\n"
        f"url: {url}\n"
        f"as_token: {as_token}\n"
        f"hs_token: {hs_token}\n"
        f"sender_localpart: {BOT_LOCALPART}\n"
        "rate_limited: false\n"
        "namespaces:\n"
        "  users:\n"
        "    - exclusive: true\n"
        "      regex: '^@harness_.*:test\\.local$'\n"
        "  aliases: []\n"
        "  rooms: []\n"
    )


@pytest_asyncio.fixture(scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    workdir = tmp_path_factory.mktemp("synapse")
    receiver = Receiver(hs_token=secrets.token_urlsafe(24))
    app = web.Application()
    app.router.add_put("/_matrix/app/v1/transactions/{txn}", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    as_token = secrets.token_urlsafe(24)
    registration = workdir / "registration.yaml"
    _write_registration(registration, f"http://127.0.0.1:{port}", as_token, receiver.hs_token)
    synapse = await SynapseServer.start(workdir / "hs", [registration])
    try:
        yield Env(synapse, receiver, as_token)
    finally:
        await synapse.stop()
        await runner.cleanup()


async def test_second_user_sees_message(env: Env) -> None:
    alice = await env.synapse.register_user(fresh_localpart("alice"), displayname="Alice")
    bob = await env.synapse.register_user(fresh_localpart("bob"))
    try:
        assert await alice.whoami() == alice.mxid
        room_id = await alice.create_room(name="harness", invite=[bob.mxid])
        assert await bob.wait_for_invite(room_id) == room_id
        assert await bob.join(room_id) == room_id
        event_id = await alice.send_text(room_id, "hello bob", mentions=[bob.mxid])

        seen = await bob.wait_for_event(room_id, lambda e: e["content"]["body"] == "hello bob")

        assert seen["event_id"] == event_id
        assert seen["sender"] == alice.mxid
        assert seen["content"]["m.mentions"] == {"user_ids": [bob.mxid]}
        assert [m["content"].get("body") for m in await bob.messages(room_id)][-1] == "hello bob"
        assert set(await alice.joined_members(room_id)) == {alice.mxid, bob.mxid}
    finally:
        await alice.close()
        await bob.close()


async def test_typing_state_and_errors(env: Env) -> None:
    alice = await env.synapse.register_user(fresh_localpart("alice"))
    bob = await env.synapse.register_user(fresh_localpart("bob"))
    try:
        room_id = await alice.create_room(preset="public_chat")
        await bob.join(room_id)
        await alice.set_typing(room_id)
        assert await bob.wait_for_typing(room_id, alice.mxid)

        assert await alice.get_state(room_id, "m.room.topic") is None
        await alice.send_state(room_id, "m.room.topic", "", {"topic": "tests"})
        assert await bob.get_state(room_id, "m.room.topic") == {"topic": "tests"}

        with pytest.raises(MatrixError) as raised:
            await bob.send_state(room_id, "m.room.topic", "", {"topic": "nope"})
        assert raised.value.status == 403
        assert raised.value.errcode == "M_FORBIDDEN"
    finally:
        await alice.close()
        await bob.close()


async def test_appservice_bot_is_pushed_its_invite(env: Env) -> None:
    alice = await env.synapse.register_user(fresh_localpart("alice"))
    bot = MatrixUser(env.synapse.url, env.bot_mxid, env.as_token)
    try:
        room_id = await alice.create_room()
        await alice.invite(room_id, env.bot_mxid)

        invite = await env.receiver.wait_for_event(
            lambda e: (
                e.get("room_id") == room_id
                and e["type"] == "m.room.member"
                and e.get("state_key") == env.bot_mxid
                and e["content"].get("membership") == "invite"
            )
        )
        assert invite["sender"] == alice.mxid
        assert env.receiver.bad_auth == 0

        assert await bot.join(room_id) == room_id
        assert env.bot_mxid in await alice.joined_members(room_id)
    finally:
        await alice.close()
        await bot.close()
