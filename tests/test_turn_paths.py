"""A turn's other paths without a homeserver (tests/harness/turns.py): the deadline, an admin's
cancel, notices posted once, typing and receipts, the retry policy's numbers and settings."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from pathlib import Path
from urllib.parse import unquote

import attrs
import pytest

from letta_appservice.chat import poster as poster_module
from letta_appservice.chat.content import CONTEXT_GONE_PART, otid
from letta_appservice.chat.conversations import GONE
from letta_appservice.chat.media import BROKEN, FILE, IMAGE, Media
from letta_appservice.chat.parts import NO_REPLY, Part
from letta_appservice.chat.poster import (
    TYPING_TIMEOUT_MS,
    Poster,
    Typing,
    homeserver_backoff,
)
from letta_appservice.chat.turn import CANCELLED, DECIDED_IN_VAIN, TurnSettings, backoff
from letta_appservice.inbox.worker import Retry
from letta_appservice.letta.approvals import Decision, approval_message
from tests.harness import letta_replies as lr
from tests.harness.fake_letta import FakeLetta
from tests.harness.observe import eventually
from tests.harness.routing import config as routing_config
from tests.harness.turns import ROOM, SENDER, PuppetApi, Turns, turns_setup, txn


def test_backoffs_double_up_to_a_minute() -> None:
    assert [backoff(a) for a in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert [homeserver_backoff(a) for a in range(7)] == [2, 4, 8, 16, 32, 60, 60]


def test_turn_settings_come_from_the_config() -> None:
    raw = routing_config()
    letta = {"streaming": True, "timeout": 7.0, "retry_window": 70.0, "delay_notice": 8.0,
             "max_concurrency": 3}  # fmt: skip
    config = attrs.evolve(
        raw,
        letta=attrs.evolve(raw.letta, **letta),
        bridge=attrs.evolve(raw.bridge, show_reasoning="notice", show_tools="notice"),
        guards=attrs.evolve(raw.guards, turn_deadline=99.0),
    )
    settings = TurnSettings.from_config(config)
    assert settings == TurnSettings(True, "notice", "notice", 7.0, 70.0, 8.0, 3, 99.0)
    assert settings == TurnSettings(
        streaming=config.letta.streaming,
        show_reasoning=config.bridge.show_reasoning,
        show_tools=config.bridge.show_tools,
        timeout=config.letta.timeout,
        retry_window=config.letta.retry_window,
        delay_notice=config.letta.delay_notice,
        max_concurrency=config.letta.max_concurrency,
        deadline=config.guards.turn_deadline,
    )


async def test_a_turn_past_its_deadline_is_cancelled_in_letta_and_said_so(
    tmp_path: Path, fake_letta: FakeLetta
) -> None:
    async with turns_setup(tmp_path, fake_letta, deadline=0.3) as t:
        fake_agent = fake_letta.add_agent("Slow", delay=120)
        job = t.job(t.agent(fake_agent))
        await t.conversations.answer(job)
        [(_, content)] = t.api.sent
        notice = content["body"]
        assert notice.startswith("The agent did not finish within 0 s; the bridge stopped")
        assert content["msgtype"] == "m.notice"
        assert fake_letta.requests_to(f"/v1/agents/{fake_agent.id}/messages/cancel", "POST")
        stored = await t.turns.get(job.event_id, fake_agent.id)
        assert stored is not None and stored[-1]["body"] == notice


async def test_an_admins_cancel_stops_the_wait_and_says_so(
    tmp_path: Path, fake_letta: FakeLetta
) -> None:
    async with turns_setup(tmp_path, fake_letta) as t:
        fake_agent = fake_letta.add_agent("Slow", delay=120)
        assert not await t.conversations.cancel(fake_agent.id)  # nothing running: no error
        job = t.job(t.agent(fake_agent))
        answer = asyncio.create_task(t.conversations.answer(job))
        await fake_letta.wait_for_in_flight(fake_agent.id, timeout=30)
        assert await t.conversations.cancel(fake_agent.id)
        await asyncio.wait_for(answer, 30)
        assert t.api.bodies() == [CANCELLED]
        assert t.api.sent[0][1]["msgtype"] == "m.notice"
        cancels = fake_letta.requests_to(f"/v1/agents/{fake_agent.id}/messages/cancel", "POST")
        assert len(cancels) == 2


@pytest.mark.parametrize(
    ("status", "notice"),
    [
        (400, "Letta rejected the message (HTTP 400)."),
        (404, "This agent does not exist in Letta any more."),
        (401, "Letta refused the bridge's credentials (HTTP 401); an admin must check them."),
    ],
)
async def test_letta_errors_that_will_not_pass_become_a_notice_without_retry(
    tmp_path: Path, fake_letta: FakeLetta, status: int, notice: str
) -> None:
    async with turns_setup(tmp_path, fake_letta) as t:
        fake_agent = fake_letta.add_agent("Picky")
        fake_letta.fail_next(1, status, f"/v1/agents/{fake_agent.id}/messages")
        await t.conversations.answer(t.job(t.agent(fake_agent)))
        assert t.api.bodies() == [notice]


async def test_letta_not_answering_in_time_is_said_once_and_not_retried(
    tmp_path: Path, fake_letta: FakeLetta
) -> None:
    async with turns_setup(tmp_path, fake_letta, letta_timeout=0.5, timeout=2) as t:
        fake_agent = fake_letta.add_agent("Slow", delay=30)
        await t.conversations.answer(t.job(t.agent(fake_agent)))  # no Retry raised
        [(_, content)] = t.api.sent
        assert content["msgtype"] == "m.notice"
        assert content["body"] == "Letta did not answer within 2 s; the message was not retried."


@pytest.mark.parametrize("streaming", [False, True])
async def test_letta_gets_each_message_under_its_own_stable_id_and_the_senders_name(
    tmp_path: Path, fake_letta: FakeLetta, streaming: bool
) -> None:
    async with turns_setup(tmp_path, fake_letta, streaming=streaming) as t:
        agent = t.agent(fake_letta.add_agent("Helper"))
        jobs = [t.job(agent, "one"), t.job(agent, "two")]
        for job in jobs:
            await t.conversations.answer(job)
        # The id Letta deduplicates a retried message by: the event's and the agent's own.
        assert [m.otid for m in fake_letta.message_log] == [
            otid(job.event_id, agent.agent_id) for job in jobs
        ]
        assert len({m.otid for m in fake_letta.message_log}) == 2
        assert [m.name for m in fake_letta.message_log] == ["bob", "bob"]


async def test_a_whole_turn_is_timed_on_the_metrics_page_and_logs_no_error(
    tmp_path: Path, fake_letta: FakeLetta, caplog: pytest.LogCaptureFixture
) -> None:
    async with turns_setup(tmp_path, fake_letta) as t:
        agent = t.agent(fake_letta.add_agent("Helper", delay=0.2))
        started = time.monotonic()
        await t.conversations.answer(t.job(agent))
        took = time.monotonic() - started
        page = t.conversations.metrics.render().decode()
        turns = 'letta_appservice_letta_request_seconds_count{operation="turn"} 1.0'
        assert turns in page
        [total] = [
            float(line.rsplit(" ", 1)[1])
            for line in page.splitlines()
            if line.startswith('letta_appservice_letta_request_seconds_sum{operation="turn"}')
        ]
        assert 0.2 <= total <= took  # Letta's delay, within what the call took
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_letta_busy_and_5xx_are_retried(tmp_path: Path, fake_letta: FakeLetta) -> None:
    async with turns_setup(tmp_path, fake_letta) as t:
        fake_agent = fake_letta.add_agent("Busy")
        for status in (409, 429, 500):
            fake_letta.fail_next(1, status, f"/v1/agents/{fake_agent.id}/messages")
            with pytest.raises(Retry) as retry:
                await t.conversations.answer(t.job(t.agent(fake_agent)))
            assert f"HTTP {status}" in retry.value.reason
        assert t.api.sent == []


async def test_a_notice_about_a_message_is_posted_once(
    tmp_path: Path, fake_letta: FakeLetta
) -> None:
    async with turns_setup(tmp_path, fake_letta) as t:
        agent = t.agent(fake_letta.add_agent("Helper"))
        for _ in range(2):
            await t.conversations.notify(agent, ROOM, "$src", 7, "once", {"rel": 1})
        [(sent_txn, content)] = t.api.sent
        job = attrs.evolve(t.job(agent), event_id="$src")
        assert sent_txn == txn(job, 7) and content["body"] == "once"
        assert content["msgtype"] == "m.notice" and content["m.relates_to"] == {"rel": 1}


async def test_a_slow_answer_shows_a_receipt_and_typing_a_quick_one_neither(
    tmp_path: Path, fake_letta: FakeLetta
) -> None:
    async with turns_setup(tmp_path, fake_letta) as t:
        quick = t.agent(fake_letta.add_agent("Quick"))
        await t.conversations.answer(t.job(quick))
        slow_agent = fake_letta.add_agent("Slow", delay=1.0)
        job = t.job(t.agent(slow_agent))
        await t.conversations.answer(job)

        async def typing_cleared() -> bool:
            return len(t.api.other) >= 3

        await eventually(typing_cleared)
        receipt, typing, cleared = map(unquote, t.api.other)
        assert receipt.endswith(f"/receipt/m.read/{job.event_id}")
        assert typing.endswith("/typing/@agent_2:bridge.test") and cleared == typing
        await asyncio.sleep(0.3)  # the quick answer's grace has long passed: still nothing
        assert len(t.api.other) == 3


async def test_typing_is_renewed_then_cleared_and_a_retry_sends_no_receipt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Recording(PuppetApi):
        bodies_sent: list = []
        methods: list = []

        async def request(self, method, path, content=None, **kw):  # type: ignore[no-untyped-def]
            self.bodies_sent.append(content)
            self.methods.append(str(method))
            return await super().request(method, path, content, **kw)

    monkeypatch.setattr(poster_module, "TYPING_REFRESH", 0.05)  # renewed often, for the test
    api = Recording()
    typing = Typing(api, ROOM, "@agent_1:bridge.test")  # type: ignore[arg-type]
    task = asyncio.create_task(typing.run())

    async def typing_renewed() -> bool:
        return len(api.other) >= 2

    await eventually(typing_renewed)
    typing.stop()
    await asyncio.wait_for(task, 30)
    on = {"typing": True, "timeout": TYPING_TIMEOUT_MS}
    *renewals, cleared = api.bodies_sent
    assert len(renewals) >= 2 and all(body == on for body in renewals)
    assert cleared == {"typing": False}
    assert set(api.methods) == {"PUT"}  # as the typing endpoint wants
    assert TYPING_TIMEOUT_MS == 30_000
    sent = len(api.other)
    settled = Typing(api, ROOM, "@agent_1:bridge.test", "$m")  # type: ignore[arg-type]
    settled.settle()
    await asyncio.wait_for(settled.run(), 30)
    assert len(api.other) == sent  # Letta answered within the grace: nothing sent
    # A first try that takes longer: the person's message is marked read, then typing.
    first_try = Typing(api, ROOM, "@agent_1:bridge.test", "$m")  # type: ignore[arg-type]
    task = asyncio.create_task(first_try.run())

    async def typing_after_receipt() -> bool:
        return len(api.other) >= sent + 2

    await eventually(typing_after_receipt)
    first_try.stop()
    await asyncio.wait_for(task, 30)
    assert unquote(api.other[sent]).endswith("/receipt/m.read/$m")
    assert (api.methods[sent], api.bodies_sent[sent]) == ("POST", {})


async def test_a_streamed_answer_is_edited_in_place_each_edit_once(
    tmp_path: Path, fake_letta: FakeLetta
) -> None:
    async with turns_setup(tmp_path, fake_letta, streaming=True) as t:
        fake_agent = fake_letta.add_agent("Streamer")
        fake_agent.responder = lambda _a, _t: [lr.assistant("a streamed answer in pieces")]
        job = t.job(t.agent(fake_agent))
        await t.conversations.answer(job)
        (first_txn, first), *edits = t.api.sent
        assert first_txn == txn(job, 0) and first["body"] == "a st"
        assert edits, "the answer grew: it was edited"
        for edit_txn, content in edits:
            assert edit_txn.startswith(txn(job, 0)) and edit_txn != txn(job, 0)
            assert content["m.relates_to"] == {"rel_type": "m.replace",
                                               "event_id": f"$sent.{first_txn}"}  # fmt: skip
        assert len({edit_txn for edit_txn, _ in edits}) == len(edits)
        assert edits[-1][1]["m.new_content"]["body"] == "a streamed answer in pieces"
        stored = await t.turns.get(job.event_id, fake_agent.id)
        assert stored is not None and stored[0]["body"] == "a streamed answer in pieces"


async def test_a_notice_without_a_relation_is_posted_plainly(
    tmp_path: Path, fake_letta: FakeLetta
) -> None:
    async with turns_setup(tmp_path, fake_letta) as t:
        agent = t.agent(fake_letta.add_agent("Helper"))
        await t.conversations.notify(agent, ROOM, "$src", 1, "plain", None)
        [(_, content)] = t.api.sent
        assert "m.relates_to" not in content and content["body"] == "plain"


async def test_an_edit_goes_to_the_answers_room_once_per_new_text(
    tmp_path: Path, fake_letta: FakeLetta
) -> None:
    async with turns_setup(tmp_path, fake_letta) as t:
        job = t.job(t.agent(fake_letta.add_agent("Helper")))
        poster = Poster(t.api, t.sent, job, {})  # type: ignore[arg-type]
        first = await poster.post(0, Part("m.text", "a"))
        for text in ("a b", "a b", "a b c"):
            await poster.edit(0, Part("m.text", text))
        txns = [txn_ for txn_, _ in t.api.sent]
        # The same text twice is the same transaction (the homeserver keeps one), a new one not.
        assert txns[0] == txn(job, 0) and txns[1] == txns[2] != txns[3]
        assert all(txn_.startswith(txn(job, 0) + ".") for txn_ in txns[1:])
        assert t.api.rooms == [ROOM] * 4
        for _, content in t.api.sent[1:]:
            assert content["m.relates_to"] == {"rel_type": "m.replace", "event_id": first}
        assert [c["m.new_content"]["body"] for _, c in t.api.sent[1:]] == ["a b", "a b", "a b c"]
        # What a turn cut short would keep.
        assert await poster.so_far() == [Part("m.text", "a b c")]


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("expects_reply", [True, False])
async def test_a_silent_turn_shows_what_the_settings_ask_and_is_told_where_expected(
    tmp_path: Path, fake_letta: FakeLetta, expects_reply: bool, streaming: bool
) -> None:
    settings = {"streaming": streaming, "show_reasoning": "notice", "show_tools": "notice"}
    async with turns_setup(tmp_path, fake_letta, **settings) as t:
        fake_agent = fake_letta.add_agent("Quiet")
        fake_agent.responder = lambda _a, _t: [
            lr.reasoning("nothing to add", "message-1"),
            lr.tool_call("web_search", {"query": "x"}, "message-2"),
        ]
        await t.conversations.answer(t.job(t.agent(fake_agent), expects_reply=expects_reply))
        bodies = t.api.bodies()
        assert bodies[0] == "Reasoning: nothing to add"
        assert bodies[1].startswith("Tool call: web_search")
        assert bodies[2:] == ([NO_REPLY] if expects_reply else [])


async def test_a_slow_retry_shows_typing_in_the_room_but_sends_no_second_receipt(
    tmp_path: Path, fake_letta: FakeLetta
) -> None:
    async with turns_setup(tmp_path, fake_letta) as t:
        slow = t.agent(fake_letta.add_agent("Slow", delay=1.0))
        await t.conversations.answer(t.job(slow, attempts=1))

        async def typing_cleared() -> bool:
            return len(t.api.other) >= 2

        await eventually(typing_cleared)
        typing, cleared = map(unquote, t.api.other)
        assert typing == cleared and f"/rooms/{ROOM}/typing/" in typing


@pytest.mark.parametrize("streaming", [False, True])
async def test_an_answer_cut_at_the_step_limit_says_so_after_it(
    tmp_path: Path, fake_letta: FakeLetta, streaming: bool
) -> None:
    async with turns_setup(tmp_path, fake_letta, streaming=streaming) as t:
        fake_agent = fake_letta.add_agent("Busy", stop_reason="max_steps")
        await t.conversations.answer(t.job(t.agent(fake_agent), "hi"))
        *_, answer, notice = t.api.bodies()
        assert answer.endswith("Echo: hi")
        assert notice == "The agent stopped after reaching its step limit (max_steps)."


# --- conversations, approvals, attachments and media (the fake as Letta 0.16.8) ---------------

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)
OTHER_ROOM = "!other:bridge.test"


def thread(root: str) -> dict[str, str]:
    return {"rel_type": "m.thread", "event_id": root}


def said_in(fake: FakeLetta) -> list[tuple[str | None, str]]:
    """(conversation, text) of every message the agent got, in order."""
    return [(m.conversation_id, m.text) for m in fake.message_log]


def wants_to_roll(fake: FakeLetta) -> str:
    """Every agent of ``fake`` asks to run roll_dice first, then echoes; the tool's name."""
    asked: set[str] = set()

    def responder(agent: object, text: str) -> list[lr.Raw]:
        if text in asked:
            return lr.echo(agent, text)
        asked.add(text)
        return [lr.approval_request("roll_dice", {"sides": 6})]

    fake.responder = responder
    return "roll_dice"


