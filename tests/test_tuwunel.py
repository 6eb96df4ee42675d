"""What only makes sense on a real Tuwunel (TUWUNEL_BIN): registering the appservice through
the admin room instead of the config, as Tuwunel's operators do, and the bridge working on it.
The rest of the suite runs on Tuwunel too when TUWUNEL_BIN is set (the `homeserver` fixture)."""

from __future__ import annotations

from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tests.harness.apps import Apps
from tests.harness.config import INSTANCES, SERVER_NAME
from tests.harness.events import by
from tests.harness.fake_letta import FakeLetta
from tests.harness.tuwunel import TuwunelServer, tuwunel_bin

pytestmark = [
    pytest.mark.tuwunel,
    pytest.mark.skipif(not tuwunel_bin(), reason="TUWUNEL_BIN names no Tuwunel binary"),
]
SERVER_USER = f"@conduit:{SERVER_NAME}"  # Tuwunel's own user, who answers in the admin room


async def test_registered_through_the_admin_room_the_bridge_comes_up(
    tmp_path: Path, fake_letta: FakeLetta
) -> None:
    # A Tuwunel that knows no appservice at start: the first user becomes its admin.
    server = await TuwunelServer.start(tmp_path / "hs", [], server_name=SERVER_NAME)
    try:
        root = await server.register_user("root")
        admins = await root.resolve_alias(f"#admins:{SERVER_NAME}")
        assert admins is not None
        await root.join(admins)  # a no-op when Tuwunel joined its first user already
        await root.mark()
        registration = INSTANCES["lab"].write_registration(tmp_path / "registration.yaml")
        yaml_text = registration.read_text()
        YAML(typ="safe").load(yaml_text)  # what Tuwunel gets is the file as written
        command = f"!admin appservices register\n```\n{yaml_text.rstrip()}\n```"
        await root.send_text(admins, command)
        answer = await root.wait_for_event(admins, by(SERVER_USER), timeout=60)
        assert "Appservice registered with ID: lab" in answer["content"]["body"]

        async with Apps(server.url, fake_letta.url, f"sqlite:{tmp_path / 'b.db'}") as apps:
            app = await apps.start(instance="lab")  # waits for the ping both ways
            assert app.link.ping_ms is not None
            fake_letta.add_agent("Tuwunel Agent")
            await app.scheduler.run_now()
            rows = await app.agents.all()
            assert [row.name for row in rows] == ["Tuwunel Agent"] and rows[0].room_id
    finally:
        await server.stop()
