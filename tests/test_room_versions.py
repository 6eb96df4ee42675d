"""Room versions: v12 rooms must not list their creator in power levels, older ones must.
The session Synapse creates v12 rooms; here a second Synapse creates v11 rooms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from letta_appservice.matrix.rooms import agent_room_body, creators_have_power, space_body
from tests.harness.apps import Apps
from tests.harness.config import ADMIN, INSTANCES, SERVER_NAME
from tests.harness.homeserver import Homeserver
from tests.harness.synapse import SynapseServer


@pytest.mark.parametrize(
    ("version", "power"),
    [("1", False), ("10", False), ("11", False), ("12", True), ("13", True),
     ("org.matrix.hydra.11", True), ("", False)],
)  # fmt: skip
def test_which_versions_give_creators_power(version: str, power: bool) -> None:
    assert creators_have_power(version) is power


def test_bodies_list_the_creator_only_when_asked() -> None:
    common = {"alias_localpart": "a", "name": "N", "bot": "@bot:x", "admins": ["@ad:x"]}
    room = {**common, "topic": "", "puppet": "@p:x", "space_id": "!s:x", "domain": "x"}
    for body in (agent_room_body(**room), space_body(**common)):
        assert body["power_level_content_override"]["users"]["@bot:x"] == 100
    v12 = agent_room_body(**room, list_creator=False)
    assert v12["power_level_content_override"]["users"] == {"@p:x": 50, "@ad:x": 100}
    assert (
        "@bot:x"
        not in space_body(**common, list_creator=False)["power_level_content_override"]["users"]
    )


async def test_provisioning_on_a_room_version_11_server(
    tmp_path: Path, apps: Apps, fake_letta: Any, homeserver: Homeserver
) -> None:
    INSTANCES["lab"].write_registration(tmp_path / "registration.yaml")
    old = await SynapseServer.start(
        tmp_path / "hs", [tmp_path / "registration.yaml"], SERVER_NAME, default_room_version="11"
    )
    try:
        app = await apps.start(
            f"sqlite:{tmp_path / 'v11.db'}", instance="lab", homeserver={"address": old.url}
        )
        fake_letta.add_agent("Old Timer")
        summary = await app.scheduler.run_now()
        assert summary.result == "ok" and summary.changes.get("create") == 1
        (row,) = await app.agents.all()
        create = await app.bot_intent.api.request(
            "GET", f"/_matrix/client/v3/rooms/{row.room_id}/state/m.room.create"
        )
        assert create.get("room_version") == "11"
        levels = await app.bot_intent.get_power_levels(row.room_id)
        assert levels.users[app.config.bot_mxid] == 100
        assert levels.users[ADMIN] == 100 and levels.users[row.mxid] == 50
    finally:
        await apps.close()  # before its homeserver goes
        await old.stop()
