"""The homeserver's floor for provisioning, the baseline of bench/reconcile.py: the requests the
reconciler sends for a new agent (register, display name, createRoom with the same body and the
same admin invited, the puppet's join, the space child), sent straight with aiohttp at the same
concurrency by a second appservice whose event pushes a no-op server answers. No Letta, no
database: what is left is the homeserver's own cost, so bridge time / floor time is what the
bridge adds."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

from letta_appservice.config import parse_config
from letta_appservice.matrix import rooms
from letta_appservice.matrix.ids import agent_localpart, agent_mxid
from letta_appservice.matrix.registration import build_registration
from tests.harness.config import ADMIN, SERVER_NAME, free_port

BOT = "floor_bot"


class NoopAppservice:
    """Answers the homeserver's transaction pushes with 200 {} and keeps nothing."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = parse_config(
            {
                "homeserver": {"address": "http://unused", "domain": SERVER_NAME},
                "appservice": {
                    "id": "floor",
                    "address": self.url,
                    "bot_localpart": BOT,
                    "as_token": secrets.token_hex(24),
                    "hs_token": secrets.token_hex(24),
                    "database": "sqlite:unused.db",
                },
                "letta": {"base_url": "http://unused"},
                "bridge": {
                    "username_template": "floor_{agent_id}",
                    "permissions": {SERVER_NAME: "user"},
                },
            },
            env={},
        )
        self.registration = build_registration(self.config)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_put("/_matrix/app/v1/transactions/{txn}", self._ok)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @staticmethod
    async def _ok(_request: web.Request) -> web.Response:
        return web.json_response({})


class _Client:
    """Bare appservice requests: the as_token, ``user_id`` to act as a puppet; each call is one
    request and raises on an error status."""

    def __init__(self, session: aiohttp.ClientSession, homeserver: str, as_token: str) -> None:
        self.session, self.base = session, homeserver
        self.headers = {"Authorization": f"Bearer {as_token}"}
        self.requests = 0

    async def call(
        self, method: str, path: str, body: dict[str, Any] | None, as_user: str | None = None
    ) -> dict[str, Any]:
        params = {"user_id": as_user} if as_user else {}
        self.requests += 1
        async with self.session.request(
            method, self.base + path, json=body, params=params, headers=self.headers
        ) as resp:
            data: dict[str, Any] = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"{method} {path}: {resp.status} {data}")
            return data


async def provision_floor(
    homeserver: str, noop: NoopAppservice, count: int, concurrency: int
) -> dict[str, Any]:
    """Space first (untimed, as the bridge's space exists before its timed pass), then
    ``count`` agents, ``concurrency`` at a time."""
    cfg = noop.config
    template = f"floor_t{uuid.uuid4().hex[:8]}_{{agent_id}}"
    bot = f"@{BOT}:{SERVER_NAME}"
    async with aiohttp.ClientSession() as session:
        hs = _Client(session, homeserver, cfg.appservice.as_token)
        caps = await hs.call("GET", "/_matrix/client/v3/capabilities", None)
        version = caps["capabilities"]["m.room_versions"]["default"]
        list_creator = not rooms.creators_have_power(version)  # as the reconciler decides
        space = await hs.call(
            "POST",
            "/_matrix/client/v3/createRoom",
            rooms.space_body(
                alias_localpart=agent_localpart(template, "space"),
                name="Floor",
                bot=bot,
                admins=[ADMIN],
                list_creator=list_creator,
            ),
        )
        space_id = space["room_id"]
        hs.requests = 0
        gate = asyncio.Semaphore(concurrency)

        async def one(n: int) -> None:
            agent_id = f"agent-{uuid.uuid4()}"
            mxid = agent_mxid(template, SERVER_NAME, agent_id)
            localpart = agent_localpart(template, agent_id)
            async with gate:
                await hs.call(
                    "POST",
                    "/_matrix/client/v3/register?kind=user",
                    {
                        "username": localpart,
                        "type": "m.login.application_service",
                        "inhibit_login": True,
                    },
                )
                await hs.call(
                    "PUT",
                    f"/_matrix/client/v3/profile/{quote(mxid)}/displayname",
                    {"displayname": f"Agent {n:05}"},
                    as_user=mxid,
                )
                body = rooms.agent_room_body(
                    alias_localpart=localpart,
                    name=f"Agent {n:05}",
                    topic=f"Benchmark agent {n}",
                    bot=bot,
                    puppet=mxid,
                    admins=[ADMIN],
                    space_id=space_id,
                    domain=SERVER_NAME,
                    list_creator=list_creator,
                )
                room = await hs.call("POST", "/_matrix/client/v3/createRoom", body)
                room_id = quote(room["room_id"])
                await hs.call("POST", f"/_matrix/client/v3/rooms/{room_id}/join", {}, mxid)
                await hs.call(
                    "PUT",
                    f"/_matrix/client/v3/rooms/{quote(space_id)}/state/m.space.child/{room_id}",
                    rooms.space_child(SERVER_NAME),
                )

        began = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(count)))
        wall = time.perf_counter() - began
    return {"agents": count, "wall_s": wall, "requests": hs.requests}
