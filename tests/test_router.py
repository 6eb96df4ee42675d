"""Pure parts of conversations: routing decisions, texts for Letta, reply parts and content,
and the streaming relay against a recording outbox."""

from __future__ import annotations

from typing import Any

import pytest

from letta_appservice.chat.addressing import addressed, default_mode, is_command, is_mentioned
from letta_appservice.chat.content import (
    edit_content,
    edit_suffix,
    message_content,
    otid,
    reply_relation,
    txn_id,
)
from letta_appservice.chat.incoming import (
    incoming_text,
    letta_content,
    sender_name,
    strip_reply_fallback,
)
from letta_appservice.chat.parts import (
    NO_REPLY,
    Part,
    build_parts,
    duration,
    error_text,
    waiting_text,
)
from letta_appservice.chat.streaming import relay
from letta_appservice.db.agent import AgentRow
from letta_appservice.letta import LettaError, LettaMessage, parse_message
from letta_appservice.matrix.size import EVENT_BYTES, PIECE_BYTES, event_bytes, utf8_len
from tests.harness import letta_replies as lr
from tests.harness.relay import Outbox, Stream

PUPPET = "@agent_1234:example.org"


def agent(**fields: Any) -> AgentRow:
    return AgentRow(agent_id="agent-1234", mxid=PUPPET, name="Helper", **fields)


# --- routing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "own", "others", "mode"),
    [
        ("agent", True, 5, "open"),  # the agent's own room, however many people
        ("agent", False, 1, "mention"),  # a puppet invited into another agent's room
        ("invited", False, 1, "open"),  # 1:1
        ("invited", False, 2, "mention"),  # a group room
    ],
)
def test_default_modes(kind: str, own: bool, others: int, mode: str) -> None:
    assert default_mode(kind, own, others) == mode


def test_mentions_by_intent_pill_mxid_or_name() -> None:
    names = ["Helper Bot"]
    assert is_mentioned({"body": "x", "m.mentions": {"user_ids": [PUPPET]}}, PUPPET, names)
    pill = '<a href="https://matrix.to/#/%40agent_1234%3Aexample.org">Helper</a> hi'
    assert is_mentioned({"body": "Helper hi", "formatted_body": pill}, PUPPET, [])
    assert is_mentioned({"body": f"hey {PUPPET}"}, PUPPET, [])
    assert is_mentioned({"body": "helper bot: what now?"}, PUPPET, names)
    assert not is_mentioned({"body": "the helper bots are fine"}, PUPPET, names)
    assert not is_mentioned({"body": "hi all", "m.mentions": {"user_ids": []}}, PUPPET, names)


def test_addressed_by_mode() -> None:
    row = agent(displayname="Helper")
    assert addressed("open", {"body": "anything"}, row)
    assert not addressed("mention", {"body": "anything"}, row)
    assert addressed("mention", {"body": "Helper, anything?"}, row)
    assert not addressed("off", {"body": "Helper!", "m.mentions": {"user_ids": [PUPPET]}}, row)


def test_commands_are_recognised_by_prefix() -> None:
    assert is_command({"body": "  !LETTA help"}, "!letta")
    assert not is_command({"body": "letta help"}, "!letta")


# --- to Letta ------------------------------------------------------------------------------------


def test_incoming_text_takes_text_and_emotes_only() -> None:
    assert incoming_text({"msgtype": "m.text", "body": "hi"}, "Alice") == "hi"
    assert incoming_text({"msgtype": "m.emote", "body": "waves"}, "Alice") == "* Alice waves"
    assert incoming_text({"msgtype": "m.notice", "body": "bot talk"}, "Alice") is None
    assert incoming_text({"msgtype": "m.image", "body": "cat.png"}, "Alice") is None
    assert incoming_text({"msgtype": "m.text", "body": "  "}, "Alice") is None
    edit = {"rel_type": "m.replace", "event_id": "$x"}
    assert incoming_text({"msgtype": "m.text", "body": "* fix", "m.relates_to": edit}, "A") is None


def test_reply_fallback_is_dropped() -> None:
    body = "> <@bob:example.org> earlier\n> more\n\nmy answer"
    assert strip_reply_fallback(body) == "my answer"
    assert strip_reply_fallback("> a quote I mean\nno blank line") == (
        "> a quote I mean\nno blank line"
    )
    content = {"msgtype": "m.text", "body": body, "m.relates_to": {"m.in_reply_to": {}}}
    assert incoming_text(content, "A") == "my answer"


def test_attribution_line_then_text() -> None:
    template = '[Matrix: {displayname} ({sender}) in "{room_name}"]'
    text = letta_content(
        template, displayname="Al {x}", sender="@al:ex.org", room_name="Room", text="hi"
    )
    assert text == '[Matrix: Al {x} (@al:ex.org) in "Room"]\nhi'
    assert sender_name("@al.b:ex.org") == "al.b"