def pending_call(fake: FakeLetta, agent_id: str, conversation: str | None) -> str:
    """The tool call id the agent (in ``conversation``) waits on."""
    waiting = fake.conversations[conversation].pending_call if conversation else None
    waiting = waiting or fake.agents[agent_id].pending_call
    assert waiting is not None
    return waiting["tool_call"]["tool_call_id"]


@pytest.mark.parametrize("streaming", [False, True])
async def test_each_room_talks_to_the_agent_in_a_conversation_of_its_own(
    tmp_path: Path, fake_letta: FakeLetta, streaming: bool
) -> None:
    async with turns_setup(tmp_path, fake_letta, conversations="room", streaming=streaming) as t:
        agent = t.agent(fake_letta.add_agent("Helper"))
        jobs = [t.job(agent, "one"), attrs.evolve(t.job(agent, "two"), room_id=OTHER_ROOM)]
        jobs.append(t.job(agent, "three"))
        for job in jobs:
            await t.conversations.answer(job)
        here, there = fake_letta.conversations_of(agent.agent_id)
        assert said_in(fake_letta) == [(here, "one"), (there, "two"), (here, "three")]
        # Nothing went to the agent's own history, shared by every room.
        assert not fake_letta.requests_to(f"/v1/agents/{agent.agent_id}/messages")
        answers = [(room, c) for room, (_, c) in zip(t.api.rooms, t.api.sent, strict=True)]
        finals = [c.get("m.new_content", c)["body"] for _, c in answers]
        assert finals[-1] == "Echo: three" and "Echo: two" in finals
        assert {room for room, c in answers if "two" in c.get("m.new_content", c)["body"]} == {
            OTHER_ROOM
        }


