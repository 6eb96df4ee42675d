"""The streaming relay's less travelled paths against a recording outbox (tests/harness/
relay.py): streamed tool calls, approvals, messages without ids, silent turns, errors after
words were posted."""

from __future__ import annotations

from letta_appservice.chat.parts import NO_REPLY
from letta_appservice.chat.streaming import relay
from letta_appservice.letta import LettaError
from tests.harness import letta_replies as lr
from tests.harness.relay import Outbox, Stream


async def test_a_streamed_tool_call_is_shown_once_whole() -> None:
    raws = lr.token_deltas([lr.tool_call("web_search", {"query": "matrix"}, "message-1")])
    outbox = Outbox()
    parts = await relay(Stream(raws), outbox, "off", "notice")
    [(action, index, body)] = outbox.log
    assert (action, index) == ("post", 0)
    assert body.startswith("Tool call: web_search") and '"query": "matrix"' in body
    assert [p.body for p in parts] == [body, NO_REPLY]


async def test_a_streamed_send_message_call_merges_its_argument_deltas() -> None:
    raws = lr.token_deltas([lr.send_message_call("from the tool, in pieces", "message-2")])
    outbox = Outbox()
    parts = await relay(Stream(raws), outbox, "off", "off")
    assert outbox.log == [("post", 0, "from the tool, in pieces")]
    assert [p.body for p in parts] == ["from the tool, in pieces"]


async def test_an_approval_request_is_told_once() -> None:
    raws = [lr.approval_request("rm", {"path": "/"}, "message-3")]
    outbox = Outbox()
    parts = await relay(Stream(raws, "requires_approval"), outbox, "off", "off")
    [approval] = parts  # no second "waiting for approval" notice
    assert "waits for approval in Letta" in approval.body
    assert outbox.log == [("post", 0, approval.body)]


async def test_messages_without_ids_are_never_merged() -> None:
    first, second = lr.assistant("first"), lr.assistant("second")
    first["id"] = second["id"] = None
    outbox = Outbox()
    parts = await relay(Stream([first, second]), outbox, "off", "off")
    assert [p.body for p in parts] == ["first", "second"]
    assert [entry[:2] for entry in outbox.log] == [("post", 0), ("post", 1)]


async def test_reasoning_is_posted_once_when_complete() -> None:
    raws = lr.token_deltas([lr.reasoning("thinking hard", "message-4"), lr.assistant("ok", "m5")])
    outbox = Outbox()
    await relay(Stream(raws), outbox, "notice", "off")
    assert outbox.log == [("post", 0, "Reasoning: thinking hard"), ("post", 1, "ok")]


async def test_a_silent_turn_is_told_only_where_a_reply_is_expected() -> None:
    raws = [lr.reasoning("nothing to say")]
    told = await relay(Stream(raws), Outbox(), "off", "off")
    assert [p.body for p in told] == [NO_REPLY]
    assert await relay(Stream(raws), Outbox(), "off", "off", expects_reply=False) == []


async def test_an_error_after_words_keeps_them_and_says_what_happened() -> None:
    error = LettaError("connection", "gone", url="http://letta")
    outbox = Outbox()
    raws = lr.token_deltas([lr.assistant("half an answer", "message-6")])
    parts = await relay(Stream(raws, None, error), outbox, "off", "off")
    assert [p.body for p in parts] == [
        "half an answer",
        "Letta could not be reached. The answer above may be incomplete.",
    ]
    assert outbox.log[-1] == ("edit", 0, "half an answer")  # the final edit before the notice
