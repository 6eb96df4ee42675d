"""Conversations against a real Synapse and the fake Letta, seen by real Matrix users."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from letta_appservice.app import App
from letta_appservice.chat.content import otid
from letta_appservice.db.invited_agent import InvitedAgentStore
from letta_appservice.db.room import RoomStore
from tests.harness import letta_replies as lr
from tests.harness.apps import Apps
from tests.harness.config import ADMIN
from tests.harness.conversation import (
    dm_with,
    enter,
    handled,
    new_user,
    provision,
    read_receipt,
    replies_seen,
    said_by,
    text_of,
)
from tests.harness.events import Event, by, joined, matches, reply_to
from tests.harness.fake_letta import FakeAgent, FakeLetta
from tests.harness.homeserver import Homeserver
from tests.harness.matrix_user import MatrixUser
from tests.harness.observe import eventually, joined_rooms_of, wait_until_left

# --- replies -------------------------------------------------------------------------------------


async def test_round_trip_markdown_reply_and_thread(
    database_url: str, apps: Apps, fake_letta: FakeLetta, admin_user: MatrixUser
) -> None:
    app = await apps.start(database_url)
    [helper] = await provision(app, fake_letta, "Helper")
    await enter(app, admin_user, helper.room)

    asked = await admin_user.send_text(helper.room, "Please **summarise**:\n\n- one\n- two")
    reply = await admin_user.wait_for_event(helper.room, reply_to(helper.mxid, asked))
    content = reply["content"]
    assert content["body"].startswith('Echo: [Matrix: Admin (@admin:test.local) in "Helper"]')
    assert content["format"] == "org.matrix.custom.html"
    assert "<strong>summarise</strong>" in content["formatted_body"]
    assert "<li>one</li>" in content["formatted_body"]
    assert content["m.mentions"] == {"user_ids": [ADMIN]}
    # The echo agent's reasoning is not shown by default: the reply is all the puppet said.
    assert said_by(admin_user, helper.room, helper.mxid) == [reply]
    [logged] = fake_letta.message_log
    assert logged.text == '[Matrix: Admin (@admin:test.local) in "Helper"]\n' + (
        "Please **summarise**:\n\n- one\n- two"
    )
    assert (logged.name, logged.otid) == ("admin", otid(asked, helper.fake.id))

    # In a thread, the answer stays in the thread and replies to the person's message.
    root = await admin_user.send_text(helper.room, "thread root")
    await admin_user.wait_for_event(helper.room, reply_to(helper.mxid, root))
    inner = await admin_user.send_text(helper.room, "inside", thread_root=root)
    threaded = await admin_user.wait_for_event(helper.room, reply_to(helper.mxid, inner))
    relates = threaded["content"]["m.relates_to"]
    assert (relates["rel_type"], relates["event_id"]) == ("m.thread", root)
    assert relates["is_falling_back"] is False


async def test_letta_older_than_0_6_15_is_sent_the_text_field(
    apps: Apps, fake_letta: FakeLetta, admin_user: MatrixUser, caplog: Any
) -> None:
    caplog.set_level("INFO", logger="letta_appservice")
    fake_letta.version, fake_letta.inline_streaming = "0.6.5", "ignored"
    app = await apps.start(letta={"streaming": True})
    [old] = await provision(app, fake_letta, "Old Timer")
    await enter(app, admin_user, old.room)
    asked = await admin_user.send_text(old.room, "still there?")
    reply = await admin_user.wait_for_event(old.room, reply_to(old.mxid, asked))
    assert reply["content"]["body"].endswith("still there?")
    [logged] = fake_letta.message_log
    assert text_of(logged) == "still there?"
    # The version was asked once, at start, and logged for the operator.
    assert len(fake_letta.requests_to("/v1/health/")) == 1
    assert f"Letta 0.6.5 at {fake_letta.url}" in caplog.text
    assert "older than 0.6.15: messages carry `text`" in caplog.text


async def test_reasoning_tools_and_stop_reason_notices(
    apps: Apps, fake_letta: FakeLetta, admin_user: MatrixUser
) -> None:
    app = await apps.start(bridge={"show_reasoning": "notice", "show_tools": "notice"})

    def thinker(_agent: object, _text: str) -> list[dict[str, Any]]:
        return [
            lr.reasoning("Let me look that up."),
            lr.tool_call("web_search", {"query": "matrix"}),
            lr.tool_return("Matrix is an open standard.", name="web_search"),
            lr.assistant_parts("Matrix is ", "an open standard."),
        ]

    def legacy(_agent: object, _text: str) -> list[dict[str, Any]]:
        return [lr.internal_monologue("old style"), lr.send_message_call("Hi from **0.6**")]

    thinking, old = await provision(app, fake_letta, "Thinker", "Old")
    thinking.fake.responder, thinking.fake.stop_reason = thinker, "max_steps"
    old.fake.responder = legacy
    await enter(app, admin_user, thinking.room)
    await enter(app, admin_user, old.room)

    asked = await admin_user.send_text(thinking.room, "What is Matrix?")
    await admin_user.wait_for_event(
        thinking.room,
        lambda e: (
            reply_to(thinking.mxid, asked, "m.notice")(e) and "step limit" in e["content"]["body"]
        ),
    )
    said = [e["content"] for e in said_by(admin_user, thinking.room, thinking.mxid)]
    kinds = [c["msgtype"] for c in said]
    assert kinds == ["m.notice", "m.notice", "m.notice", "m.text", "m.notice"]
    assert said[0]["formatted_body"].startswith("<details><summary>Reasoning</summary>")
    assert "Let me look that up." in said[0]["body"]
    assert "<summary>Tool call: web_search</summary>" in said[1]["formatted_body"]
    assert '"query": "matrix"' in said[1]["body"]
    assert "<summary>Tool result: web_search</summary>" in said[2]["formatted_body"]
    assert said[3]["body"] == "Matrix is an open standard."
    assert "step limit" in said[4]["body"]

    asked = await admin_user.send_text(old.room, "hello")
    reply = await admin_user.wait_for_event(old.room, reply_to(old.mxid, asked))
    assert reply["content"]["body"] == "Hi from **0.6**"
    assert "<strong>0.6</strong>" in reply["content"]["formatted_body"]
    notices = said_by(admin_user, old.room, old.mxid, "m.notice")
    assert [n["content"]["body"] for n in notices] == ["Reasoning: old style"]


# --- order and concurrency -----------------------------------------------------------------------


async def test_burst_to_one_agent_keeps_order_while_others_answer_concurrently(
    apps: Apps, fake_letta: FakeLetta, admin_user: MatrixUser
) -> None:
    app = await apps.start()
    busy, *others = await provision(app, fake_letta, "Busy", "O1", "O2", "O3", "O4", "O5")
    busy.fake.delay = 0.05
    other_ids = {o.fake.id for o in others}

    async def together(_agent: FakeAgent, _text: str) -> list[dict[str, Any]]:
        # Each turn stays in flight while it waits here: "together" means all five agents had
        # a request in flight at the same time.
        waits = (fake_letta.wait_for_in_flight(a, 1, timeout=20) for a in other_ids)
        try:
            await asyncio.gather(*waits)
        except TimeoutError:
            return [lr.assistant("alone")]
        return [lr.assistant("together")]

    for other in others:
        other.fake.responder = together
    for bridged in (busy, *others):
        await enter(app, admin_user, bridged.room)

    sent = [await admin_user.send_text(busy.room, f"message {i}") for i in range(10)]
    asked = [await admin_user.send_text(o.room, "all at once?") for o in others]
    for other, event_id in zip(others, asked, strict=True):
        reply = await admin_user.wait_for_event(other.room, reply_to(other.mxid, event_id))
        assert reply["content"]["body"] == "together"
    for event_id in sent:
        await admin_user.wait_for_event(busy.room, reply_to(busy.mxid, event_id))
    to_busy = [text_of(m) for m in fake_letta.message_log if m.agent_id == busy.fake.id]
    assert to_busy == [f"message {i}" for i in range(10)]
    assert fake_letta.max_in_flight[busy.fake.id] == 1
    assert all(fake_letta.max_in_flight[a] == 1 for a in other_ids)


# --- errors --------------------------------------------------------------------------------------


async def test_letta_500_and_409_are_retried_with_a_notice_when_it_takes_long(
    apps: Apps, fake_letta: FakeLetta, admin_user: MatrixUser
) -> None:
    # The agent's own history (conversations off): the retries are counted on its route.
    app = await apps.start(letta={"delay_notice": 1, "conversations": "off"})
    [helper] = await provision(app, fake_letta, "Helper")
    await enter(app, admin_user, helper.room)
    path = f"/v1/agents/{helper.fake.id}/messages"

    fake_letta.fail_next(2, 500, path)
    asked = await admin_user.send_text(helper.room, "are you there?")
    waiting = await admin_user.wait_for_event(
        helper.room, reply_to(helper.mxid, asked, "m.notice")
    )
    assert "internal error" in waiting["content"]["body"]
    assert "retried" in waiting["content"]["body"]
    reply = await admin_user.wait_for_event(helper.room, reply_to(helper.mxid, asked))
    assert reply["content"]["body"].endswith("are you there?")
    posts = [r for r in fake_letta.requests_to(path, "POST")]
    assert len(posts) == 3
    assert {r.json["messages"][0]["otid"] for r in posts} == {otid(asked, helper.fake.id)}

    fake_letta.fail_next(1, 409, path)
    asked = await admin_user.send_text(helper.room, "again")
    reply = await admin_user.wait_for_event(helper.room, reply_to(helper.mxid, asked))
    assert reply["content"]["body"].endswith("again")
    assert len(fake_letta.requests_to(path, "POST")) == 5
    assert replies_seen(admin_user, helper.room, helper.mxid, asked) == [reply]


async def test_errors_that_are_not_retried_and_the_retry_window(
    apps: Apps, fake_letta: FakeLetta, admin_user: MatrixUser
) -> None:
    letta = {"timeout": 1, "retry_window": 2, "delay_notice": 1, "conversations": "off"}
    app = await apps.start(letta=letta)
    down, bad, slow = await provision(app, fake_letta, "Down", "Bad", "Slow")
    slow.fake.delay = 60  # far past the 1 s timeout, however loaded the machine
    fake_letta.fail_next(100, 503, f"/v1/agents/{down.fake.id}/messages")
    fake_letta.fail_next(1, 400, f"/v1/agents/{bad.fake.id}/messages")
    for bridged in (down, bad, slow):
        await enter(app, admin_user, bridged.room)

    expected = {
        down: "Letta had an internal error (HTTP 503). Gave up after retrying for 2 s; "
        "the agent did not get this message.",
        bad: "Letta rejected the message (HTTP 400).",
        slow: "Letta did not answer within 1 s; the message was not retried.",
    }
    asked = {b: await admin_user.send_text(b.room, "hello") for b in expected}
    for bridged, text in expected.items():
        await admin_user.wait_for_event(
            bridged.room,
            lambda e, b=bridged, t=text: (
                reply_to(b.mxid, asked[b], "m.notice")(e) and e["content"]["body"] == t
            ),
        )
    # Retried within the window, the others asked only once. Whether a retry fell between
    # delay_notice and the window's end depends on the machine's speed: the "queued" notice is
    # pinned by tests/test_turn_guarantees.py on a clock of its own; here at most once, first.
    waiting = [e["content"]["body"] for e in said_by(admin_user, down.room, down.mxid)]
    assert waiting[-1] == expected[down] and len(waiting) in (1, 2)
    assert all("queued and will be retried for up to 2 s" in w for w in waiting[:-1])
    assert len(fake_letta.requests_to(f"/v1/agents/{down.fake.id}/messages", "POST")) >= 2
    assert len(fake_letta.requests_to(f"/v1/agents/{bad.fake.id}/messages", "POST")) == 1
    assert len(fake_letta.requests_to(f"/v1/agents/{slow.fake.id}/messages", "POST")) == 1
    for bridged in expected:  # nothing but notices: no answer came
        assert {
            e["content"]["msgtype"] for e in said_by(admin_user, bridged.room, bridged.mxid)
        } == {"m.notice"}


async def test_slow_letta_marks_read_and_types_until_the_reply(
    apps: Apps, fake_letta: FakeLetta, admin_user: MatrixUser
) -> None:
    app = await apps.start()
    [slow] = await provision(app, fake_letta, "Slow")
    seen_typing = asyncio.Event()  # Letta answers once the test saw the typing: no race

    async def held(agent: FakeAgent, text: str) -> list[dict[str, Any]]:
        await asyncio.wait_for(seen_typing.wait(), 60)
        return lr.echo(agent, text)

    slow.fake.responder = held
    await enter(app, admin_user, slow.room)
    asked = await admin_user.send_text(slow.room, "take your time")
    assert await admin_user.wait_for_typing(slow.room, slow.mxid, timeout=30)
    assert fake_letta.message_log == []  # still thinking while it types
    seen_typing.set()
    await admin_user.wait_for_event(slow.room, reply_to(slow.mxid, asked))
    assert await admin_user.wait_for_typing(slow.room, slow.mxid, typing=False, timeout=20)
    assert await read_receipt(admin_user, slow.room, slow.mxid) == asked


# --- streaming -----------------------------------------------------------------------------------


async def test_streaming_posts_the_first_words_then_edits(
    apps: Apps, fake_letta: FakeLetta, admin_user: MatrixUser
) -> None:
    app = await apps.start(letta={"streaming": True})
    text = "Streaming **works**: this answer arrives in many small pieces."
    streamer, broken = await provision(app, fake_letta, "Streamer", "Broken")
    streamer.fake.responder = lambda _a, _t: [lr.reasoning("hmm"), lr.assistant(text)]
    broken.fake.stream_error = "the model went away"
    fake_letta.pings = 2
    await enter(app, admin_user, streamer.room)
    await enter(app, admin_user, broken.room)

    asked = await admin_user.send_text(streamer.room, "stream please")
    first = await admin_user.wait_for_event(streamer.room, reply_to(streamer.mxid, asked))
    assert text.startswith(first["content"]["body"]) and first["content"]["body"] != text
    final = await admin_user.wait_for_event(
        streamer.room,
        lambda e: (
            e["sender"] == streamer.mxid
            and e["content"]["m.relates_to"]["rel_type"] == "m.replace"
            and e["content"]["m.new_content"]["body"] == text
        ),
    )
    assert final["content"]["m.relates_to"]["event_id"] == first["event_id"]
    assert "<strong>works</strong>" in final["content"]["m.new_content"]["formatted_body"]
    [conversation] = fake_letta.conversations_of(streamer.fake.id)  # the room's
    request = fake_letta.requests_to(f"/v1/conversations/{conversation}/messages", "POST")[0]
    assert request.json["streaming"] is True and request.json["stream_tokens"] is True

    asked = await admin_user.send_text(broken.room, "and you?")
    notice = await admin_user.wait_for_event(broken.room, reply_to(broken.mxid, asked, "m.notice"))
    assert "may be incomplete" in notice["content"]["body"]
    texts = [
        e for e in admin_user.events_seen(broken.room) if matches(reply_to(broken.mxid, asked), e)
    ]
    assert len(texts) == 1  # what was streamed before the error stays


@pytest.mark.parametrize("streaming", [False, True])
async def test_a_long_answer_arrives_whole_in_several_messages(
    streaming: bool, apps: Apps, fake_letta: FakeLetta, admin_user: MatrixUser
) -> None:
    """Far more than one event may hold: cut into messages, nothing lost, also when streamed
    (each message edited until it is complete)."""
    app = await apps.start(letta={"streaming": streaming})
    [writer] = await provision(app, fake_letta, "Writer")
    text = lr.long_text()
    writer.fake.responder = lambda _a, _t: [lr.assistant(text)]
    await enter(app, admin_user, writer.room)
    asked = await admin_user.send_text(writer.room, "write a lot")

    def latest() -> list[Event]:
        """The answer's messages as a client shows them (edits applied), in order."""
        shown: dict[str, Event] = {}
        for e in admin_user.events_seen(writer.room):
            relates = e.get("content", {}).get("m.relates_to") or {}
            if matches(reply_to(writer.mxid, asked), e):
                shown.setdefault(e["event_id"], e["content"])
            elif e["sender"] == writer.mxid and relates.get("rel_type") == "m.replace":
                shown[relates["event_id"]] = e["content"]["m.new_content"]
        return list(shown.values())

    def whole(_event: Event) -> bool:
        return "\n\n".join(c["body"] for c in latest()) == text

    await admin_user.wait_for_event(writer.room, whole)
    messages = latest()
    assert len(messages) > 3
    assert all("<strong>bold</strong>" in c["formatted_body"] for c in messages)
    first = next(e for e in admin_user.events_seen(writer.room) if matches(by(writer.mxid), e))
    assert first["content"]["m.mentions"] == {"user_ids": [ADMIN]}


