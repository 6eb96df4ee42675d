"""Routing under load: events in rooms the bridge does not serve are decided without a database
query (the room table is held in memory, shared by every RoomStore on the database)."""

from __future__ import annotations

from typing import Any

import pytest

from letta_appservice.db.room import INVITED, RoomRow, RoomStore
from tests.test_router_decisions import ALICE, ROOM, Setup
from tests.test_router_decisions import setup as setup  # the fixture

UNKNOWN = "!unknown:example.org"


def spy_queries(db: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    queries: list[str] = []
    for name in ("fetch", "fetchrow", "fetchval", "execute"):
        real = getattr(db, name)

        async def spy(query: str, *args: Any, _real: Any = real) -> Any:
            queries.append(query)
            return await _real(query, *args)

        monkeypatch.setattr(db, name, spy)
    return queries


async def test_rooms_we_do_not_serve_are_routed_without_a_query(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    await setup.rooms.get(ROOM)  # the table is read once
    queries = spy_queries(setup.rooms.db, monkeypatch)
    for body in ("hello", "> <@bob> !letta quoted\n\nhi", "![image](mxc://x)"):
        event = setup.event(ALICE, UNKNOWN, body)
        assert await setup.router.lane_key(event) == UNKNOWN
        await setup.router.handle(event)
    assert queries == []
    assert setup.turn.jobs == []


async def test_a_room_written_through_another_store_is_seen_at_once(setup: Setup) -> None:
    assert await setup.rooms.get(UNKNOWN) is None
    await RoomStore(setup.rooms.db).upsert(RoomRow(UNKNOWN, INVITED, mode="open"))
    row = await setup.rooms.get(UNKNOWN)
    assert row is not None and (row.kind, row.mode) == (INVITED, "open")
    row.mode = "off"  # a caller's change is its own until it upserts
    assert (await setup.rooms.get(UNKNOWN)).mode == "open"  # type: ignore[union-attr]
    await RoomStore(setup.rooms.db).delete(UNKNOWN)
    assert await setup.rooms.get(UNKNOWN) is None
