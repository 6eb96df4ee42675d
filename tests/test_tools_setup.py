"""The Matrix tools' own code as Letta gets it, and a Letta server without the tool API (the
fake Letta: the real one has it; tests/test_tools.py covers what the tools do)."""

from __future__ import annotations

import ast
from typing import Any

import aiohttp

from letta_appservice.db.agent_tool import AgentToolRow, AgentToolStore
from letta_appservice.db.database import DatabaseURL, open_database
from letta_appservice.tools.source import NAMES, SOURCES
from tests.harness.apps import Apps
from tests.harness.conversation import enter, provision
from tests.harness.fake_letta import FakeLetta
from tests.harness.matrix_user import MatrixUser


def test_each_tool_is_one_stdlib_function_documenting_its_arguments() -> None:
    assert NAMES == (
        "matrix_list_rooms",
        "matrix_read_room",
        "matrix_send_message",
        "matrix_message_person",
        "matrix_talk_to_agent",
    )
    for name, source in SOURCES.items():
        [function] = ast.parse(source).body
        assert isinstance(function, ast.FunctionDef) and function.name == name
        doc = ast.get_docstring(function) or ""
        for arg in function.args.args:
            assert f"\n    {arg.arg}: " in doc, (name, arg.arg)
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(function)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        assert imported == {"json", "os", "urllib"}


async def test_a_letta_without_the_tool_api_gets_no_tools_and_one_log_line(
    apps: Apps, fake_letta: FakeLetta, caplog: Any
) -> None:
    caplog.set_level("INFO", logger="letta_appservice")
    app = await apps.start(tools={"agents": "all"})
    await provision(app, fake_letta, "Plain")
    await app.scheduler.run_now()
    await app.scheduler.run_now()
    lines = [r for r in caplog.records if "has no custom-tool API" in r.getMessage()]
    assert len(lines) == 1
    # Nothing was written to Letta for it; the agent still talks (conversation tests).
    assert not [r for r in fake_letta.requests if r.method in ("PUT", "PATCH")]


async def test_tool_rows_and_direct_chats_are_stored(database_url: str) -> None:
    db = await open_database(DatabaseURL.parse(database_url), in_child=False)
    try:
        store = AgentToolStore(db)
        await store.upsert(AgentToolRow("agent-1", "ab" * 32, None, "v1"))
        await store.upsert(AgentToolRow("agent-2", None, False, None))
        await store.upsert(AgentToolRow("agent-1", "cd" * 32, True, "v2"))
        assert await store.get("agent-1") == AgentToolRow("agent-1", "cd" * 32, True, "v2")
        assert (await store.all())["agent-2"] == AgentToolRow("agent-2", None, False, None)
        assert await store.dm("agent-1", "@a:x") is None
        await store.set_dm("agent-1", "@a:x", "!old:x")
        await store.set_dm("agent-1", "@a:x", "!new:x")
        assert await store.dm("agent-1", "@a:x") == "!new:x"
    finally:
        await db.stop()


async def test_a_script_posts_as_an_agent_with_the_send_token(
    apps: Apps, fake_letta: FakeLetta, admin_user: MatrixUser
) -> None:
    token = "s3nd-token-for-scripts"
    app = await apps.start(tools={"send_token": token})
    [notifier] = await provision(app, fake_letta, "Notifier")
    await enter(app, admin_user, notifier.room)
    url = f"http://127.0.0.1:{app.config.appservice.port}/_letta_appservice/send"
    body = {"agent": "Notifier", "room": notifier.room, "text": "Deploy **finished**"}

    async def post(auth: str | None, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {auth}"} if auth is not None else {}
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json=payload, headers=headers) as resp:
                return resp.status, await resp.json()

    assert (await post("wrong-token-wrong-token", {**body, "text": "forged"}))[0] == 403
    assert (await post(None, {**body, "text": "forged"}))[0] == 403
    status, answer = await post(token, {**body, "room": "!elsewhere:test.local"})
    assert status == 400 and "not a member" in answer["error"]
    status, answer = await post(token, body)
    assert status == 200 and answer["room_id"] == notifier.room
    posted = await admin_user.wait_for_event(
        notifier.room, lambda e: e["event_id"] == answer["event_id"]
    )
    assert posted["sender"] == notifier.mxid
    assert "Deploy <strong>finished</strong>" in posted["content"]["formatted_body"]
    assert posted["content"]["org.letta.appservice"]["api"] == "send"
    bodies = [e["content"].get("body") for e in admin_user.events_seen(notifier.room)]
    assert "forged" not in bodies