async def test_a_video_gets_a_notice_and_text_still_works(
    apps: Apps, fake_letta: FakeLetta, admin_user: MatrixUser
) -> None:
    app = await apps.start()
    [helper] = await provision(app, fake_letta, "Helper")
    await enter(app, admin_user, helper.room)
    video = {"msgtype": "m.video", "body": "cat.mp4", "url": "mxc://test.local/cat"}
    shown = await admin_user.send_event(helper.room, "m.room.message", video)
    notice = await admin_user.wait_for_event(helper.room, reply_to(helper.mxid, shown, "m.notice"))
    assert notice["content"]["body"].startswith("Agents cannot watch videos")
    # Text still works (same queue, in order); the video never reached the agent.
    asked = await admin_user.send_text(helper.room, "what about words?")
    await admin_user.wait_for_event(helper.room, reply_to(helper.mxid, asked))
    assert [text_of(m) for m in fake_letta.message_log] == ["what about words?"]


async def test_a_dm_whose_agent_was_deleted_says_so_once(
    apps: Apps, fake_letta: FakeLetta, homeserver: Homeserver
) -> None:
    alice = await new_user(homeserver, "alice")
    app = await apps.start()
    [alpha] = await provision(app, fake_letta, "Alpha")
    dm = await dm_with(alice, alpha.mxid)
    del fake_letta.agents[alpha.fake.id]
    assert (await app.scheduler.run_now()).changes == {"archive": 1}

    first = await alice.send_text(dm, "are you there?")
    gone = await alice.wait_for_event(dm, reply_to(alpha.mxid, first, "m.notice"))
    assert gone["content"]["body"] == "Alpha was deleted in Letta and cannot answer any more."
    # Once: a second message gets nothing; the agent comes back (same id, same puppet) and
    # answers the next one.
    again = await alice.send_text(dm, "hello?")
    await handled(app, again)  # while the agent was still gone
    fake_letta.agents[alpha.fake.id] = alpha.fake
    assert (await app.scheduler.run_now()).changes == {"restore": 1}
    back = await alice.send_text(dm, "welcome back")
    await alice.wait_for_event(dm, reply_to(alpha.mxid, back))
    assert len(said_by(alice, dm, alpha.mxid, "m.notice")) == 1
    assert [text_of(m) for m in fake_letta.message_log] == ["welcome back"]
    await alice.close()