def test_ids_are_deterministic_and_distinct() -> None:
    assert otid("$e", "agent-1") == otid("$e", "agent-1") != otid("$e", "agent-2")
    assert txn_id("$e", "a", 0) == txn_id("$e", "a", 0)
    assert len({txn_id("$e", "a", 0), txn_id("$e", "b", 0), txn_id("$e", "a", 1)}) == 3
    assert edit_suffix("one") != edit_suffix("two")


# --- from Letta ----------------------------------------------------------------------------------


def parsed(*raw: dict[str, Any]) -> list[LettaMessage]:
    messages = [parse_message(r) for r in raw]
    return [m for m in messages if m is not None]


def test_every_assistant_shape_becomes_a_text_part() -> None:
    messages = parsed(
        lr.assistant("plain"),
        lr.assistant_parts("list ", "content"),
        lr.legacy_assistant("old field"),
        lr.send_message_call("**tool** call"),
        lr.reasoning("hidden"),
        lr.tool_call("web_search", {"q": 1}),
    )
    parts = build_parts(messages, "end_turn")
    assert [p.body for p in parts] == ["plain", "list content", "old field", "**tool** call"]
    assert parts[3].html == "<p><strong>tool</strong> call</p>"
    assert parts[0].html is None  # plain text goes out without formatted_body


def test_reasoning_and_tools_as_collapsed_notices() -> None:
    messages = parsed(
        lr.reasoning("Think."),
        lr.tool_call("web_search", {"query": "x"}),
        lr.tool_return("found", name="web_search"),
        lr.assistant("Done."),
    )
    parts = build_parts(messages, None, show_reasoning="notice", show_tools="notice")
    assert [p.msgtype for p in parts] == ["m.notice", "m.notice", "m.notice", "m.text"]
    assert parts[0].html == (
        "<details><summary>Reasoning</summary><pre><code>Think.</code></pre></details>"
    )
    assert parts[1].body == 'Tool call: web_search:\n{\n  "query": "x"\n}'
    assert parts[2].body == "Tool result: web_search: found"
    only_reasoning = build_parts(messages, None, show_reasoning="notice")
    assert [p.body for p in only_reasoning] == ["Reasoning: Think.", "Done."]


def test_stop_reasons_and_approvals_are_told() -> None:
    answer = parsed(lr.assistant("partial"))
    assert build_parts(answer, "end_turn")[-1].body == "partial"
    assert "step limit" in build_parts(answer, "max_steps")[-1].body
    assert "error (llm_api_error)" in build_parts(answer, "llm_api_error")[-1].body
    approval = parsed(lr.approval_request("delete_file", {"path": "/"}))
    parts = build_parts(approval, "requires_approval")
    assert len(parts) == 1 and "delete_file" in parts[0].body and "approval" in parts[0].body


def test_a_turn_without_a_reply_says_so() -> None:
    thinking = parsed(lr.reasoning("nothing to say"), lr.tool_call("core_memory_append", {}))
    for stop in ("end_turn", None):
        assert [p.body for p in build_parts(thinking, stop)] == [NO_REPLY]
    shown = build_parts(thinking, "end_turn", show_reasoning="notice")
    assert [p.msgtype for p in shown] == ["m.notice", "m.notice"] and shown[-1].body == NO_REPLY
    assert "step limit" in build_parts(thinking, "max_steps")[-1].body  # the reason says it
    assert build_parts(thinking, "end_turn", expects_reply=False) == []  # may stay silent


def test_error_texts_name_no_urls() -> None:
    cases = {
        LettaError("server", "http://secret@x/v1 500", status=500): "internal error (HTTP 500)",
        LettaError("busy", "409", status=409): "busy",
        LettaError("client", "400", status=400): "rejected the message (HTTP 400)",
        LettaError("timeout", "t"): "within 180 s",
        LettaError("connection", "c"): "could not be reached",
        LettaError("auth", "a", status=401): "credentials",
    }
    for error, expected in cases.items():
        assert expected in error_text(error, 180)
        assert "secret" not in error_text(error, 180)
    busy = waiting_text(LettaError("busy", "x", status=409), 600)
    assert busy == (
        "The agent is busy with another request; your message is queued and will be retried "
        "for up to 10 min."
    )
    assert [duration(s) for s in (2, 600, 7200)] == ["2 s", "10 min", "2 h"]


# --- Matrix content --------------------------------------------------------------------------


def test_replies_stay_in_threads() -> None:
    assert reply_relation({"body": "x"}, "$me") == {"m.in_reply_to": {"event_id": "$me"}}
    threaded = {"m.relates_to": {"rel_type": "m.thread", "event_id": "$root"}}
    assert reply_relation(threaded, "$me") == {
        "rel_type": "m.thread",
        "event_id": "$root",
        "is_falling_back": False,
        "m.in_reply_to": {"event_id": "$me"},
    }


