"""Approval cards and what people's reactions and replies mean (pure)."""

from __future__ import annotations

from letta_appservice.chat.cards import (
    card_text,
    decided_text,
    decision_line,
    decision_of_key,
    reaction_key,
    reply_decision,
    who_may_decide,
)
from letta_appservice.chat.parts import Part, build_parts
from letta_appservice.letta.models import ToolCall, merge_calls, parse_message

CARD = "m.relates_to"


def reply(body: str, to: str = "$card") -> dict[str, object]:
    return {"msgtype": "m.text", "body": body, CARD: {"m.in_reply_to": {"event_id": to}}}


def test_reactions_are_read_with_or_without_the_emoji_variation_selector() -> None:
    content = {CARD: {"rel_type": "m.annotation", "event_id": "$c", "key": "\u2705\ufe0f"}}
    assert reaction_key(content) == ("$c", "\u2705")
    assert decision_of_key("\u2705") is True
    assert decision_of_key("\u274c") is False
    assert decision_of_key("\U0001f44d") is None
    assert reaction_key({CARD: {"rel_type": "m.reference", "event_id": "$c", "key": "x"}}) is None


def test_replies_approve_or_deny_with_a_reason() -> None:
    assert reply_decision(reply("approve")) == (True, "")
    assert reply_decision(reply("Deny: not  with\nmy money")) == (False, "not with my money")
    assert reply_decision(reply("> <@a:x> card\n\ndeny later")) == (False, "later")
    assert reply_decision(reply("approved it?")) is None  # a word, not the command
    assert reply_decision({"msgtype": "m.text", "body": "approve"}) is None  # not a reply


def test_a_card_shows_arguments_as_code_that_cannot_inject_markup() -> None:
    calls = (ToolCall("call_1", "run<b>", '{"cmd": "<img src=x onerror=alert(1)>"}'),)
    plain, html = card_text(calls, who_may_decide("asker", "@alice:x"))
    assert '"cmd": "<img src=x onerror=alert(1)>"' in plain
    assert "<img" not in html and "&lt;img" in html
    assert "run&lt;b&gt;" in html
    assert "@alice:x or a bridge admin" in plain
    decided = decided_text((plain, html), decision_line("deny", "@bob:x", "no", 0))
    assert decided[0].endswith("Denied by @bob:x at 1970-01-01 00:00 UTC: no")
    assert "React" not in decided[0] and "React" not in decided[1]


def test_several_calls_make_one_card_decided_together() -> None:
    raw = {
        "message_type": "approval_request_message",
        "id": "m1",
        "tool_calls": [
            {"name": "a", "arguments": "{}", "tool_call_id": "c1"},
            {"name": "b", "arguments": "{}", "tool_call_id": "c2"},
        ],
    }
    message = parse_message(raw)
    assert message is not None
    parts = build_parts([message], "requires_approval", approvers="a bridge admin")
    assert len(parts) == 1 and [c.id for c in parts[0].calls] == ["c1", "c2"]
    assert "2 tools (decided together)" in parts[0].body
    assert Part.from_json(parts[0].to_json()) == parts[0]  # stored turns keep the calls


def test_streamed_approval_deltas_join_their_arguments() -> None:
    first = parse_message(
        {
            "message_type": "approval_request_message",
            "id": "m1",
            "tool_call": {"name": "roll", "arguments": '{"si', "tool_call_id": "c1"},
        }
    )
    more = parse_message(
        {
            "message_type": "approval_request_message",
            "id": "m1",
            "tool_call": {"arguments": 'des": 6}'},
        }
    )
    assert first is not None and more is not None
    assert merge_calls(first, more) == (ToolCall("c1", "roll", '{"sides": 6}'),)