async def test_in_thread_mode_each_thread_has_a_conversation_of_its_own(
    tmp_path: Path, fake_letta: FakeLetta
) -> None:
    async with turns_setup(tmp_path, fake_letta, conversations="thread") as t:
        agent = t.agent(fake_letta.add_agent("Helper"))
        for text, root in (("one", "$root1"), ("two", "$root2"), ("three", "$root1")):
            await t.conversations.answer(t.job(agent, text, relation=thread(root)))
        first, second = fake_letta.conversations_of(agent.agent_id)
        assert said_in(fake_letta) == [(first, "one"), (second, "two"), (first, "three")]


@pytest.mark.parametrize("streaming", [False, True])
async def test_a_conversation_deleted_in_letta_is_replaced_once_and_the_room_is_told(
    tmp_path: Path, fake_letta: FakeLetta, streaming: bool
) -> None:
    # Thread mode: the new conversation must be the thread's, of this room.
    async with turns_setup(tmp_path, fake_letta, conversations="thread", streaming=streaming) as t:
        agent = t.agent(fake_letta.add_agent("Helper"))
        await t.conversations.answer(t.job(agent, "one", relation=thread("$root")))
        [deleted] = fake_letta.conversations_of(agent.agent_id)
        del fake_letta.conversations[deleted]  # deleted in Letta (404 "Conversation not found")
        sent_before = len(t.api.sent)
        job = t.job(agent, "two", relation=thread("$root"))
        await t.conversations.answer(job)
        [new] = fake_letta.conversations_of(agent.agent_id)
        assert said_in(fake_letta) == [(deleted, "one"), (new, "two")]
        (gone_txn, notice), *answer = t.api.sent[sent_before:]
        assert gone_txn == txn(job, CONTEXT_GONE_PART)
        assert (notice["msgtype"], notice["body"]) == ("m.notice", GONE)
        assert answer[-1][1].get("m.new_content", answer[-1][1])["body"] == "Echo: two"
        # The thread keeps the new conversation: no second notice, no third conversation.
        sent_before = len(t.api.sent)
        await t.conversations.answer(t.job(agent, "three", relation=thread("$root")))
        assert fake_letta.conversations_of(agent.agent_id) == [new]
        assert said_in(fake_letta)[-1] == (new, "three")
        assert GONE not in [c["body"] for _, c in t.api.sent[sent_before:]]


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("mode", ["off", "room"])
async def test_a_decision_goes_to_letta_where_the_card_is_and_the_turn_goes_on(
    tmp_path: Path, fake_letta: FakeLetta, streaming: bool, mode: str
) -> None:
    async with turns_setup(tmp_path, fake_letta, conversations=mode, streaming=streaming) as t:
        tool = wants_to_roll(fake_letta)
        agent = t.agent(fake_letta.add_agent("Careful"))
        await t.conversations.answer(t.job(agent, "roll for me"))
        card = t.api.sent[-1][1].get("m.new_content", t.api.sent[-1][1])["body"]
        assert card.startswith(f"🔧 The agent wants to run {tool}:")
        [conversation] = fake_letta.conversations_of(agent.agent_id) or [None]
        decisions = (Decision(pending_call(fake_letta, agent.agent_id, conversation), True),)
        sent_before = len(t.api.sent)
        await t.conversations.answer(t.job(agent, "✅", decisions=decisions))
        where = (f"/v1/conversations/{conversation}" if conversation
                 else f"/v1/agents/{agent.agent_id}")  # fmt: skip
        *_, decided = fake_letta.requests_to(f"{where}/messages", "POST")
        assert decided.json["messages"] == [approval_message(decisions)]
        assert said_in(fake_letta)[-1] == (conversation, f"[approve {decisions[0].tool_call_id}]")
        bodies = [c.get("m.new_content", c)["body"] for _, c in t.api.sent[sent_before:]]
        assert bodies[-1] == f"I ran {tool}."


