"""On a Letta without the Conversations API (the fake answering 404 there): one history per
agent as before, `new` says so, images still arrive as image parts, files get a notice; voice is
transcribed by an OpenAI-compatible endpoint when one is configured."""

from __future__ import annotations

import base64

from tests.harness.apps import Apps
from tests.harness.conversation import enter, provision
from tests.harness.events import reply_to
from tests.harness.fake_letta import FakeLetta
from tests.harness.matrix_user import MatrixUser
from tests.harness.transcriber import FakeTranscriber

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)


def sent_contents(fake: FakeLetta, agent_id: str) -> list[object]:
    """The content of every user message the bridge sent to the agent's own history."""
    posts = fake.requests_to(f"/v1/agents/{agent_id}/messages", "POST")
    return [r.json["messages"][0]["content"] for r in posts]


async def test_without_conversations_the_agent_keeps_one_history(
    apps: Apps, fake_letta: FakeLetta, admin_user: MatrixUser
) -> None:
    fake_letta.has_conversations = fake_letta.has_folders = False
    app = await apps.start()
    [agent] = await provision(app, fake_letta, "Old Timer")
    await enter(app, admin_user, agent.room)
    asked = await admin_user.send_text(agent.room, "hello there")
    await admin_user.wait_for_event(agent.room, reply_to(agent.mxid, asked))
    sent = await admin_user.send_text(agent.room, "!letta new")
    answer = await admin_user.wait_for_event(
        agent.room, reply_to(app.config.bot_mxid, sent, "m.notice")
    )
    assert answer["content"]["body"].startswith("Agents here keep one history")
    # An image goes to the agent's one history as an image part.
    shown = await admin_user.send_media(
        agent.room, "m.image", "dot.png", PNG, "image/png", body="Look"
    )
    await admin_user.wait_for_event(agent.room, reply_to(agent.mxid, shown))
    first, image = sent_contents(fake_letta, agent.fake.id)
    assert isinstance(first, str) and first.endswith("\nhello there")
    assert isinstance(image, list) and [p["type"] for p in image] == ["text", "image"]
    assert image[0]["text"].endswith("\n(sent an image: dot.png)\nLook")
    assert image[1]["source"] == {
        "type": "base64",
        "media_type": "image/png",
        "data": base64.b64encode(PNG).decode(),
    }
    # Nothing went to a conversation (the one request there asked whether they exist).
    assert [r.method for r in fake_letta.requests if "/conversations" in r.path] == ["GET"]
    # A server without folders cannot take files: the person is told.
    doc = await admin_user.send_media(agent.room, "m.file", "notes.txt", b"hi", "text/plain")
    notice = await admin_user.wait_for_event(agent.room, reply_to(agent.mxid, doc, "m.notice"))
    assert (
        notice["content"]["body"] == "This Letta server cannot take files; paste the text instead."
    )


async def test_voice_is_transcribed_when_an_endpoint_is_configured(
    apps: Apps, fake_letta: FakeLetta, admin_user: MatrixUser
) -> None:
    transcriber = FakeTranscriber("Meet me at the harbour.")
    url = await transcriber.start()
    try:
        media = {"transcription_url": url, "transcription_key": "sk-test-transcribe"}
        fake_letta.has_conversations = False
        app = await apps.start(media=media)
        [agent] = await provision(app, fake_letta, "Listener")
        await enter(app, admin_user, agent.room)
        voice = await admin_user.send_media(
            agent.room, "m.audio", "voice.ogg", b"OggS-voice", "audio/ogg"
        )
        await admin_user.wait_for_event(agent.room, reply_to(agent.mxid, voice))
    finally:
        await transcriber.stop()
    [said] = sent_contents(fake_letta, agent.fake.id)
    assert said == (
        '[Matrix: Admin (@admin:test.local) in "Listener"]\n(sent a voice message: voice.ogg)\n'
        "(transcribed) Meet me at the harbour."
    )
    [heard] = transcriber.received
    assert heard["bytes"] == b"OggS-voice" and heard["filename"] == "voice.ogg"
    assert heard["authorization"] == "Bearer sk-test-transcribe"
