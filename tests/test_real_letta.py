"""What people do, against the real Letta 0.16.8 server (tests/harness/real_letta.py) with its
deterministic fake LLM, a real Synapse and the appservice. Agents are made through Letta's own
API; each test tags its agents and bridges only those (`letta.filter_tags`)."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest

from letta_appservice.app import App
from tests.harness.events import member_is, reply_to
from tests.harness.real_letta import RealLetta
from tests.harness.real_scene import (
    WAIT,
    Scene,
    echo_of,
    latest_text,
    poll,
    replies,
    user_messages,
)

pytestmark = pytest.mark.real_letta

ARCHIVED_NOTICE = "This agent was deleted in Letta; the room is archived."


async def connection_errors(app: App) -> float:
    """Letta requests that failed to connect, per the bridge's /metrics."""
    url = f"http://127.0.0.1:{app.config.appservice.port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        text = await resp.text()
    prefix = 'letta_appservice_letta_errors_total{kind="connection"} '
    return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


# --- discovery -----------------------------------------------------------------------------


async def test_agents_made_in_letta_appear_in_matrix_across_many_pages(
    scene: Scene, sqlite_url: str
) -> None:
    """125 agents made through Letta's API, listed in pages of 40: each gets its puppet (named
    after the agent) and its room in the space, once."""
    names = [f"Fleet {i:03d}" for i in range(125)]
    limit = asyncio.Semaphore(4)

    async def make(name: str) -> str:
        async with limit:
            return await scene.agent(name)

    ids = await asyncio.gather(*(make(n) for n in names))
    await scene.start(sqlite_url, letta={"page_size": 40})
    admin = scene.admin
    space = await admin.resolve_alias(scene.bridge.space_alias)
    assert space is not None
    await admin.join(space)
    children = {
        e["state_key"]
        for e in await admin.room_state(space)
        if e["type"] == "m.space.child" and e["content"].get("via")
    }
    rooms = {}
    for agent_id, name in zip(ids, names, strict=True):
        room = await admin.resolve_alias(scene.bridge.alias(agent_id))
        assert room is not None, f"{name} has no room"
        rooms[agent_id] = room
        profile = await admin.request(
            "GET", f"/_matrix/client/v3/profile/{scene.bridge.mxid(agent_id)}"
        )
        assert profile["displayname"] == name
    assert set(rooms.values()) == children  # each in the space, nothing else, nothing twice
    assert len(children) == 125


# --- conversations -------------------------------------------------------------------------


async def test_a_message_gets_the_agents_answer(scene: Scene, sqlite_url: str) -> None:
    agent_id = await scene.agent("Plain Echo")
    await scene.start(sqlite_url)
    room = await scene.room(agent_id)
    _, reply = await scene.ask(room, agent_id, "Hello, real Letta!")
    assert reply["content"]["body"] == echo_of("Hello, real Letta!", "Plain Echo")
    assert reply["content"]["m.mentions"] == {"user_ids": [scene.admin.mxid]}
    # The agent keeps the conversation: the second answer comes from the same history.
    _, reply = await scene.ask(room, agent_id, "And again.")
    assert reply["content"]["body"] == echo_of("And again.", "Plain Echo")
    assert await user_messages(scene.letta, agent_id, "Hello, real Letta!") == 1


async def test_a_streamed_answer_reads_the_same(scene: Scene, sqlite_url: str) -> None:
    agent_id = await scene.agent("Streamer")
    app = await scene.start(sqlite_url, letta={"streaming": True})
    room = await scene.room(agent_id)
    asked, reply = await scene.ask(room, agent_id, "Stream this, please.")
    expected = echo_of("Stream this, please.", "Streamer")
    # Streamed answers are posted at once and then edited: wait for the final words.
    await scene.admin.wait_for_event(
        room, lambda _e: latest_text(scene.admin, room, reply) == expected, timeout=WAIT
    )
    assert len(replies(scene.admin, room, scene.bridge.mxid(agent_id), asked)) == 1
    # Letta 0.16.8 streams inline only for clients it counts as v1 SDKs (else 422).
    assert app.letta.legacy_streaming is False