async def test_a_decision_for_a_conversation_deleted_in_letta_reaches_nothing_and_says_so(
    tmp_path: Path, fake_letta: FakeLetta
) -> None:
    async with turns_setup(tmp_path, fake_letta, conversations="room") as t:
        wants_to_roll(fake_letta)
        agent = t.agent(fake_letta.add_agent("Careful"))
        await t.conversations.answer(t.job(agent, "roll for me"))
        [deleted] = fake_letta.conversations_of(agent.agent_id)
        decisions = (Decision(pending_call(fake_letta, agent.agent_id, deleted), True),)
        del fake_letta.conversations[deleted]
        sent_before = len(t.api.sent)
        await t.conversations.answer(t.job(agent, "✅", decisions=decisions))
        [(_, notice)] = t.api.sent[sent_before:]  # no "deleted" notice before it
        assert (notice["msgtype"], notice["body"]) == ("m.notice", DECIDED_IN_VAIN)
        assert len(fake_letta.message_log) == 1  # the new conversation got nothing
        # The room's next message goes to the new conversation, without a second notice.
        [new] = fake_letta.conversations_of(agent.agent_id)
        sent_before = len(t.api.sent)
        await t.conversations.answer(t.job(agent, "hello"))
        assert said_in(fake_letta)[-1] == (new, "hello")
        assert GONE not in [c["body"] for _, c in t.api.sent[sent_before:]]


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize(
    ("approvers", "who"),
    [("asker", f"{SENDER} or a bridge admin"), ("users", "anyone here who may use the bridge")],
)
async def test_a_card_says_who_may_decide(
    tmp_path: Path, fake_letta: FakeLetta, streaming: bool, approvers: str, who: str
) -> None:
    async with turns_setup(tmp_path, fake_letta, streaming=streaming, approvers=approvers) as t:
        wants_to_roll(fake_letta)
        await t.conversations.answer(t.job(t.agent(fake_letta.add_agent("Careful"))))
        card = t.api.sent[-1][1].get("m.new_content", t.api.sent[-1][1])["body"]
        assert card.endswith(f"Who decides: {who}.")


