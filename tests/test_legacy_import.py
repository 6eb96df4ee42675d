"""import-legacy against a real Synapse: rooms and the space the old polling bot made (logged
in with passwords as the agents' users) are adopted, and the next reconcile duplicates nothing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from letta_appservice.matrix.ids import agent_alias, agent_mxid
from tests.harness.apps import Apps
from tests.harness.config import INSTANCES, SERVER_NAME
from tests.harness.homeserver import Homeserver, synapse_admin_api
from tests.harness.matrix_user import MatrixUser

TEMPLATE = INSTANCES["letta"].username_template


async def legacy_user(homeserver: Homeserver, admin: MatrixUser, agent_id: str) -> MatrixUser:
    """An @agent_… user as the old bot had it: a real account with a password, logged in."""
    localpart = agent_mxid(TEMPLATE, SERVER_NAME, agent_id)[1:].split(":")[0]
    # The namespace is exclusive to the appservice now, so the account is made through it (as
    # the old deployment's registration once did), then given a password by the server admin.
    bot = MatrixUser(homeserver.url, f"@letta:{SERVER_NAME}", INSTANCES["letta"].as_token)
    await bot.request(
        "POST",
        "/_matrix/client/v3/register",
        body={"type": "m.login.application_service", "username": localpart},
    )
    await bot.close()
    mxid = f"@{localpart}:{SERVER_NAME}"
    await admin.request("PUT", f"/_synapse/admin/v2/users/{mxid}", body={"password": "pw-legacy"})
    login = await admin.request(
        "POST",
        "/_matrix/client/v3/login",
        body={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": "pw-legacy",
        },
    )
    return MatrixUser(homeserver.url, login["user_id"], login["access_token"])


def fake_agent(fake_letta: Any, agent_id: str, name: str) -> None:
    agent = fake_letta.add_agent(name)
    del fake_letta.agents[agent.id]
    agent.id = agent_id
    fake_letta.agents[agent_id] = agent


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "letta_appservice", "-c", str(config), "import-legacy", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_config(tmp_path: Path, homeserver: Homeserver, database: str, letta: str) -> Path:
    path = tmp_path / "config.yaml"
    YAML().dump(INSTANCES["letta"].config_data(homeserver.url, database, letta), path)
    return path


@synapse_admin_api
async def test_old_rooms_and_space_are_adopted_without_duplicates(
    tmp_path: Path,
    sqlite_url: str,
    apps: Apps,
    homeserver: Homeserver,
    fake_letta: Any,
    admin_user: MatrixUser,
) -> None:
    ids = [f"agent-{uuid.uuid4()}" for _ in range(3)]
    users = [await legacy_user(homeserver, admin_user, agent_id) for agent_id in ids]
    old_rooms = [
        await users[i].create_room(name=f"Old {i}", preset="private_chat") for i in range(2)
    ]
    space = await users[0].create_room(
        name="Letta Agents", preset="private_chat", creation_content={"type": "m.space"}
    )
    for room in old_rooms:
        await users[0].send_state(space, "m.space.child", room, {"via": [SERVER_NAME]})
    # The third agent's room is one nobody we can act as is in: it cannot be adopted.
    stranger_room = await admin_user.create_room(preset="private_chat")
    mappings = {
        agent_id: {
            "agent_id": agent_id,
            "agent_name": f"Agent {i}",
            "matrix_user_id": users[i].mxid,
            "matrix_password": "pw-legacy",
            "room_id": [*old_rooms, stranger_room][i],
            "created": True,
            "room_created": True,
        }
        for i, agent_id in enumerate(ids)
    }
    (tmp_path / "agent_user_mappings.json").write_text(json.dumps(mappings))
    (tmp_path / "letta_space_config.json").write_text(
        json.dumps({"space_id": space, "created_at": 1704672000.1, "name": "Letta Agents"})
    )
    config = write_config(tmp_path, homeserver, sqlite_url, fake_letta.url)
    files = [str(tmp_path / "agent_user_mappings.json"), str(tmp_path / "letta_space_config.json")]

    dry = cli(config, *files, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "Dry run" in dry.stdout and "adopted: 2" in dry.stdout
    assert "to be provisioned: 1" in dry.stdout and f"not in {stranger_room}" in dry.stdout
    assert not Path(sqlite_url.removeprefix("sqlite:")).exists()  # not even created

    first = cli(config, *files)
    assert first.returncode == 0, first.stderr
    assert "adopted: 2" in first.stdout and "to be provisioned: 1" in first.stdout
    assert f"room {stranger_room} could not be joined" in first.stdout
    assert f"space: {space} adopted" in first.stdout

    again = cli(config, *files)
    # Nothing changes; the unreachable room is simply tried again (it may be reachable now).
    assert "adopted: 0, unchanged: 2, to be provisioned: 1" in again.stdout
    assert "already in use" in again.stdout

    # The bridge starts on the imported state; Letta knows the same three agents.
    for i, agent_id in enumerate(ids):
        fake_agent(fake_letta, agent_id, f"Agent {i}")
    app = await apps.start(sqlite_url)
    await app.scheduler.run_now()
    rows = {row.agent_id: row for row in await app.agents.all()}
    assert [rows[a].room_id for a in ids[:2]] == old_rooms  # adopted, not re-created
    new_room = rows[ids[2]].room_id
    assert new_room not in (None, stranger_room)
    for i in range(2):  # no second room was made for the adopted agents
        alias = agent_alias(TEMPLATE, SERVER_NAME, ids[i])
        assert await users[0].resolve_alias(alias) in (None, old_rooms[i])
    joined = set(await _bot_joined(app))
    assert {*old_rooms, space, new_room} <= joined
    children = {
        ev["state_key"]
        for ev in await _state(app, space)
        if ev["type"] == "m.space.child" and ev["content"].get("via")
    }
    assert children == {*old_rooms, new_room}
    # The puppet of an adopted room answers in it under its Letta name.
    member = await _get(app, old_rooms[0], "m.room.member", users[0].mxid)
    assert member["displayname"] == "Agent 0"
    for user in users:
        await user.close()


async def test_malformed_files_import_nothing(
    tmp_path: Path, sqlite_url: str, homeserver: Homeserver, fake_letta: Any
) -> None:
    good = f"agent-{uuid.uuid4()}"
    mappings = {
        good: {
            "agent_name": "Fine",
            "matrix_user_id": agent_mxid(TEMPLATE, SERVER_NAME, good),
            "room_id": None,
        },
        "agent-broken": {"agent_name": "Broken", "matrix_user_id": "@alice:test.local"},
    }
    path = tmp_path / "agent_user_mappings.json"
    path.write_text(json.dumps(mappings))
    config = write_config(tmp_path, homeserver, sqlite_url, fake_letta.url)
    proc = cli(config, str(path))
    assert proc.returncode == 2
    assert "entry 'agent-broken'" in proc.stderr and "nothing was imported" in proc.stderr
    assert not Path(sqlite_url.removeprefix("sqlite:")).exists()


async def _bot_joined(app: Any) -> list[str]:
    return await app.bot_intent.get_joined_rooms()


async def _state(app: Any, room: str) -> list[dict[str, Any]]:
    from letta_appservice.matrix import rooms

    return await rooms.room_state(app.bot_api, room)


async def _get(app: Any, room: str, event_type: str, key: str) -> dict[str, Any]:
    for _ in range(100):
        for ev in await _state(app, room):
            if ev["type"] == event_type and ev["state_key"] == key:
                return ev["content"]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {event_type} {key} in {room}")
