"""A process killed between "room created" and "mapping saved" leaves no second room: the
next start finds the room by its deterministic alias and adopts it."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from letta_appservice.config import merge_sections
from letta_appservice.db.agent import AgentStore
from letta_appservice.db.database import DatabaseURL, open_database
from tests.harness.apps import Apps, Bridge
from tests.harness.config import INSTANCES
from tests.harness.crash_launcher import CRASH_EXIT
from tests.harness.homeserver import synapse_admin_api
from tests.harness.matrix_user import MatrixUser
from tests.harness.observe import as_user, space_children

ROOT = Path(__file__).resolve().parent.parent


async def stored_room(database: str, agent_id: str) -> str | None:
    db = await open_database(DatabaseURL.parse(database))
    try:
        row = await AgentStore(db).get(agent_id)
        return row.room_id if row else None
    finally:
        await db.stop()


@synapse_admin_api
async def test_crash_after_create_room_leaves_exactly_one_room(
    homeserver: Any,
    fake_letta: Any,
    apps: Apps,
    admin_user: MatrixUser,
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    # The "lab" instance: its pushes fail while the crashed process is gone, and Synapse's
    # back-off for that appservice must not slow down the other tests.
    bridge = Bridge("lab")
    name = f"Crashy {bridge.tag}"
    agent = fake_letta.add_agent(name, description="Survives crashes")
    data = INSTANCES["lab"].config_data(homeserver.url, sqlite_url, fake_letta.url)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(merge_sections(data, {"bridge": bridge.overrides()})))
    log = tmp_path / "crashed.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.harness.crash_launcher", str(config),
            cwd=ROOT, stdout=out, stderr=out,
        )  # fmt: skip
        try:
            code = await asyncio.wait_for(proc.wait(), 120)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert code == CRASH_EXIT, log.read_text()[-3000:]

    # The crash left a room on the homeserver that the database knows nothing about.
    room_id = await admin_user.resolve_alias(bridge.alias(agent.id))
    assert room_id is not None
    assert await stored_room(sqlite_url, agent.id) is None

    app = await apps.start(sqlite_url, namespace=bridge, first_pass=True)
    assert app.scheduler.last.result == "ok"
    assert app.scheduler.last.changes == {"create": 1}
    assert await stored_room(sqlite_url, agent.id) == room_id  # adopted, not created again
    found = await admin_user.request(
        "GET", "/_synapse/admin/v1/rooms", query={"search_term": name}
    )
    assert [r["room_id"] for r in found["rooms"]] == [room_id]
    puppet = bridge.mxid(agent.id)
    joined = await as_user(app, puppet, "GET", "/_matrix/client/v3/joined_rooms")
    assert joined["joined_rooms"] == [room_id]
    space_id = await admin_user.resolve_alias(bridge.space_alias)
    await admin_user.join(space_id)
    assert list(await space_children(admin_user, space_id)) == [room_id]
    seen = {r["room_id"]: r for r in await admin_user.hierarchy(space_id)}
    assert (seen[room_id]["name"], seen[room_id]["topic"]) == (name, "Survives crashes")
    assert (await app.scheduler.run_now()).matrix_requests == 0