@pytest.mark.parametrize("streaming", [False, True])
async def test_an_image_in_an_answer_is_posted_as_an_image(
    tmp_path: Path, fake_letta: FakeLetta, streaming: bool
) -> None:
    data = "data:image/png;base64," + base64.b64encode(PNG).decode()
    async with turns_setup(tmp_path, fake_letta, files=True, streaming=streaming) as t:
        fake_agent = fake_letta.add_agent("Painter")
        fake_agent.responder = lambda _a, _t: [lr.assistant(f"A dot for you: ![dot]({data})")]
        await t.conversations.answer(t.job(t.agent(fake_agent)))
        [(name, mimetype, uploaded)] = t.api.uploads
        assert (mimetype, uploaded) == ("image/png", PNG) and name.endswith(".png")
        finals = {c.get("m.new_content", c)["msgtype"]: c for _, c in t.api.sent}
        image = finals["m.image"]
        assert image["url"] == "mxc://bridge.test/upload1" and image["body"] == name
        text = finals["m.text"].get("m.new_content", finals["m.text"])["body"]
        assert text.startswith("A dot for you") and "data:" not in text


async def test_an_image_from_a_person_reaches_letta_as_an_image_part(
    tmp_path: Path, fake_letta: FakeLetta
) -> None:
    async with turns_setup(tmp_path, fake_letta) as t:
        agent = t.agent(fake_letta.add_agent("Viewer"))
        t.api.media["mxc://bridge.test/dot"] = PNG
        media = Media(IMAGE, "mxc://bridge.test/dot", "dot.png", "image/png", len(PNG), "Look")
        job = t.job(agent, "bob: (sent an image: dot.png)\nLook", media=media)
        await t.conversations.answer(job)
        [request] = fake_letta.requests_to(f"/v1/agents/{agent.agent_id}/messages", "POST")
        image = {
            "type": "base64",
            "media_type": "image/png",
            "data": base64.b64encode(PNG).decode(),
        }
        assert request.json["messages"][0]["content"] == [
            {"type": "text", "text": job.content},
            {"type": "image", "source": image},
        ]
        assert t.api.bodies() == [f"Echo: {job.content}"]


