"""Two bridges on one homeserver (different id, bot, puppet prefix, port, database, space and
Letta server): each provisions and answers only for its own agents."""

from __future__ import annotations

from typing import Any

from letta_appservice.db.bridge_state import BridgeState
from letta_appservice.matrix.ids import agent_mxid
from letta_appservice.reconcile.space import SPACE_KEY
from tests.harness.apps import Apps
from tests.harness.config import INSTANCES, SERVER_NAME
from tests.harness.fake_letta import FakeLetta
from tests.harness.homeserver import Homeserver
from tests.harness.matrix_user import MatrixUser


async def test_two_instances_keep_to_their_own_agents(
    tmp_path: Any,
    apps: Apps,
    homeserver: Homeserver,
    fake_letta: Any,
    admin_user: MatrixUser,
) -> None:
    lab_letta = FakeLetta()
    lab_url = await lab_letta.start()
    try:
        main_agent = fake_letta.add_agent("Main Helper")
        lab_agent = lab_letta.add_agent("Lab Helper")
        main = await apps.start(f"sqlite:{tmp_path / 'main.db'}")
        lab = await apps.start(
            database=f"sqlite:{tmp_path / 'lab.db'}", instance="lab", letta={"base_url": lab_url}
        )
        await main.scheduler.run_now()
        await lab.scheduler.run_now()

        main_rows, lab_rows = await main.agents.all(), await lab.agents.all()
        assert [(r.agent_id, r.mxid) for r in main_rows] == [
            (main_agent.id, agent_mxid("agent_{agent_id}", SERVER_NAME, main_agent.id))
        ]
        assert [(r.agent_id, r.mxid) for r in lab_rows] == [
            (lab_agent.id, agent_mxid("lab_agent_{agent_id}", SERVER_NAME, lab_agent.id))
        ]
        main_space = await BridgeState(main.db).get(SPACE_KEY)
        lab_space = await BridgeState(lab.db).get(SPACE_KEY)
        assert main_space != lab_space
        names = {
            main_space: INSTANCES["letta"].space_name,
            lab_space: INSTANCES["lab"].space_name,
        }
        for space, name in names.items():
            await admin_user.join(space)
            assert (await admin_user.get_state(space, "m.room.name"))["name"] == name

        # A message in the lab agent's room is answered by the lab bridge's puppet only.
        room = lab_rows[0].room_id
        assert room is not None
        await admin_user.join(room)  # bridge admins are invited to every agent room
        await admin_user.send_text(room, "hello lab")
        reply = await admin_user.wait_for_event(
            room, lambda e: e["type"] == "m.room.message" and e["sender"] == lab_rows[0].mxid
        )
        assert "hello lab" in reply["content"]["body"]
        assert [m.agent_id for m in lab_letta.message_log] == [lab_agent.id]
        assert fake_letta.message_log == []
        assert main.recent_matrix_requests and not any(
            room in path for _method, path in main.recent_matrix_requests
        )
    finally:
        await lab_letta.stop()