async def test_silence_is_told_where_a_reply_was_expected(
    apps: Apps, fake_letta: FakeLetta, homeserver: Homeserver
) -> None:
    alice, bob = await new_user(homeserver, "alice"), await new_user(homeserver, "bob")
    app = await apps.start()
    [alpha] = await provision(app, fake_letta, "Alpha")
    alpha.fake.responder = lambda _a, text: (
        [lr.assistant("noted")] if "answer" in text else [lr.reasoning("nothing to add")]
    )
    dm = await alice.create_room(
        preset="trusted_private_chat", is_direct=True, invite=[alpha.mxid]
    )
    group = await alice.create_room(preset="private_chat", invite=[bob.mxid, alpha.mxid])
    await bob.join(group)
    for room in (dm, group):
        await alice.wait_for_event(room, joined(alpha.mxid))
    rooms = RoomStore(app.db)
    row = await rooms.get(group)
    assert row is not None
    row.mode = "open"  # as `!letta mode open` sets it: every message goes to the agent
    await rooms.upsert(row)

    asked = await alice.send_text(dm, "hello")
    told = await alice.wait_for_event(dm, reply_to(alpha.mxid, asked, "m.notice"))
    assert told["content"]["body"] == "The agent finished its turn without a reply."
    # In the opened group room the agent may keep quiet unless named (same queue, in order).
    await alice.send_text(group, "just chatting")
    named = await alice.send_text(group, "Alpha, anything?")
    await alice.wait_for_event(group, reply_to(alpha.mxid, named, "m.notice"))
    last = await alice.send_text(group, "please answer")
    await alice.wait_for_event(group, reply_to(alpha.mxid, last))
    assert [e["content"]["body"] for e in said_by(alice, group, alpha.mxid)] == [
        "The agent finished its turn without a reply.",
        "noted",
    ]
    for user in (alice, bob):
        await user.close()