async def test_a_file_from_a_person_goes_into_the_agents_folder_once_per_message(
    tmp_path: Path, fake_letta: FakeLetta
) -> None:
    async with turns_setup(tmp_path, fake_letta) as t:
        agent = t.agent(fake_letta.add_agent("Reader"))
        t.api.media["mxc://bridge.test/notes"] = b"some notes"
        media = Media(FILE, "mxc://bridge.test/notes", "notes.txt", "text/plain", 10, "")
        folder = f"matrix-{agent.agent_id}"
        first = t.job(agent, "bob: (sent a file: notes.txt)", media=media)
        # Letta fails after the upload: the retry of the message keeps the file it uploaded.
        fake_letta.fail_next(1, 500, "/messages")
        with pytest.raises(Retry):
            await t.conversations.answer(first)
        await t.conversations.answer(attrs.evolve(first, attempts=1))
        # Another message with a file of the same name: a copy of its own.
        await t.conversations.answer(t.job(agent, "bob: (sent a file: notes.txt)", media=media))
        told = [m.text.rsplit(" as ", 1)[1] for m in fake_letta.message_log]
        assert told == ["'notes.txt'.", "'notes_(1).txt'."]
        assert fake_letta.message_log[0].text == (
            f"{first.content}\nIt is in your files (folder {folder}) as 'notes.txt'."
        )
        [held] = fake_letta.folders.values()
        assert held.name == folder and sorted(held.files) == ["notes.txt", "notes_(1).txt"]
        assert fake_letta.attached[agent.agent_id] == {held.id}


