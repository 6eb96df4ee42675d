"""Moving to another homeserver (issue 17, part 3): a bridge whose database describes another
homeserver's rooms stops at start with one line naming `move-homeserver`, and that command sets
the old state aside and provisions every agent on the new homeserver, where people then talk to
the same agents. The move goes from a Synapse to a fresh homeserver: Tuwunel with TUWUNEL_BIN,
else a second Synapse."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from letta_appservice.db.agent import DELETED, AgentRow, AgentStore
from letta_appservice.db.bridge_state import BridgeState
from letta_appservice.db.database import DatabaseURL, open_database
from letta_appservice.db.room import AGENT, INVITED, MANAGEMENT, MOVED, RoomRow, RoomStore
from letta_appservice.matrix import rooms as mx
from letta_appservice.reconcile.homeserver import (
    MOVES_KEY,
    SERVER_KEY,
    HomeserverChanged,
    set_aside,
)
from letta_appservice.reconcile.plan import ReconcileSettings
from letta_appservice.reconcile.space import SPACE_KEY, SPACE_NAME_KEY
from tests.harness.apps import Apps, Bridge
from tests.harness.cli import cli
from tests.harness.config import ADMIN, INSTANCES, SERVER_NAME, make_config
from tests.harness.conversation import dm_with, enter, provision
from tests.harness.events import reply_to
from tests.harness.fake_letta import FakeLetta
from tests.harness.homeserver import start_homeserver
from tests.harness.observe import space_children
from tests.harness.synapse import SynapseServer

INSTANCE = INSTANCES["letta"]


def write_config(path: Path, homeserver: str, database: str, letta_url: str) -> Path:
    """The operator's config.yaml for the CLI runs: the test instance's values."""
    YAML(typ="safe").dump(INSTANCE.config_data(homeserver, database, letta_url), path)
    return path


async def run_cli(*args: str) -> Any:
    # In a thread: the fake Letta answers the program from this event loop.
    return await asyncio.to_thread(cli, *args)


async def rows_of(database: str) -> tuple[list[AgentRow], dict[str, RoomRow], dict[str, Any]]:
    db = await open_database(DatabaseURL.parse(database), in_child=False)
    try:
        agents = await AgentStore(db).all()
        rooms = {r["room_id"]: RoomRow.from_row(r) for r in await db.fetch("SELECT * FROM room")}
        state = BridgeState(db)
        keys = (SPACE_KEY, SERVER_KEY, MOVES_KEY)
        return agents, rooms, {key: await state.get(key) for key in keys}
    finally:
        await db.stop()


async def test_a_populated_bridge_moves_from_synapse_to_a_fresh_homeserver(
    tmp_path: Path, fake_letta: FakeLetta
) -> None:
    registration = INSTANCE.write_registration(tmp_path / "registration.yaml")
    database = f"sqlite:{tmp_path / 'bridge.db'}"

    # 1. A bridge in use on a Synapse: two agents, their rooms, the space, a DM, history.
    old = await SynapseServer.start(tmp_path / "old", [registration], server_name=SERVER_NAME)
    try:
        admin = await old.register_user("admin", admin=True, displayname="Admin")
        async with Apps(old.url, fake_letta.url, database) as apps:
            app = await apps.start()
            alpha, beta = await provision(app, fake_letta, "Alpha", "Beta")
            await enter(app, admin, alpha.room)
            asked = await admin.send_text(alpha.room, "remember the blue door")
            await admin.wait_for_event(alpha.room, reply_to(alpha.mxid, asked))
            await dm_with(admin, beta.mxid)
        await admin.close()
    finally:
        await old.stop()
    before, _, old_state = await rows_of(database)
    old_rooms = {row.agent_id: row.room_id for row in before}

    # 2. A fresh homeserver with the same name and the same registration; people register.
    new = await start_homeserver(tmp_path / "new", [registration], SERVER_NAME)
    try:
        admin = await new.register_user("admin", admin=True, displayname="Admin")
        config = write_config(tmp_path / "config.yaml", new.url, database, fake_letta.url)

        # 3. Started there, the bridge stops with one line naming the command.
        started = await run_cli("-c", str(config))
        assert started.returncode == 1, started.stderr
        last = started.stderr.strip().splitlines()[-1]
        assert last.startswith("letta-appservice: the homeserver changed: none of the 3 rooms")
        assert f"-c {config} move-homeserver`" in last
        assert await admin.resolve_alias(f"#agent_space:{SERVER_NAME}") is None  # nothing made

        # 4. The command sets the old state aside and provisions everything anew.
        moved = await run_cli("-c", str(config), "move-homeserver")
        assert moved.returncode == 0, moved.stdout + moved.stderr
        assert "rooms: 2 agent, 1 invited; the space: " + old_state[SPACE_KEY] in moved.stdout
        assert f"Provisioned on {SERVER_NAME}: 2 agents" in moved.stdout
        again = await run_cli("-c", str(config), "move-homeserver")
        assert again.returncode == 1 and "nothing to move" in again.stderr

        after, rooms, state = await rows_of(database)
        assert [(r.agent_id, r.mxid) for r in after] == [(r.agent_id, r.mxid) for r in before]
        new_rooms = {row.agent_id: row.room_id for row in after}
        assert all(new_rooms.values()) and set(new_rooms.values()).isdisjoint(old_rooms.values())
        assert {rooms[r].kind for r in old_rooms.values()} == {MOVED}  # kept, set aside
        assert {rooms[r].kind for r in new_rooms.values()} == {AGENT}
        assert state[SPACE_KEY] != old_state[SPACE_KEY]
        [record] = state[MOVES_KEY]
        assert record["space_id"] == old_state[SPACE_KEY] and record["agents"] == 2
        assert state[SERVER_KEY] == {"server_name": SERVER_NAME}

        # 5. The bridge runs on the new homeserver: the space holds both rooms, the same
        #    agents answer there.
        async with Apps(new.url, fake_letta.url, database) as apps:
            app = await apps.start()
            space = await admin.wait_for_invite(state[SPACE_KEY])
            await admin.join(space)
            assert set(await space_children(admin, space)) == set(new_rooms.values())
            alpha_room = new_rooms[alpha.fake.id]
            await enter(app, admin, alpha_room)
            asked = await admin.send_text(alpha_room, "which door?")
            answer = await admin.wait_for_event(alpha_room, reply_to(alpha.mxid, asked))
            assert "which door?" in answer["content"]["body"]
            assert fake_letta.message_log[-1].agent_id == alpha.fake.id
        await admin.close()
    finally:
        await new.stop()


async def test_a_bot_out_of_all_its_rooms_is_no_move(
    apps: Apps, bridge: Bridge, fake_letta: FakeLetta, sqlite_url: str
) -> None:
    app = await apps.start(namespace=bridge)
    [agent] = await provision(app, fake_letta, "Stays")
    space_id = await BridgeState(app.db).get(SPACE_KEY)
    await apps.stop(app)  # the bot is then taken out of both rooms while the bridge is down
    app = await apps.start(namespace=bridge, ready=False)
    await app.scheduler.stop()
    for room in (agent.room, space_id):
        await mx.leave(app.bot_api, room)
    await apps.stop(app)

    # The aliases still point at the rooms: no move, the start goes on (drift repair's turn).
    app = await apps.start(sqlite_url, namespace=bridge)
    assert app.failure is None and app.homeserver_ok


async def test_a_database_of_another_server_name_stops_the_bridge(
    database_url: str, apps: Apps
) -> None:
    db = await open_database(DatabaseURL.parse(database_url), in_child=False)
    try:
        await AgentStore(db).upsert(AgentRow("agent-1", "@agent_1:old.example", "One", None))
    finally:
        await db.stop()
    with pytest.raises(HomeserverChanged) as raised:
        await apps.start(database_url)
    assert raised.value.key == "homeserver.domain"
    assert str(raised.value) == (
        "the database belongs to the homeserver 'old.example', but homeserver.domain is "
        f"'{SERVER_NAME}'"
    )


async def test_set_aside_keeps_every_row_and_renames_the_puppets(database_url: str) -> None:
    db = await open_database(DatabaseURL.parse(database_url), in_child=False)
    try:
        agents, rooms, state = AgentStore(db), RoomStore(db), BridgeState(db)
        await agents.upsert(
            AgentRow("agent-a", "@agent_a:old.example", "A", None, "!a:old", displayname="A")
        )
        await agents.upsert(
            AgentRow("agent-b", "@agent_b:old.example", "B", None, "!b:old", state=DELETED)
        )
        await rooms.upsert(RoomRow("!a:old", AGENT, "agent-a"))
        await rooms.upsert(RoomRow("!dm:old", INVITED, owner=ADMIN))
        await rooms.upsert(RoomRow("!mgmt:old", MANAGEMENT, owner=ADMIN))
        await state.set(SPACE_KEY, "!space:old")
        await state.set(SPACE_NAME_KEY, "Agents")
        config = make_config("http://hs", database_url, "http://letta", homeserver={
            "domain": "new.example"
        })  # fmt: skip
        move = await set_aside(db, ReconcileSettings.from_config(config))

        assert (move.from_server, move.to_server, move.space_id) == (
            "old.example",
            "new.example",
            "!space:old",
        )
        assert move.rooms == {AGENT: 1, INVITED: 1, MANAGEMENT: 1} and move.agents == 2
        a, b = await agents.all()
        assert (a.mxid, a.room_id, a.displayname, a.in_space) == (
            "@agent_a:new.example",
            None,
            None,
            False,
        )
        assert (b.mxid, b.state) == ("@agent_b:new.example", DELETED)
        kinds = {r["kind"] for r in await db.fetch("SELECT kind FROM room")}
        assert kinds == {MOVED}
        assert await state.get(SPACE_KEY) is None and await state.get(SPACE_NAME_KEY) is None
        assert await state.get(SERVER_KEY) == {"server_name": "new.example"}
        assert [m["space_id"] for m in await state.get(MOVES_KEY)] == ["!space:old"]
    finally:
        await db.stop()
