"""The reconciler against the real Synapse and the fake Letta, judged by what a Matrix client
(the bridge admin) sees: space, rooms, names, puppets, drift repair, failures, cost."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import pytest
from mautrix.api import Method, Path
from mautrix.errors import MatrixConnectionError

from letta_appservice.app import App
from letta_appservice.db.agent import DELETED
from letta_appservice.db.bridge_state import BridgeState
from letta_appservice.matrix import rooms
from letta_appservice.matrix.rooms import creators_have_power
from letta_appservice.reconcile.plan import ARCHIVED_NOTICE, RESTORED_NOTICE
from tests.harness.apps import Apps, Bridge
from tests.harness.config import ADMIN
from tests.harness.events import member_is
from tests.harness.homeserver import Homeserver, on_tuwunel, synapse_admin_api
from tests.harness.matrix_user import MatrixError, MatrixUser
from tests.harness.observe import as_user, eventually, space_children
from tests.harness.synapse import fresh_localpart

BOT = "@letta:test.local"


async def resolve(user: MatrixUser, alias: str) -> str:
    room_id = await user.resolve_alias(alias)
    assert room_id is not None, f"{alias} does not exist"
    return room_id


async def join_space(admin: MatrixUser, bridge: Bridge) -> str:
    space_id = await resolve(admin, bridge.space_alias)
    await admin.join(space_id)  # works only because the admin was invited
    return space_id


async def test_zero_to_n_then_restart(
    database_url: str,
    apps: Apps,
    bridge: Bridge,
    fake_letta: Any,
    admin_user: MatrixUser,
    homeserver: Homeserver,
) -> None:
    # (database_url first: it is set up before the apps and dropped after they stopped)
    alpha = fake_letta.add_agent("Alpha", description="Answers questions")
    beta = fake_letta.add_agent("Beta")
    app = await apps.start(database_url, namespace=bridge, first_pass=True)
    assert app.scheduler.last.result == "ok"
    assert app.scheduler.last.changes == {"create": 2}

    space_id = await join_space(admin_user, bridge)
    create = await admin_user.get_state(space_id, "m.room.create")
    assert create["type"] == "m.space"
    assert (await admin_user.get_state(space_id, "m.room.name"))["name"] == bridge.space_name
    children = await space_children(admin_user, space_id)
    room_ids = {a.id: await resolve(admin_user, bridge.alias(a.id)) for a in (alpha, beta)}
    assert set(children) == set(room_ids.values())
    assert all(c["via"] == ["test.local"] for c in children.values())
    invited = await admin_user.invited_rooms()
    assert set(room_ids.values()) <= set(invited)

    seen = {room["room_id"]: room for room in await admin_user.hierarchy(space_id)}
    assert seen[room_ids[alpha.id]]["name"] == "Alpha"
    assert seen[room_ids[alpha.id]]["topic"] == "Answers questions"
    assert seen[room_ids[beta.id]]["name"] == "Beta"
    assert "topic" not in seen[room_ids[beta.id]]

    room = room_ids[alpha.id]
    await admin_user.join(room)
    puppet = bridge.mxid(alpha.id)
    members = await admin_user.joined_members(room)
    assert {BOT, puppet, ADMIN} <= set(members)
    assert members[puppet]["display_name"] == "Alpha"
    levels = await admin_user.get_state(room, "m.room.power_levels")
    assert {u: levels["users"][u] for u in (puppet, ADMIN)} == {puppet: 50, ADMIN: 100}
    # The homeserver's default room version (12 on the suite's Synapse, 11 on Tuwunel 1.4):
    # from 12 on the bot, as creator, outranks every power level and is not listed (older
    # versions list it at 100: tests/test_room_versions.py).
    create = next(e for e in await admin_user.room_state(room) if e["type"] == "m.room.create")
    caps = await admin_user.request("GET", "/_matrix/client/v3/capabilities")
    default = caps["capabilities"]["m.room_versions"]["default"]
    assert create["sender"] == BOT and create["content"]["room_version"] == default
    assert (BOT in levels["users"]) == (not creators_have_power(default))
    assert await admin_user.get_state(room, "m.space.parent", space_id) == {
        "via": ["test.local"],
        "canonical": True,
    }
    assert await admin_user.get_state(room, "m.room.join_rules") == rooms.restricted_to(space_id)
    # Never joinable by anyone, guests included, at any point of its history. Tuwunel writes
    # the preset's public rule first and the restricted one right after, both while it holds
    # the room's state lock inside createRoom (no join can come between): docs/homeservers.md.
    rules = [e for e in await admin_user.messages(room) if e["type"] == "m.room.join_rules"]
    preset = [{"join_rule": "public"}] if on_tuwunel() else []
    assert [e["content"] for e in rules] == [*preset, rooms.restricted_to(space_id)]
    assert (await admin_user.get_state(room, "m.room.guest_access") or {}).get(
        "guest_access", "forbidden"
    ) == "forbidden"
    assert levels["invite"] == 0  # members may invite others, as in any private room

    # Whoever is in the space can walk into an agent room uninvited; nobody else can.
    member = await homeserver.register_user(fresh_localpart("member"))
    outsider = await homeserver.register_user(fresh_localpart("outsider"))
    await admin_user.invite(space_id, member.mxid)
    await member.join(space_id)
    assert await member.join(room, via=["test.local"]) == room
    with pytest.raises(MatrixError) as refused:
        await outsider.join(room, via=["test.local"])
    assert refused.value.errcode == "M_FORBIDDEN"
    for user in (member, outsider):
        await user.close()

    # Restart on the same database: nothing is created again, a normal pass calls nothing.
    await apps.stop(app)
    app = await apps.start(database_url, namespace=bridge, first_pass=True)
    assert app.scheduler.last.result == "ok" and app.scheduler.last.changes == {}
    summary = await app.scheduler.run_now()
    assert (summary.result, summary.changes, summary.matrix_requests) == ("ok", {}, 0)
    assert await space_children(admin_user, space_id) == children
    assert await resolve(admin_user, bridge.space_alias) == space_id
    for agent_id, room_id in room_ids.items():
        assert await resolve(admin_user, bridge.alias(agent_id)) == room_id
        joined = await as_user(
            app, bridge.mxid(agent_id), "GET", "/_matrix/client/v3/joined_rooms"
        )
        assert joined["joined_rooms"] == [room_id]


async def test_new_agents_cost_at_most_five_requests_and_steady_state_none(
    apps: Apps, bridge: Bridge, fake_letta: Any, sqlite_url: str
) -> None:
    # The start-up pass creates the space; no agents yet.
    app = await apps.start(sqlite_url, namespace=bridge, first_pass=True)
    for n in range(4):
        fake_letta.add_agent(f"Budget {n}", description=f"Agent number {n}")
    app.recent_matrix_requests.clear()
    summary = await app.scheduler.run_now()
    assert summary.changes == {"create": 4}
    assert summary.matrix_requests <= 5 * 4
    paths = [path for _method, path in app.recent_matrix_requests]
    assert not [p for p in paths if p.endswith("/login")]
    assert len([p for p in paths if p.endswith("/register")]) == 4
    assert len([p for p in paths if p.endswith("/createRoom")]) == 4

    summary = await app.scheduler.run_now()
    assert (summary.changes, summary.matrix_requests) == ({}, 0)


def is_notice(sender: str, body: str) -> Any:
    return lambda e: (
        e["sender"] == sender
        and e["content"]["msgtype"] == "m.notice"
        and e["content"]["body"] == body
    )


async def test_rename_delete_and_reappear(
    apps: Apps, bridge: Bridge, fake_letta: Any, admin_user: MatrixUser, sqlite_url: str
) -> None:
    agent = fake_letta.add_agent("Gamma", description="Before")
    app = await apps.start(sqlite_url, namespace=bridge, first_pass=True)
    space_id = await join_space(admin_user, bridge)
    room = await resolve(admin_user, bridge.alias(agent.id))
    puppet = bridge.mxid(agent.id)
    await admin_user.join(room)

    agent.name, agent.description = "Gamma Prime", "After"
    summary = await app.scheduler.run_now()
    assert summary.changes == {"update": 1}
    assert (await admin_user.get_state(room, "m.room.name"))["name"] == "Gamma Prime"
    assert (await admin_user.get_state(room, "m.room.topic"))["topic"] == "After"
    assert (await admin_user.joined_members(room))[puppet]["display_name"] == "Gamma Prime"

    await admin_user.mark()
    del fake_letta.agents[agent.id]
    summary = await app.scheduler.run_now()
    assert summary.changes == {"archive": 1}
    await admin_user.wait_for_event(room, is_notice(puppet, ARCHIVED_NOTICE))
    assert room not in await space_children(admin_user, space_id)
    name = (await admin_user.get_state(room, "m.room.name"))["name"]
    assert name == "Gamma Prime (archived)"
    row = await app.agents.get(agent.id)
    assert (row.state, row.room_id) == (DELETED, room)
    # Still gone: nothing more happens.
    assert (await app.scheduler.run_now()).matrix_requests == 0

    fake_letta.agents[agent.id] = agent
    summary = await app.scheduler.run_now()
    assert summary.changes == {"restore": 1}
    await admin_user.wait_for_event(room, is_notice(puppet, RESTORED_NOTICE))
    assert (await space_children(admin_user, space_id))[room] == {"via": ["test.local"]}
    assert (await admin_user.get_state(room, "m.room.name"))["name"] == "Gamma Prime"
    assert await resolve(admin_user, bridge.alias(agent.id)) == room
    assert (await app.scheduler.run_now()).matrix_requests == 0


async def test_120_agents_over_three_pages(
    apps: Apps, bridge: Bridge, fake_letta: Any, admin_user: MatrixUser, sqlite_url: str
) -> None:
    agents = [fake_letta.add_agent(f"Paged {n:03}") for n in range(120)]
    app = await apps.start(sqlite_url, namespace=bridge, first_pass=True, letta={"page_size": 50})
    assert app.scheduler.last.changes == {"create": 120}
    listings = fake_letta.requests_to("/v1/agents/", "GET")
    assert [r.query.get("after") is not None for r in listings] == [False, True, True, True]
    space_id = await join_space(admin_user, bridge)
    children = await space_children(admin_user, space_id)
    assert len(children) == 120
    for agent in agents[::17]:
        assert await resolve(admin_user, bridge.alias(agent.id)) in children
    summary = await app.scheduler.run_now()
    assert (summary.agents, summary.changes, summary.matrix_requests) == (120, {}, 0)


async def test_drift_reported_by_the_homeserver_is_repaired(
    apps: Apps, bridge: Bridge, fake_letta: Any, admin_user: MatrixUser, sqlite_url: str
) -> None:
    kicked, unlisted, left = (fake_letta.add_agent(f"Drift {n}") for n in range(3))
    app = await apps.start(sqlite_url, namespace=bridge, first_pass=True)
    space_id = await join_space(admin_user, bridge)
    room = {a.id: await resolve(admin_user, bridge.alias(a.id)) for a in (kicked, unlisted, left)}
    for room_id in room.values():
        await admin_user.join(room_id)
    await admin_user.mark()

    # Four kinds of drift at once; the pushed events alone bring the repair (no run_now).
    puppet = bridge.mxid(kicked.id)
    await admin_user.kick(room[kicked.id], puppet)
    await admin_user.send_state(space_id, "m.space.child", room[unlisted.id], {})
    await app.bot_api.request(Method.POST, Path.v3.rooms[room[left.id]].leave, {})
    await admin_user.leave(room[unlisted.id])

    await admin_user.wait_for_event(room[kicked.id], member_is(puppet, "leave"))
    await admin_user.wait_for_event(room[kicked.id], member_is(puppet, "join"), timeout=60)
    await admin_user.wait_for_event(room[left.id], member_is(BOT, "leave"))
    await admin_user.wait_for_event(room[left.id], member_is(BOT, "join"), timeout=60)
    await admin_user.wait_for_event(
        space_id,
        lambda e: (
            e["type"] == "m.space.child"
            and e["state_key"] == room[unlisted.id]
            and e["sender"] == BOT
            and e["content"].get("via")
        ),
        timeout=60,
    )
    assert set(await space_children(admin_user, space_id)) == set(room.values())
    assert await admin_user.wait_for_invite(room[unlisted.id], timeout=60)  # admin left
    # The marks are cleared once the repairing requests returned.
    await eventually(lambda: _no_repairs_pending(app))
    summary = await app.scheduler.run_now()
    assert (summary.changes, summary.matrix_requests) == ({}, 0)


async def test_full_check_at_start_puts_back_a_space_child_removed_while_it_was_down(
    apps: Apps, bridge: Bridge, fake_letta: Any, admin_user: MatrixUser, sqlite_url: str
) -> None:
    agent = fake_letta.add_agent("Offline drift")
    app = await apps.start(sqlite_url, namespace=bridge, first_pass=True)
    space_id = await join_space(admin_user, bridge)
    room = await resolve(admin_user, bridge.alias(agent.id))
    await apps.stop(app)

    await admin_user.send_state(space_id, "m.space.child", room, {})
    assert room not in await space_children(admin_user, space_id)
    # Its start-up pass is the full check.
    app = await apps.start(sqlite_url, namespace=bridge, first_pass=True)
    assert app.scheduler.last.full and app.scheduler.last.result == "ok"
    assert (await space_children(admin_user, space_id))[room] == {"via": ["test.local"]}


@synapse_admin_api
async def test_room_gone_from_the_homeserver_is_recreated(
    apps: Apps, bridge: Bridge, fake_letta: Any, admin_user: MatrixUser, sqlite_url: str
) -> None:
    agent = fake_letta.add_agent("Phoenix", description="Rises again")
    app = await apps.start(sqlite_url, namespace=bridge, first_pass=True)
    space_id = await join_space(admin_user, bridge)
    old = await resolve(admin_user, bridge.alias(agent.id))
    await admin_user.request(
        "DELETE", f"/_synapse/admin/v1/rooms/{quote(old, safe='')}", body={"purge": True}
    )

    summary = await app.scheduler.run_now(full=True)
    assert summary.result == "ok", summary.error
    new = await resolve(admin_user, bridge.alias(agent.id))
    assert new != old
    assert (await app.agents.get(agent.id)).room_id == new
    children = await space_children(admin_user, space_id)
    assert new in children and old not in children
    seen = {r["room_id"]: r for r in await admin_user.hierarchy(space_id)}
    assert (seen[new]["name"], seen[new]["topic"]) == ("Phoenix", "Rises again")
    joined = await as_user(app, bridge.mxid(agent.id), "GET", "/_matrix/client/v3/joined_rooms")
    assert joined["joined_rooms"] == [new]
    assert new in await admin_user.invited_rooms()


@synapse_admin_api
async def test_space_gone_is_recreated_and_rooms_follow(
    apps: Apps, bridge: Bridge, fake_letta: Any, admin_user: MatrixUser, sqlite_url: str
) -> None:
    agent = fake_letta.add_agent("Orphan")
    app = await apps.start(sqlite_url, namespace=bridge, first_pass=True)
    old = await resolve(admin_user, bridge.space_alias)
    room = await resolve(admin_user, bridge.alias(agent.id))
    path = f"/_synapse/admin/v1/rooms/{quote(old, safe='')}"
    await admin_user.request("DELETE", path, body={"purge": True})

    summary = await app.scheduler.run_now(full=True)
    assert summary.result == "ok", summary.error
    space_id = await join_space(admin_user, bridge)  # invited to the new space
    assert space_id != old
    assert await BridgeState(app.db).get("space_id") == space_id
    assert list(await space_children(admin_user, space_id)) == [room]
    await admin_user.join(room)
    assert await admin_user.get_state(room, "m.space.parent", space_id) is not None
    assert await admin_user.get_state(room, "m.room.join_rules") == rooms.restricted_to(space_id)


async def test_letta_down_changes_nothing_and_the_next_pass_recovers(
    apps: Apps,
    bridge: Bridge,
    fake_letta: Any,
    admin_user: MatrixUser,
    sqlite_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    kept = fake_letta.add_agent("Kept")
    app = await apps.start(sqlite_url, namespace=bridge, first_pass=True)
    space_id = await join_space(admin_user, bridge)
    children = await space_children(admin_user, space_id)
    late = fake_letta.add_agent("Late")
    fake_letta.fail_next(4, 500, "/v1/agents")  # the first try and all three retries
    app.letta.backoff = 0.01

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="letta_appservice"):
        summary = await app.scheduler.run_now()
    assert summary.result == "error" and "cannot list agents from Letta" in summary.error
    assert (summary.changes, summary.matrix_requests) == ({}, 0)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    assert "HTTP 500" in errors[0].getMessage()
    stored = await BridgeState(app.db).get("last_reconcile")
    assert (stored["result"], stored["error"]) == ("error", summary.error)
    assert (await app.agents.get(kept.id)).state == "active"  # not archived by a failed list
    assert await space_children(admin_user, space_id) == children

    summary = await app.scheduler.run_now()
    assert summary.result == "ok" and summary.changes == {"create": 1}
    assert await resolve(admin_user, bridge.alias(late.id))


async def test_homeserver_failing_mid_pass_leaves_no_half_done_agent(
    apps: Apps,
    bridge: Bridge,
    fake_letta: Any,
    admin_user: MatrixUser,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = await apps.start(sqlite_url, namespace=bridge, first_pass=True)
    agents = [fake_letta.add_agent(f"Midway {n}") for n in range(5)]
    app.reconciler._concurrency = 1  # agents in order, so "the third room" is well defined
    create_room, calls = rooms.create_room, []

    async def down_after_two(api: Any, body: dict[str, Any]) -> Any:
        calls.append(body["room_alias_name"])
        if len(calls) > 2:
            raise MatrixConnectionError("Cannot connect to host 127.0.0.1")
        return await create_room(api, body)

    monkeypatch.setattr(rooms, "create_room", down_after_two)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="letta_appservice"):
        summary = await app.scheduler.run_now()
    assert summary.result == "error" and "unreachable" in summary.error
    assert (summary.changes, summary.failed) == ({"create": 2}, 3)
    assert len(calls) == 3  # the pass stopped at the first connection error
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None

    monkeypatch.setattr(rooms, "create_room", create_room)
    summary = await app.scheduler.run_now()
    assert summary.result == "ok" and summary.changes == {"create": 3}
    space_id = await join_space(admin_user, bridge)
    children = await space_children(admin_user, space_id)
    for agent in agents:
        room_id = await resolve(admin_user, bridge.alias(agent.id))
        assert room_id in children
        assert (await app.agents.get(agent.id)).room_id == room_id
    assert len(children) == 5


async def _no_repairs_pending(app: App) -> bool:
    return app.reconciler.pending_repairs == 0