@pytest.mark.parametrize("streaming", [False, True])
async def test_media_the_homeserver_cannot_give_is_refused_with_a_notice(
    tmp_path: Path, fake_letta: FakeLetta, streaming: bool
) -> None:
    async with turns_setup(tmp_path, fake_letta, streaming=streaming) as t:
        agent = t.agent(fake_letta.add_agent("Viewer"))
        media = Media(IMAGE, "mxc://bridge.test/gone", "dot.png", "image/png", 9, "")
        await t.conversations.answer(t.job(agent, "bob: (sent an image: dot.png)", media=media))
        [(_, notice)] = t.api.sent
        assert (notice["msgtype"], notice["body"]) == ("m.notice", BROKEN.format(what="image"))
        assert fake_letta.message_log == [] and t.message_requests() == 0


async def _running_in_a_conversation(t: Turns, fake: FakeLetta) -> tuple[str, asyncio.Task[None]]:
    """A slow turn of a new agent in the room's conversation, made by a quick first message
    (so no deadline can pass before the turn knows it): (conversation, the answer)."""
    fake_agent = fake.add_agent("Slow")
    agent = t.agent(fake_agent)
    await t.conversations.answer(t.job(agent, "first"))
    [conversation] = fake.conversations_of(fake_agent.id)
    fake_agent.delay = 120
    return conversation, asyncio.create_task(t.conversations.answer(t.job(agent, "slow")))