async def test_a_message_deleted_while_it_waits_is_not_passed_on(
    apps: Apps, fake_letta: FakeLetta, admin_user: MatrixUser
) -> None:
    app = await apps.start()
    [helper] = await provision(app, fake_letta, "Helper")
    await enter(app, admin_user, helper.room)
    # Letta holds the first answer until the redaction was handled: no race with a delay.
    redacted = asyncio.Event()

    async def held(agent: FakeAgent, text: str) -> list[dict[str, Any]]:
        await asyncio.wait_for(redacted.wait(), 60)
        return lr.echo(agent, text)

    helper.fake.responder = held
    first = await admin_user.send_text(helper.room, "first")
    await fake_letta.wait_for_in_flight(helper.fake.id, timeout=30)
    second = await admin_user.send_text(helper.room, "second, deleted")
    redaction = await admin_user.redact(helper.room, second, reason="typo")
    await handled(app, redaction)  # in the room's lane, past the agent's busy one
    redacted.set()
    await admin_user.wait_for_event(helper.room, reply_to(helper.mxid, first))
    await handled(app, second)  # the deleted one had its turn too, after the first answer
    assert [text_of(m) for m in fake_letta.message_log] == ["first"]
    assert replies_seen(admin_user, helper.room, helper.mxid, second) == []


