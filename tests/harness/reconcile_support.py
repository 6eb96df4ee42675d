"""Helpers for reconciler tests and the benchmark: apps that can be stopped and started again
on one database, per-test puppet namespaces, and what a Matrix client sees of the bridge."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest_asyncio

from letta_appservice.app import App
from letta_appservice.matrix.ids import agent_alias, agent_mxid
from tests.conftest import SERVER_NAME, make_config
from tests.harness.matrix_user import MatrixUser
from tests.harness.synapse import SynapseServer

PREFIXES = {"letta": "agent", "lab": "lab_agent"}


class Bridge:
    """A fresh puppet namespace inside an instance's registered one (``agent_t<hex>_…``), so
    each test gets its own space alias and puppets on the session's Synapse."""

    def __init__(self, instance: str = "letta") -> None:
        self.instance = instance
        self.tag = uuid.uuid4().hex[:8]
        self.template = f"{PREFIXES[instance]}_t{self.tag}_{{agent_id}}"
        self.space_name = f"Agents {self.tag}"

    def overrides(self, **bridge: Any) -> dict[str, Any]:
        return {"username_template": self.template, "space_name": self.space_name, **bridge}

    def mxid(self, agent_id: str) -> str:
        return agent_mxid(self.template, SERVER_NAME, agent_id)

    def alias(self, agent_id: str) -> str:
        return agent_alias(self.template, SERVER_NAME, agent_id)

    @property
    def space_alias(self) -> str:
        return agent_alias(self.template, SERVER_NAME, "space")


class Apps:
    """Starts Apps on the session's Synapse; each is stopped exactly once (restarts included)."""

    def __init__(self, synapse: SynapseServer, letta_url: str) -> None:
        self.synapse = synapse
        self.letta_url = letta_url
        self.running: list[App] = []

    async def start(
        self, database: str, bridge: Bridge, *, first_pass: bool = True, **over: Any
    ) -> App:
        over["bridge"] = bridge.overrides(**over.get("bridge", {}))
        config = make_config(self.synapse, database, self.letta_url, bridge.instance, **over)
        app = App(config)
        self.running.append(app)
        await app.start()
        await app.wait_ready(timeout=60)
        if first_pass:
            await app.scheduler.wait_for_passes(1)
        return app

    async def stop(self, app: App) -> None:
        self.running.remove(app)
        await app.stop()

    async def close(self) -> None:
        for app in reversed(self.running):
            await app.stop()
        self.running.clear()


@pytest_asyncio.fixture
async def apps(synapse: SynapseServer, fake_letta: Any) -> AsyncIterator[Apps]:
    """Apps on the session's Synapse and the test's fake Letta, all stopped at the end."""
    runner = Apps(synapse, fake_letta.url)
    try:
        yield runner
    finally:
        await runner.close()


async def space_children(user: MatrixUser, space_id: str) -> dict[str, dict[str, Any]]:
    """The space's m.space.child contents by room id, as a member of the space reads them."""
    return {
        ev["state_key"]: ev["content"]
        for ev in await user.room_state(space_id)
        if ev["type"] == "m.space.child" and ev["content"].get("via")
    }


async def as_user(app: App, mxid: str, method: str, path: str) -> dict[str, Any]:
    """A raw client-server call made as one of the app's users (e.g. a puppet's joined rooms)."""
    from mautrix.api import Method

    return await app.puppets.api(mxid).request(Method(method), path)


async def joined_rooms_of(app: App, mxid: str) -> list[str]:
    """The rooms one of the app's users (bot or puppet) is joined to, per the homeserver."""
    return (await as_user(app, mxid, "GET", "/_matrix/client/v3/joined_rooms"))["joined_rooms"]


async def wait_until_left(app: App, mxid: str, room_id: str, timeout: float = 30) -> None:
    """Waits until the homeserver no longer has ``mxid`` (one of the app's users) in the room."""
    async with asyncio.timeout(timeout):
        while True:
            if room_id not in await joined_rooms_of(app, mxid):
                return
            await asyncio.sleep(0.1)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30) -> None:
    """Polls ``check`` until it holds: for bookkeeping the bridge finishes after the homeserver
    already shows the effect."""
    async with asyncio.timeout(timeout):
        while True:
            if await check():
                return
            await asyncio.sleep(0.05)
