"""Context per room and media, against the real Letta 0.16.8 server: each room its own Letta
conversation (the fake LLM's RECALL answers with every user text in the agent's context),
`new`, images as image parts, files in the agent's folder, and what cannot be passed on."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from letta_appservice.chat.conversations import GONE
from tests.harness.events import joined, reply_to
from tests.harness.real_scene import WAIT, Scene, latest_text

pytestmark = pytest.mark.real_letta

# A 1x1 red PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)
PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
    b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]>>endobj\n"
    b"trailer<</Root 1 0 R>>\n%%EOF\n"
)


async def conversations(scene: Scene, agent_id: str) -> list[dict[str, Any]]:
    found = await scene.letta.call("GET", "/v1/conversations/", agent_id=agent_id)
    return [c for c in found if c.get("agent_id") == agent_id]


async def media_reply(scene: Scene, room: str, agent_id: str, event_id: str) -> str:
    reply = await scene.admin.wait_for_event(
        room, reply_to(scene.bridge.mxid(agent_id), event_id), timeout=WAIT
    )
    return str(reply["content"]["body"])


async def notice_for(scene: Scene, room: str, agent_id: str, event_id: str) -> str:
    notice = await scene.admin.wait_for_event(
        room, reply_to(scene.bridge.mxid(agent_id), event_id, "m.notice"), timeout=WAIT
    )
    return str(notice["content"]["body"])


async def final_text(scene: Scene, room: str, reply: dict[str, Any], words: str) -> str:
    """The reply as a client shows it once (streamed answers are edited) it has ``words``."""
    await scene.admin.wait_for_event(
        room, lambda _e: words in latest_text(scene.admin, room, reply), timeout=WAIT
    )
    return latest_text(scene.admin, room, reply)


# --- a conversation per room -----------------------------------------------------------------


async def test_two_rooms_with_one_agent_are_two_conversations(
    scene: Scene, sqlite_url: str
) -> None:
    agent_id = await scene.agent("Two Rooms")
    await scene.start(sqlite_url)
    room = await scene.room(agent_id)
    await scene.ask(room, agent_id, "The password is pelican.")
    puppet = scene.bridge.mxid(agent_id)
    dm = await scene.admin.create_room(
        preset="trusted_private_chat", is_direct=True, invite=[puppet]
    )
    await scene.admin.wait_for_event(dm, joined(puppet), timeout=WAIT)
    _, elsewhere = await scene.ask(dm, agent_id, "What do you remember? RECALL")
    assert elsewhere["content"]["body"].startswith("recall: ")
    assert "What do you remember?" in elsewhere["content"]["body"]
    assert "pelican" not in elsewhere["content"]["body"]
    # The agent room's own conversation still holds it.
    _, here = await scene.ask(room, agent_id, "And here? RECALL")
    assert "The password is pelican." in here["content"]["body"]
    assert len(await conversations(scene, agent_id)) == 2


async def test_new_switches_the_room_to_a_fresh_conversation(
    scene: Scene, sqlite_url: str
) -> None:
    agent_id = await scene.agent("Forgetful")
    app = await scene.start(sqlite_url)
    room = await scene.room(agent_id)
    await scene.ask(room, agent_id, "The password is heron.")
    sent = await scene.admin.send_text(room, "!letta new")
    answer = await scene.admin.wait_for_event(
        room, reply_to(app.config.bot_mxid, sent, "m.notice"), timeout=WAIT
    )
    assert answer["content"]["body"].startswith("Started a fresh conversation")
    _, reply = await scene.ask(room, agent_id, "Anything? RECALL")
    assert "Anything?" in reply["content"]["body"]
    assert "heron" not in reply["content"]["body"]
    assert len(await conversations(scene, agent_id)) == 2


async def test_threads_have_their_own_conversations_when_configured(
    scene: Scene, sqlite_url: str
) -> None:
    agent_id = await scene.agent("Threader")
    await scene.start(sqlite_url, letta={"conversations": "thread"})
    room = await scene.room(agent_id)
    root, _ = await scene.ask(room, agent_id, "The password is osprey.")
    asked = await scene.admin.send_text(room, "In the thread? RECALL", thread_root=root)
    reply = await scene.admin.wait_for_event(
        room, reply_to(scene.bridge.mxid(agent_id), asked), timeout=WAIT
    )
    assert reply["content"]["m.relates_to"]["rel_type"] == "m.thread"
    assert "In the thread?" in reply["content"]["body"]
    assert "osprey" not in reply["content"]["body"]
    assert len(await conversations(scene, agent_id)) == 2


@pytest.mark.parametrize("streaming", [False, True])
async def test_a_conversation_deleted_in_letta_is_replaced_and_the_room_told(
    scene: Scene, sqlite_url: str, streaming: bool
) -> None:
    agent_id = await scene.agent("Phoenix")
    await scene.start(sqlite_url, letta={"streaming": streaming})
    room = await scene.room(agent_id)
    await scene.ask(room, agent_id, "The password is kestrel.")
    [old] = await conversations(scene, agent_id)
    await scene.letta.call("DELETE", f"/v1/conversations/{old['id']}")
    asked, reply = await scene.ask(room, agent_id, "Still there? RECALL")
    assert "kestrel" not in await final_text(scene, room, reply, "Still there?")
    assert await notice_for(scene, room, agent_id, asked) == GONE
    [new] = await conversations(scene, agent_id)
    assert new["id"] != old["id"]
    # The room stays in the new conversation.
    _, again = await scene.ask(room, agent_id, "And now? RECALL")
    await final_text(scene, room, again, "Still there?")
    assert [c["id"] for c in await conversations(scene, agent_id)] == [new["id"]]


# --- media -------------------------------------------------------------------------------------


async def test_an_image_reaches_the_agent_as_an_image_part(scene: Scene, sqlite_url: str) -> None:
    agent_id = await scene.agent("Viewer")
    await scene.start(sqlite_url)
    room = await scene.room(agent_id)
    asked = await scene.admin.send_media(
        room, "m.image", "dot.png", PNG, "image/png", body="A red dot"
    )
    answer = await media_reply(scene, room, agent_id, asked)
    assert "(sent an image: dot.png)\nA red dot" in answer
    [conversation] = await conversations(scene, agent_id)
    stored = await scene.letta.call(
        "GET", f"/v1/conversations/{conversation['id']}/messages", limit=50
    )
    [message] = [m for m in stored if m.get("message_type") == "user_message"]
    kinds = [part.get("type") for part in message["content"]]
    assert kinds == ["text", "image"]
    assert "A red dot" in message["content"][0]["text"]


async def test_a_pdf_and_a_text_file_land_in_the_agents_folder(
    scene: Scene, sqlite_url: str
) -> None:
    agent_id = await scene.agent("Reader")
    await scene.start(sqlite_url)
    room = await scene.room(agent_id)
    text = b"The lighthouse keeper's log: calm seas.\n"
    asked = await scene.admin.send_media(room, "m.file", "notes.txt", text, "text/plain")
    answer = await media_reply(scene, room, agent_id, asked)
    assert "(sent a file: notes.txt)" in answer and "as 'notes.txt'" in answer
    asked = await scene.admin.send_media(room, "m.file", "report.pdf", PDF, "application/pdf")
    answer = await media_reply(scene, room, agent_id, asked)
    assert "(sent a file: report.pdf)" in answer and "as 'report.pdf'" in answer
    [folder] = await scene.letta.call("GET", "/v1/folders/", name=f"matrix-{agent_id}")
    files = await scene.letta.call("GET", f"/v1/folders/{folder['id']}/files")
    assert sorted(f["file_name"] for f in files) == ["notes.txt", "report.pdf"]
    attached = await scene.letta.call("GET", f"/v1/agents/{agent_id}/folders")
    assert [f["id"] for f in attached] == [folder["id"]]


async def test_media_over_the_limits_or_of_other_kinds_get_notices(
    scene: Scene, sqlite_url: str
) -> None:
    agent_id = await scene.agent("Picky")
    await scene.start(sqlite_url, media={"max_image_bytes": 1000, "max_file_bytes": 2048})
    room = await scene.room(agent_id)
    admin = scene.admin
    big = await admin.send_media(room, "m.image", "big.png", PNG + bytes(2000), "image/png")
    assert await notice_for(scene, room, agent_id, big) == (
        "This image is 2 KB; agents on this bridge take images up to 1000 bytes. It was not "
        "passed on."
    )
    # No size in the event: the download stops at the limit.
    sneaky = await admin.send_media(
        room, "m.file", "long.txt", b"x" * 5000, "text/plain", info={"mimetype": "text/plain"}
    )
    assert await notice_for(scene, room, agent_id, sneaky) == (
        "This file is over 2 KB; agents on this bridge take files up to 2 KB. It was not "
        "passed on."
    )
    program = await admin.send_media(
        room, "m.file", "setup.exe", b"MZ", "application/octet-stream"
    )
    assert (await notice_for(scene, room, agent_id, program)).startswith(
        "Letta cannot read `setup.exe`: agents take PDF, text, Markdown, JSON, CSV"
    )
    voice = await admin.send_media(room, "m.audio", "voice.ogg", b"OggS", "audio/ogg")
    assert "set media.transcription_url" in await notice_for(scene, room, agent_id, voice)
    video = await admin.send_media(room, "m.video", "clip.mp4", b"\0", "video/mp4")
    assert "cannot watch videos" in await notice_for(scene, room, agent_id, video)
    # None of them reached the agent.
    assert await conversations(scene, agent_id) == []