# --- who gets answered ---------------------------------------------------------------------------


async def test_non_permitted_user_is_told_once_and_nothing_is_routed(
    apps: Apps, fake_letta: FakeLetta, homeserver: Homeserver, admin_user: MatrixUser
) -> None:
    stranger = await new_user(homeserver, "stranger")
    app = await apps.start(bridge={"permissions": {ADMIN: "admin"}})
    [helper] = await provision(app, fake_letta, "Helper")
    await enter(app, admin_user, helper.room)
    await enter(app, stranger, helper.room)
    first = await stranger.send_text(helper.room, "let me in")
    await stranger.send_text(helper.room, "please?")
    notice = await stranger.wait_for_event(helper.room, by(helper.mxid, "m.notice"))
    assert notice["content"]["body"].startswith(f"{stranger.mxid} may not talk to agents")
    assert notice["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == first
    # A permitted person's message after both is answered: both were handled by then.
    asked = await admin_user.send_text(helper.room, "I may")
    await stranger.wait_for_event(helper.room, reply_to(helper.mxid, asked))
    said = said_by(stranger, helper.room, helper.mxid)
    assert [e["content"]["msgtype"] for e in said] == ["m.notice", "m.text"]
    assert [text_of(m) for m in fake_letta.message_log] == ["I may"]
    # Nor does a puppet join a room at the stranger's invitation.
    dm = await stranger.create_room(preset="private_chat", invite=[helper.mxid])
    left = await stranger.wait_for_event(
        dm, lambda e: e["state_key"] == helper.mxid and e["content"]["membership"] == "leave"
    )
    assert "may not talk to agents" in left["content"]["reason"]
    assert await RoomStore(app.db).get(dm) is None
    await stranger.close()


async def test_dm_group_room_mentions_and_puppets_never_answer_each_other(
    apps: Apps, fake_letta: FakeLetta, homeserver: Homeserver
) -> None:
    alice, bob = await new_user(homeserver, "alice"), await new_user(homeserver, "bob")
    app = await apps.start()
    alpha, beta = await provision(app, fake_letta, "Alpha", "Beta")
    # Each names the other: were puppets' messages routed, they would answer each other.
    alpha.fake.responder = lambda _a, t: [lr.assistant(f"Beta, over to you ({t[-8:]})")]
    beta.fake.responder = lambda _a, t: [lr.assistant(f"Alpha, your turn ({t[-8:]})")]

    # A 1:1 DM: the puppet joins and answers everything.
    dm = await dm_with(alice, alpha.mxid)
    asked = await alice.send_text(dm, "hi in private")
    await alice.wait_for_event(dm, reply_to(alpha.mxid, asked))
    assert fake_letta.message_log[-1].text.startswith(
        f'[Matrix: Alice ({alice.mxid}) in "a direct'
    )

    # A group room with two people and two puppets: each answers only when named.
    group = await alice.create_room(
        preset="private_chat", name="Team", invite=[bob.mxid, alpha.mxid, beta.mxid]
    )
    await bob.join(group)
    for puppet in (alpha.mxid, beta.mxid):
        await alice.wait_for_event(group, joined(puppet))
    before = len(fake_letta.message_log)
    await alice.send_text(group, "good morning everyone")
    to_alpha = await alice.send_text(group, "Alpha, what do you think?")
    to_beta = await bob.send_text(group, "and you?", mentions=[beta.mxid])
    await alice.wait_for_event(group, reply_to(alpha.mxid, to_alpha))
    await alice.wait_for_event(group, reply_to(beta.mxid, to_beta))
    assert fake_letta.message_log[before].text.startswith(
        f'[Matrix: Alice ({alice.mxid}) in "Team"]'
    )
    # A last message (the room's lane keeps order) proves both replies were handled by then.
    last = await bob.send_text(group, "Alpha: last one")
    await alice.wait_for_event(group, reply_to(alpha.mxid, last))
    routed = [(m.agent_id, text_of(m)) for m in fake_letta.message_log[before:]]
    assert routed == [
        (alpha.fake.id, "Alpha, what do you think?"),
        (beta.fake.id, "and you?"),
        (alpha.fake.id, "Alpha: last one"),
    ]
    for user in (alice, bob):
        await user.close()


async def test_agents_leave_rooms_once_everyone_else_has(
    apps: Apps, fake_letta: FakeLetta, homeserver: Homeserver, admin_user: MatrixUser
) -> None:
    alice, bob = await new_user(homeserver, "alice"), await new_user(homeserver, "bob")
    app = await apps.start()
    [alpha] = await provision(app, fake_letta, "Alpha")
    dm = await alice.create_room(
        preset="trusted_private_chat", is_direct=True, invite=[alpha.mxid]
    )
    group = await alice.create_room(
        preset="private_chat", name="Team", invite=[bob.mxid, alpha.mxid]
    )
    for room in (dm, group):
        await alice.wait_for_event(room, joined(alpha.mxid))

    # The last person in the DM leaves: the puppet follows and the DM is forgotten.
    await alice.leave(dm)
    await wait_until_left(app, alpha.mxid, dm)
    await eventually(lambda: forgotten(app, dm))  # the row goes right after the leave

    # Alice leaves the group while Bob's invite is pending: that counts, the agent stays and
    # answers Bob once he is in. Bob leaving last makes it leave.
    await alice.leave(group)
    await bob.join(group)
    asked = await bob.send_text(group, "Alpha, are you still here?")
    await bob.wait_for_event(group, reply_to(alpha.mxid, asked))
    await bob.leave(group)
    await wait_until_left(app, alpha.mxid, group)
    await eventually(lambda: forgotten(app, group))
    assert await InvitedAgentStore(app.db).agents_in(group) == []

    # An agent room is the reconciler's: the last person leaving it changes nothing for the
    # puppet (the admin's re-invite shows the leave was handled).
    await admin_user.wait_for_invite(alpha.room)  # the reconciler's first invite
    await enter(app, admin_user, alpha.room)
    await admin_user.leave(alpha.room)
    await admin_user.wait_for_invite(alpha.room)
    assert alpha.room in await joined_rooms_of(app, alpha.mxid)
    for user in (alice, bob):
        await user.close()


async def test_paused_agent_gets_a_notice_and_cancel_stops_a_running_request(
    apps: Apps, fake_letta: FakeLetta, admin_user: MatrixUser
) -> None:
    app = await apps.start()
    [helper] = await provision(app, fake_letta, "Helper")
    await enter(app, admin_user, helper.room)
    bot = app.config.bot_mxid

    async def command(text: str) -> Event:
        sent = await admin_user.send_text(helper.room, f"!letta {text} {helper.fake.id}")
        return await admin_user.wait_for_event(helper.room, reply_to(bot, sent, "m.notice"))

    await command("pause")
    paused = await admin_user.send_text(helper.room, "anyone?")
    notice = await admin_user.wait_for_event(
        helper.room, reply_to(helper.mxid, paused, "m.notice")
    )
    assert "Helper is paused" in notice["content"]["body"]
    await command("resume")

    helper.fake.delay = 60
    slow = await admin_user.send_text(helper.room, "think hard")
    await fake_letta.wait_for_in_flight(helper.fake.id, timeout=20)
    await command("cancel")  # a command does not wait behind the agent's turn
    cancelled = await admin_user.wait_for_event(
        helper.room, reply_to(helper.mxid, slow, "m.notice")
    )
    assert cancelled["content"]["body"].startswith("Cancelled")
    helper.fake.delay = 0
    after = await admin_user.send_text(helper.room, "quick one")
    await admin_user.wait_for_event(helper.room, reply_to(helper.mxid, after))
    routed = [text_of(m) for m in fake_letta.message_log]
    assert routed == ["think hard", "quick one"]  # the paused message is never delivered


# --- exactly once --------------------------------------------------------------------------------


async def test_same_transaction_twice_and_a_handled_event_run_again_give_one_reply(
    apps: Apps, fake_letta: FakeLetta, admin_user: MatrixUser
) -> None:
    app = await apps.start()
    [helper] = await provision(app, fake_letta, "Helper")
    await enter(app, admin_user, helper.room)
    event = {
        "event_id": f"$pushed-{time.time_ns()}",
        "room_id": helper.room,
        "sender": ADMIN,
        "type": "m.room.message",
        "origin_server_ts": int(time.time() * 1000),
        "content": {"msgtype": "m.text", "body": "pushed twice"},
    }
    url = f"{app.config.appservice.address}/_matrix/app/v1/transactions"
    headers = {"Authorization": f"Bearer {app.config.appservice.hs_token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        for txn in ("t1", "t1", "t2"):  # a redelivery, then a re-batch under a new txn id
            async with http.put(f"{url}/{txn}-{event['event_id']}", json={"events": [event]}):
                pass
    await admin_user.wait_for_event(helper.room, reply_to(helper.mxid, event["event_id"]))
    await app.worker.wait_idle()
    # As after a crash before the event was marked done: it runs again, answers nothing new.
    await app.db.execute("UPDATE inbox SET state='pending' WHERE event_id=$1", event["event_id"])
    app.worker.wake()
    await app.worker.wait_idle()
    # Ignored: an edit and a notice.
    first = await admin_user.send_text(helper.room, "first")
    await admin_user.wait_for_event(helper.room, reply_to(helper.mxid, first))
    edit = {
        "msgtype": "m.text",
        "body": "* edited",
        "m.new_content": {"msgtype": "m.text", "body": "edited"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": first},
    }
    await admin_user.send_event(helper.room, "m.room.message", edit)
    await admin_user.send_text(helper.room, "just a notice", msgtype="m.notice")
    last = await admin_user.send_text(helper.room, "last")
    await admin_user.wait_for_event(helper.room, reply_to(helper.mxid, last))
    assert len(replies_seen(admin_user, helper.room, helper.mxid, event["event_id"])) == 1
    routed = [text_of(m) for m in fake_letta.message_log]
    assert routed == ["pushed twice", "first", "last"]


async def forgotten(app: App, room_id: str) -> bool:
    return await RoomStore(app.db).get(room_id) is None