# --- tools ---------------------------------------------------------------------------------

SEARCH = 'CALL conversation_search {"query": "lighthouse"}'


async def test_tool_calls_are_shown_as_notices_when_configured(
    scene: Scene, sqlite_url: str
) -> None:
    agent_id = await scene.agent("Searcher")
    await scene.start(sqlite_url, bridge={"show_tools": "notice"})
    room = await scene.room(agent_id)
    puppet = scene.bridge.mxid(agent_id)
    await scene.ask(room, agent_id, "Remember the lighthouse.")
    asked, reply = await scene.ask(room, agent_id, f"Search for it: {SEARCH}")
    said = replies(scene.admin, room, puppet, asked)
    kinds = [(e["content"]["msgtype"], e["content"]["body"].split("\n")[0]) for e in said]
    assert [k for k, _ in kinds] == ["m.notice", "m.notice", "m.text"]
    call, result = (e["content"] for e in said[:2])
    assert "<summary>Tool call: conversation_search</summary>" in call["formatted_body"]
    assert '"query": "lighthouse"' in call["body"]
    assert "<summary>Tool result: conversation_search</summary>" in result["formatted_body"]
    assert "Remember the lighthouse." in result["body"]  # what the search found
    assert reply["content"]["body"].startswith("tool result:")


async def test_tool_calls_are_not_shown_by_default(scene: Scene, sqlite_url: str) -> None:
    agent_id = await scene.agent("Quiet Searcher")
    await scene.start(sqlite_url)
    room = await scene.room(agent_id)
    asked, reply = await scene.ask(room, agent_id, f"Search: {SEARCH}")
    assert reply["content"]["body"].startswith("tool result:")
    assert replies(scene.admin, room, scene.bridge.mxid(agent_id), asked) == [reply]
    assert "conversation_search" in await scene.letta.tools(agent_id)


# --- changes in Letta reaching Matrix --------------------------------------------------------


async def test_a_rename_in_letta_renames_the_puppet_and_the_room(
    scene: Scene, sqlite_url: str
) -> None:
    agent_id = await scene.agent("Before")
    await scene.start(sqlite_url)
    room = await scene.room(agent_id)
    await scene.letta.rename(agent_id, "After")
    await scene.sync(room)
    named = await scene.admin.wait_for_event(
        room, lambda e: e["type"] == "m.room.name" and e["content"]["name"] == "After", WAIT
    )
    assert named["state_key"] == ""
    puppet = scene.bridge.mxid(agent_id)
    await scene.admin.wait_for_event(
        room,
        lambda e: member_is(puppet, "join")(e) and e["content"]["displayname"] == "After",
        WAIT,
    )
    # The agent answers under its new name (the attribution names the renamed room).
    _, reply = await scene.ask(room, agent_id, "Who are you now?")
    assert reply["content"]["body"] == echo_of("Who are you now?", "After")


async def test_a_deletion_in_letta_archives_the_room(scene: Scene, sqlite_url: str) -> None:
    agent_id = await scene.agent("Doomed")
    await scene.start(sqlite_url)
    room = await scene.room(agent_id)
    await scene.ask(room, agent_id, "Still here?")
    await scene.letta.delete(agent_id)
    await scene.sync(room)
    puppet = scene.bridge.mxid(agent_id)
    await scene.admin.wait_for_event(
        room, lambda e: e["sender"] == puppet and e["content"]["body"] == ARCHIVED_NOTICE, WAIT
    )
    await scene.admin.wait_for_event(
        room,
        lambda e: e["type"] == "m.room.name" and e["content"]["name"] == "Doomed (archived)",
        WAIT,
    )
    space = await scene.admin.resolve_alias(scene.bridge.space_alias)
    assert space is not None
    await scene.admin.join(space)
    children = [
        e["state_key"]
        for e in await scene.admin.room_state(space)
        if e["type"] == "m.space.child" and e["content"].get("via")
    ]
    assert room not in children