@pytest.mark.parametrize("streaming", [False, True])
async def test_an_admins_cancel_cancels_the_run_in_the_rooms_conversation(
    tmp_path: Path, fake_letta: FakeLetta, streaming: bool
) -> None:
    async with turns_setup(tmp_path, fake_letta, conversations="room", streaming=streaming) as t:
        conversation, answer = await _running_in_a_conversation(t, fake_letta)
        agent_id = fake_letta.conversations[conversation].agent_id
        await fake_letta.wait_for_in_flight(agent_id, timeout=30)
        assert await t.conversations.cancel(agent_id)
        await asyncio.wait_for(answer, 30)
        assert t.api.bodies()[-1] == CANCELLED
        assert fake_letta.requests_to(f"/v1/conversations/{conversation}/cancel", "POST")
        # 0.16.8 finds a plain turn's run only by the agent (it says "No active runs" first).
        by_agent = fake_letta.requests_to(f"/v1/agents/{agent_id}/messages/cancel", "POST")
        assert bool(by_agent) is not streaming
        await fake_letta.wait_for_messages(2)  # the run in Letta was ended


@pytest.mark.parametrize("streaming", [False, True])
async def test_a_turn_past_its_deadline_is_cancelled_in_the_rooms_conversation(
    tmp_path: Path, fake_letta: FakeLetta, streaming: bool
) -> None:
    async with turns_setup(
        tmp_path, fake_letta, conversations="room", streaming=streaming, deadline=1.0
    ) as t:
        conversation, answer = await _running_in_a_conversation(t, fake_letta)
        await asyncio.wait_for(answer, 30)
        assert t.api.bodies()[-1].startswith("The agent did not finish within 1 s")
        assert fake_letta.requests_to(f"/v1/conversations/{conversation}/cancel", "POST")
