"""Routing under load: events in rooms the bridge does not serve are decided without a database
query (the room table is held in memory, shared by every RoomStore on the database)."""

from __future__ import annotations

import pytest

from letta_appservice.db.room import INVITED, RoomRow, RoomStore
from tests.harness.observe import spy_queries
from tests.harness.routing import ALICE, ROOM, Routing

UNKNOWN = "!unknown:bridge.test"


async def test_rooms_we_do_not_serve_are_routed_without_a_query(
    routing: Routing, monkeypatch: pytest.MonkeyPatch
) -> None:
    await routing.rooms.get(ROOM)  # the table is read once
    queries = spy_queries(routing.rooms.db, monkeypatch)
    for body in ("hello", "> <@bob> !letta quoted\n\nhi", "![image](mxc://x)"):
        event = routing.event(ALICE, UNKNOWN, body)
        assert await routing.router.lane_key(event) == UNKNOWN
        await routing.router.handle(event)
    assert queries == []
    assert routing.turn.jobs == []


async def test_a_room_written_through_another_store_is_seen_at_once(routing: Routing) -> None:
    assert await routing.rooms.get(UNKNOWN) is None
    await RoomStore(routing.rooms.db).upsert(RoomRow(UNKNOWN, INVITED, mode="open"))
    row = await routing.rooms.get(UNKNOWN)
    assert row is not None and (row.kind, row.mode) == (INVITED, "open")
    row.mode = "off"  # a caller's change is its own until it upserts
    assert (await routing.rooms.get(UNKNOWN)).mode == "open"  # type: ignore[union-attr]
    await RoomStore(routing.rooms.db).delete(UNKNOWN)
    assert await routing.rooms.get(UNKNOWN) is None
