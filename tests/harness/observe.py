"""What the homeserver shows of the bridge: rooms its users are joined to, a space's children,
raw requests made as one of its users, and polling for what the bridge finishes later."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from letta_appservice.app import App
from tests.harness.matrix_user import MatrixUser


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


async def wait_for_alias(user: MatrixUser, alias: str, timeout: float = 180) -> str:
    """The room an alias points at, once it exists (made by the bridge in another process)."""
    deadline = time.monotonic() + timeout
    while (room_id := await user.resolve_alias(alias)) is None:
        assert time.monotonic() < deadline, f"{alias} did not appear within {timeout:.0f}s"
        await asyncio.sleep(1)
    return room_id


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30) -> None:
    """Polls ``check`` until it holds: for bookkeeping the bridge finishes after the homeserver
    already shows the effect."""
    async with asyncio.timeout(timeout):
        while True:
            if await check():
                return
            await asyncio.sleep(0.05)


def spy_queries(db: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement ``db`` runs from now on (for promises of "no query")."""
    queries: list[str] = []
    for name in ("fetch", "fetchrow", "fetchval", "execute"):
        real = getattr(db, name)

        async def spy(query: str, *args: Any, _real: Any = real) -> Any:
            queries.append(query)
            return await _real(query, *args)

        monkeypatch.setattr(db, name, spy)
    return queries
