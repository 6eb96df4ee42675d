"""The streaming relay's less travelled paths against a recording outbox (tests/harness/
relay.py): streamed tool calls, approvals, messages without ids, silent turns, errors after
words were posted, attachments."""

from __future__ import annotations

import base64
from typing import Any

from letta_appservice.chat.parts import ATTACHMENT, NO_REPLY, Part
from letta_appservice.chat.streaming import relay
from letta_appservice.letta import LettaError
from letta_appservice.letta.models import ToolCall
from letta_appservice.matrix.format import IMAGE, NOTICE, TEXT
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


async def test_a_timeout_after_words_names_the_wait_in_a_notice() -> None:
    error = LettaError("timeout", "Letta stream: no answer within 120s", url="http://letta")
    raws = lr.token_deltas([lr.assistant("half an answer", "message-7")])
    parts = await relay(Stream(raws, None, error), Outbox(), "off", "off")
    assert parts[-1] == Part(
        NOTICE,
        "Letta did not answer within 120 s; the message was not retried. "
        "The answer above may be incomplete.",
    )


def _call_delta(msg_id: str, name: str | None, arguments: str | None, **more: Any) -> dict:
    call = {"name": name, "arguments": arguments, **more}
    return {**lr.tool_call("x", {}, msg_id), "tool_call": call, "tool_calls": [call]}


async def test_tool_call_deltas_with_missing_pieces_still_make_the_whole_call() -> None:
    # Providers differ in which delta names the tool and which carry no arguments at all.
    deltas = [
        _call_delta("message-8", None, None),
        _call_delta("message-8", "web_search", '{"query": '),
        _call_delta("message-8", None, '"matrix"}'),
        _call_delta("message-8", None, None),
    ]
    outbox = Outbox()
    await relay(Stream(deltas), outbox, "off", "notice")
    # The arguments are whole JSON again (shown pretty-printed), nothing added.
    assert outbox.log == [("post", 0, 'Tool call: web_search:\n{\n  "query": "matrix"\n}')]


async def test_a_streamed_approval_request_becomes_one_card_with_the_whole_call() -> None:
    call = {"tool_call_id": "call-1", "name": "rm"}
    first = lr.approval_request("rm", {}, "message-9")
    pieces = ['{"pa', 'th": "/"}']
    deltas = [
        {
            **first,
            "tool_call": {**call, "arguments": piece},
            "tool_calls": [{**call, "arguments": piece, "name": "rm" if not n else None}],
        }
        for n, piece in enumerate(pieces)
    ]
    outbox = Outbox()
    approvers = "@alice:example.org"
    parts = await relay(
        Stream(deltas, "requires_approval"), outbox, "off", "off", approvers=approvers
    )
    [card] = parts  # the card says what it waits for: no closing notice
    assert card.calls == (ToolCall("call-1", "rm", '{"path": "/"}'),)
    assert f"Who decides: {approvers}." in card.body and '"path": "/"' in card.body
    assert outbox.log == [("post", 0, card.body)]


DOT = "data:image/png;base64," + base64.b64encode(b"\x89PNG-dot").decode()
PLOT = "data:image/png;base64," + base64.b64encode(b"\x89PNG-plot").decode()


async def test_attachments_follow_their_text_once_each_and_are_uploaded_first() -> None:
    uploaded: list[Part] = []

    async def upload(part: Part) -> Part:
        uploaded.append(part)
        return Part(IMAGE, part.body, url=f"mxc://hs/{len(uploaded)}")

    tool = lr.tool_return(f"![dot]({DOT})", msg_id="message-10")  # tools not shown: only its image
    answer = lr.assistant(f"Here: ![dot]({DOT}) and ![plot]({PLOT}) done.", "message-11")
    outbox = Outbox()
    parts = await relay(
        Stream([tool, *lr.token_deltas([answer])]),
        outbox,
        "off",
        "off",
        attach=("http://letta:8283", upload),
    )
    # The image repeated by the answer is posted once; each is uploaded before it is posted.
    assert [(p.source, p.msgtype) for p in uploaded] == [(DOT, ATTACHMENT), (PLOT, ATTACHMENT)]
    text = "Here: [image: dot] and [image: plot] done."
    assert parts == [
        Part(IMAGE, "dot", url="mxc://hs/1"),
        Part(TEXT, text),
        Part(IMAGE, "plot", url="mxc://hs/2"),
    ]
    posts = [(index, body) for action, index, body in outbox.log if action == "post"]
    assert posts[0] == (0, "dot") and posts[-1] == (2, "plot")  # never the data: URI
    assert [entry for entry in outbox.log if entry[1] == 1][-1] == ("edit", 1, text)
    assert not any("data:" in body for _, _, body in outbox.log)
