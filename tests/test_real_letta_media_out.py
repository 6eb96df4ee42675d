"""Images and files agents give, against the real Letta 0.16.8 server: Letta answers in text
only, so they arrive as Markdown (a tool's data: URI, a link to the Letta server); the bridge
posts them as m.image / m.file after the text, and never a link to the Letta server."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tests.harness.events import reply_to
from tests.harness.real_scene import WAIT, Scene, latest_text, replies

pytestmark = pytest.mark.real_letta

# A 1x1 red PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)
DOT_TOOL = f'''
def draw_dot() -> str:
    """Draw a red dot.

    Returns:
        str: the picture, as Markdown
    """
    return "Here it is: ![red dot](data:image/png;base64,{base64.b64encode(PNG).decode()})"
'''


async def posted(scene: Scene, room: str, agent_id: str, asked: str, msgtype: str) -> Any:
    return await scene.admin.wait_for_event(
        room, reply_to(scene.bridge.mxid(agent_id), asked, msgtype), timeout=WAIT
    )


@pytest.mark.parametrize("streaming", [False, True])
async def test_an_image_a_tool_makes_is_posted_as_an_image(
    scene: Scene, sqlite_url: str, streaming: bool
) -> None:
    agent_id = await scene.agent("Painter")
    await scene.letta.add_tool(agent_id, DOT_TOOL)
    await scene.start(sqlite_url, letta={"streaming": streaming})
    room = await scene.room(agent_id)
    asked, reply = await scene.ask(room, agent_id, "CALL draw_dot {}")
    image = await posted(scene, room, agent_id, asked, "m.image")
    assert image["content"]["body"] == "red dot.png"
    assert image["content"]["info"] == {"mimetype": "image/png", "size": len(PNG)}
    assert await scene.admin.download(image["content"]["url"]) == (PNG, "image/png")
    # The text (the fake LLM repeats the tool's result) names it instead of the data.
    await scene.admin.wait_for_event(
        room, lambda _e: "[image: red dot]" in latest_text(scene.admin, room, reply), timeout=WAIT
    )
    assert "base64" not in latest_text(scene.admin, room, reply)
    # The tool's image and the answer repeating it: posted once.
    puppet = scene.bridge.mxid(agent_id)
    assert len(replies(scene.admin, room, puppet, asked, "m.image")) == 1


async def test_links_to_the_letta_server_are_fetched_or_named_never_linked(
    scene: Scene, sqlite_url: str
) -> None:
    agent_id = await scene.agent("Linker")
    await scene.start(sqlite_url)
    room = await scene.room(agent_id)
    letta = scene.letta.url
    # The fake LLM echoes the message: its answer links to these.
    asked, reply = await scene.ask(
        room,
        agent_id,
        f"See [status]({letta}/v1/health/) and ![chart]({letta}/v1/nothing/chart.png).",
    )
    body = reply["content"]["body"]
    assert "See [file: status] and [image: chart]." in body
    assert letta not in body and letta not in reply["content"].get("formatted_body", "")
    status = await posted(scene, room, agent_id, asked, "m.file")
    assert status["content"]["body"] == "status.json"
    data, _ = await scene.admin.download(status["content"]["url"])
    assert b'"status":"ok"' in data.replace(b" ", b"")
    notice = await posted(scene, room, agent_id, asked, "m.notice")
    assert notice["content"]["body"] == (
        "“chart” (from the agent's answer) could not be posted: Letta did not give it (HTTP 404)."
    )