def test_message_and_edit_content() -> None:
    part = Part("m.text", "**hi**", "<p><strong>hi</strong></p>")
    relation = {"m.in_reply_to": {"event_id": "$q"}}
    assert message_content(part, relation, ["@al:x"]) == {
        "msgtype": "m.text",
        "body": "**hi**",
        "format": "org.matrix.custom.html",
        "formatted_body": "<p><strong>hi</strong></p>",
        "m.relates_to": relation,
        "m.mentions": {"user_ids": ["@al:x"]},
        "org.letta.appservice": {"bot": True},
    }
    edit = edit_content(part, "$first")
    assert edit["body"] == "* **hi**"
    assert edit["m.relates_to"] == {"rel_type": "m.replace", "event_id": "$first"}
    assert (
        edit["m.new_content"]["body"] == "**hi**" and "m.relates_to" not in edit["m.new_content"]
    )


# --- streaming relay -----------------------------------------------------------------------


async def test_relay_posts_first_delta_then_one_final_edit() -> None:
    text = "Hello there, this streams."
    raws = lr.token_deltas([lr.reasoning("hm", "message-1"), lr.assistant(text, "message-1")])
    outbox = Outbox()
    parts = await relay(Stream(raws), outbox, "notice", "off")
    assert outbox.log == [("post", 0, "Reasoning: hm"), ("post", 1, "Hell"), ("edit", 1, text)]
    assert [p.body for p in parts] == ["Reasoning: hm", text]


async def test_relay_streamed_send_message_call_and_stop_reason() -> None:
    raws = lr.token_deltas([lr.send_message_call("from the tool")])
    outbox = Outbox()
    parts = await relay(Stream(raws, "max_steps"), outbox, "off", "off")
    assert outbox.log == [("post", 0, "from the tool")]
    assert parts[0].body == "from the tool" and "step limit" in parts[1].body  # left to post


async def test_relay_error_before_output_is_raised_after_output_is_told() -> None:
    error = LettaError("server", "boom")
    with pytest.raises(LettaError):
        await relay(Stream([lr.reasoning("x")], None, error), Outbox(), "off", "off")
    outbox = Outbox()
    parts = await relay(Stream([lr.assistant("half")], None, error), outbox, "off", "off")
    assert outbox.log == [("post", 0, "half")]
    assert "may be incomplete" in parts[-1].body


async def test_relay_after_a_crash_edits_the_part_already_posted() -> None:
    outbox = Outbox({0: "$old"})
    await relay(Stream([lr.assistant("the whole answer")]), outbox, "off", "off")
    assert outbox.log == [("edit", 0, "the whole answer")]


def joined(bodies: list[str]) -> str:
    return "\n\n".join(bodies)


async def test_relay_streams_a_long_answer_into_several_messages() -> None:
    text = lr.long_text()
    raws = lr.token_deltas([lr.assistant(text, "message-1")], size=200)
    outbox = Outbox()
    parts = await relay(Stream(raws), outbox, "off", "off")
    assert len(parts) > 3 and joined([p.body for p in parts]) == text
    assert all(utf8_len(p.body) <= PIECE_BYTES for p in parts)
    final: dict[int, str] = {}
    for _action, index, body in outbox.log:
        final[index] = body
    assert [final[i] for i in range(len(parts))] == [p.body for p in parts]
    # One post per message, in order, and few edits: renders at most every EDIT_INTERVAL.
    assert [i for action, i, _ in outbox.log if action == "post"] == list(range(len(parts)))
    assert len(outbox.log) < 3 * len(parts)


def test_a_long_answer_is_cut_into_messages_that_fit() -> None:
    text = lr.long_text()
    parts = build_parts(parsed(lr.assistant(text)), "end_turn")
    assert len(parts) > 3 and joined([p.body for p in parts]) == text
    for part in parts:
        assert event_bytes(message_content(part, None)) < EVENT_BYTES
        assert event_bytes(edit_content(part, "$original")) < EVENT_BYTES
        assert part.html is not None and "<strong>bold</strong>" in part.html
    long_edit = edit_content(parts[0], "$original")
    assert long_edit["body"].endswith(" …") and "formatted_body" not in long_edit
    assert long_edit["m.new_content"]["formatted_body"] == parts[0].html


def test_long_tool_results_are_clipped_and_html_that_outgrows_its_text_is_dropped() -> None:
    result = lr.tool_return("x" * 100_000)
    part, _no_reply = build_parts(parsed(result), None, show_tools="notice")
    assert "more characters not shown" in part.body
    assert event_bytes(message_content(part, None)) < EVENT_BYTES
    dense = "**a** " * 2600  # fits as text, but its HTML is three times as long
    [emphatic] = build_parts(parsed(lr.assistant(dense)), None)
    assert utf8_len(emphatic.body) <= PIECE_BYTES and emphatic.html is not None
    content = message_content(emphatic, None)
    assert "formatted_body" not in content and content["body"] == emphatic.body


async def test_relay_of_a_turn_without_a_reply_says_so() -> None:
    raws = lr.token_deltas([lr.reasoning("just thinking", "message-1")])
    outbox = Outbox()
    parts = await relay(Stream(raws), outbox, "off", "off")
    assert outbox.log == [] and [p.body for p in parts] == [NO_REPLY]  # left to post