# --- Letta going away ----------------------------------------------------------------------


async def test_a_message_sent_while_letta_restarts_is_answered_once_it_is_back(
    scene: Scene, sqlite_url: str, real_letta: RealLetta
) -> None:
    agent_id = await scene.agent("Patient")
    app = await scene.start(sqlite_url)
    room = await scene.room(agent_id)
    await scene.ask(room, agent_id, "Before the restart.")
    puppet = scene.bridge.mxid(agent_id)
    await real_letta.stop_letta()
    try:
        asked = await scene.admin.send_text(room, "While Letta is down.")
        # The bridge has tried (and failed) before Letta comes back.
        await poll(lambda: connection_errors(app))
    finally:
        await real_letta.start_letta()
    reply = await scene.admin.wait_for_event(room, reply_to(puppet, asked), timeout=WAIT)
    assert reply["content"]["body"] == echo_of("While Letta is down.", "Patient")
    _, after = await scene.ask(room, agent_id, "After the restart.")
    assert after["content"]["body"] == echo_of("After the restart.", "Patient")
    # Answered once; a slow machine may also have seen the "queued, will be retried" notice.
    assert len(replies(scene.admin, room, puppet, asked, "m.text")) == 1
    assert await user_messages(scene.letta, agent_id, "While Letta is down.") == 1


async def test_letta_killed_in_the_middle_of_a_turn_answers_once_it_is_back(
    scene: Scene, sqlite_url: str, real_letta: RealLetta
) -> None:
    agent_id = await scene.agent("Survivor")
    await scene.start(sqlite_url)
    room = await scene.room(agent_id)
    puppet = scene.bridge.mxid(agent_id)
    # The fake LLM takes 8 s over this one: Letta is killed while it waits.
    text = "Think hard about this. SLEEP 8"
    asked = await scene.admin.send_text(room, text)
    assert await scene.admin.wait_for_typing(room, puppet, timeout=WAIT)
    await real_letta.stop_letta(signal.SIGKILL)
    await real_letta.start_letta()
    reply = await scene.admin.wait_for_event(room, reply_to(puppet, asked), timeout=WAIT)
    assert reply["content"]["body"] == echo_of(text, "Survivor")
    _, after = await scene.ask(room, agent_id, "Are you all right?")
    assert after["content"]["body"] == echo_of("Are you all right?", "Survivor")
    # One answer (a notice may have said meanwhile that the message is queued).
    assert replies(scene.admin, room, puppet, asked, "m.text") == [reply]


async def test_cancel_stops_a_running_turn_and_the_agent_takes_the_next_message(
    scene: Scene, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    agent_id = await scene.agent("Ponderer")
    app = await scene.start(sqlite_url)
    room = await scene.room(agent_id)
    puppet, bot = scene.bridge.mxid(agent_id), app.config.bot_mxid

    async def command(text: str) -> str:
        sent = await scene.admin.send_text(room, f"!letta {text} {agent_id}")
        answer = await scene.admin.wait_for_event(room, reply_to(bot, sent, "m.notice"), WAIT)
        return str(answer["content"]["body"])

    # Nothing running: Letta 0.16.8 answers 409, which is no error (and not worth retrying).
    assert "had no request running here" in await command("cancel")
    assert "could not cancel" not in caplog.text
    slow = await scene.admin.send_text(room, "Take your time. SLEEP 60")
    assert await scene.admin.wait_for_typing(room, puppet, timeout=WAIT)
    assert (await command("cancel")).startswith("Cancelled")
    cancelled = await scene.admin.wait_for_event(room, reply_to(puppet, slow, "m.notice"), WAIT)
    assert cancelled["content"]["body"].startswith("Cancelled")
    _, reply = await scene.ask(room, agent_id, "Quick one.")
    assert reply["content"]["body"] == echo_of("Quick one.", "Ponderer")
