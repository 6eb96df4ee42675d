"""What of a media message may reach an agent, decided from the event alone (pure), and the
room -> Letta conversation mapping on SQLite and PostgreSQL, with the fake Letta as a server
without conversations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from letta_appservice.chat.conversations import RoomConversations
from letta_appservice.chat.media import Media, describe, media_of, refusal
from letta_appservice.config.media import MediaConfig
from letta_appservice.db.database import DatabaseURL, open_database
from letta_appservice.db.letta_conversation import LettaConversationStore
from letta_appservice.letta import LettaClient
from letta_appservice.letta.conversations import TurnCalls
from tests.harness.fake_letta import FakeLetta

MB = 1024 * 1024


def event(msgtype: str, body: str, **extra: Any) -> dict[str, Any]:
    return {"msgtype": msgtype, "body": body, "url": "mxc://hs/abc", **extra}


def test_a_caption_is_the_body_beside_a_filename_and_a_picture_file_is_an_image() -> None:
    media = media_of(event("m.file", "look at this", filename="cat.PNG"))
    assert media == Media("image", "mxc://hs/abc", "cat.PNG", "image/png", None, "look at this")
    assert describe(media) == "(sent an image: cat.PNG)\nlook at this"
    plain = media_of(event("m.file", "notes.md", info={"mimetype": "text/markdown", "size": 9}))
    assert plain == Media("file", "mxc://hs/abc", "notes.md", "text/markdown", 9, "")
    assert describe(plain) == "(sent a file: notes.md)"
    assert media_of({"msgtype": "m.image", "body": "x.png", "file": {}}) is None  # encrypted
    assert media_of(event("m.text", "hello")) is None


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (event("m.image", "a.png", info={"mimetype": "image/png", "size": 5 * MB}), None),
        (
            event("m.image", "a.png", info={"mimetype": "image/png", "size": 5 * MB + 1}),
            "This image is 5 MB; agents on this bridge take images up to 5 MB. It was not "
            "passed on.",
        ),
        (
            event("m.image", "a.bmp", info={"mimetype": "image/bmp"}),
            "Agents take PNG, JPEG, GIF and WebP images, not image/bmp; it was not passed on.",
        ),
        (event("m.file", "report.pdf"), None),
        (
            event("m.file", "big.csv", info={"size": 30 * MB}),
            "This file is 30 MB; agents on this bridge take files up to 20 MB. It was not "
            "passed on.",
        ),
        (
            event("m.file", "archive.zip"),
            "Letta cannot read `archive.zip`: agents take PDF, text, Markdown, JSON, CSV and "
            "source code files. It was not passed on.",
        ),
        (event("m.video", "clip.mp4"), "Agents cannot watch videos"),
        (
            event("m.audio", "voice.ogg"),
            "Agents cannot listen to voice or audio messages here: Letta takes no audio, and "
            "this bridge has no transcription set up (an admin can set "
            "media.transcription_url to an OpenAI-compatible speech-to-text API).",
        ),
    ],
)
def test_limits_and_types(content: dict[str, Any], expected: str | None) -> None:
    media = media_of(content)
    assert media is not None
    why = refusal(media, MediaConfig())
    if expected is None:
        assert why is None
    else:  # the whole notice, or how it begins
        assert why is not None and why.startswith(expected)


def test_switches_and_transcription() -> None:
    off = MediaConfig(images=False, files=False)
    image, doc = media_of(event("m.image", "a.png")), media_of(event("m.file", "a.txt"))
    assert image is not None and doc is not None
    assert (
        refusal(image, off)
        == "Images are not passed to agents on this bridge; describe it in words."
    )
    assert (
        refusal(doc, off)
        == "Files are not passed to agents on this bridge; paste the text instead."
    )
    voice = media_of(event("m.audio", "v.ogg", info={"size": 30 * MB}))
    assert voice is not None
    heard = MediaConfig(transcription_url="http://stt.test/v1")
    assert refusal(voice, heard) == (
        "This voice message is 30 MB; agents on this bridge take voice messages up to 25 MB. "
        "It was not passed on."
    )


async def test_a_room_keeps_its_conversation_until_new(database_url: str) -> None:
    db = await open_database(DatabaseURL.parse(database_url), in_child=False)
    store = LettaConversationStore(db)
    try:
        await store.put("agent-1", "!a:hs", "", "conv-1")
        await store.put("agent-1", "!a:hs", "$thread", "conv-2")
        await store.put("agent-2", "!a:hs", "", "conv-3")
        await store.put("agent-1", "!b:hs", "", "conv-4")
        assert await store.get("agent-1", "!a:hs") == "conv-1"
        await store.put("agent-1", "!a:hs", "", "conv-5")  # replaced, not duplicated
        assert await store.get("agent-1", "!a:hs") == "conv-5"
        await store.forget("!a:hs", "agent-1")  # threads too; other agents and rooms stay
        assert await store.get("agent-1", "!a:hs") is None
        assert await store.get("agent-1", "!a:hs", "$thread") is None
        assert await store.get("agent-2", "!a:hs") == "conv-3"
        await store.forget("!a:hs")
        assert await store.get("agent-2", "!a:hs") is None
        assert await store.get("agent-1", "!b:hs") == "conv-4"
    finally:
        await db.stop()


async def test_a_server_without_conversations_is_asked_once(
    fake_letta: FakeLetta, tmp_path: Path
) -> None:
    db = await open_database(DatabaseURL.parse(f"sqlite:{tmp_path / 'c.db'}"), in_child=False)
    client = LettaClient(fake_letta.url, timeout=10)
    rooms = RoomConversations(TurnCalls(client), LettaConversationStore(db), "room")
    fake_letta.has_conversations = False  # a 0.16.2+ version that answers 404 there
    try:
        assert await rooms.of("agent-1", "!a:hs", {}) is None
        assert await rooms.of("agent-1", "!b:hs", {}) is None
        assert await rooms.start_fresh("!a:hs") is False
        asked = [r.path for r in fake_letta.requests if "conversations" in r.path]
        assert asked == ["/v1/conversations/"]
        # Old by its version: not even asked.
        fake_letta.version = "0.16.1"
        old = RoomConversations(TurnCalls(LettaClient(fake_letta.url)), rooms.store, "room")
        assert await old.of("agent-1", "!a:hs", {}) is None
        assert len([r for r in fake_letta.requests if "conversations" in r.path]) == 1
        await old.calls.client.close()
    finally:
        await client.close()
        await db.stop()
