"""Parsing of every Letta message shape, agents, responses, token deltas and SSE framing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from letta_appservice.letta.models import (
    Agent,
    LettaMessage,
    merge_stream_deltas,
    parse_message,
    parse_response,
)
from letta_appservice.letta.sse import SSEDecoder, SSEEvent
from tests.harness import letta_replies as r


def _kind_text(raw: dict[str, Any]) -> tuple[str, str] | None:
    msg = parse_message(raw)
    return None if msg is None else (msg.kind, msg.text)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (r.assistant("Hello!"), ("assistant", "Hello!")),
        (r.assistant_parts("Hello, ", "world"), ("assistant", "Hello, world")),
        (r.legacy_assistant("old field"), ("assistant", "old field")),
        (r.send_message_call("via tool"), ("assistant", "via tool")),
        (r.function_call("send_message", {"message": "0.6 tool"}), ("assistant", "0.6 tool")),
        (r.reasoning("thinking"), ("reasoning", "thinking")),
        (r.internal_monologue("0.6 thinking"), ("reasoning", "0.6 thinking")),
        (r.tool_return("42 results"), ("tool_return", "42 results")),
        (r.function_return("0.6 result"), ("tool_return", "0.6 result")),
        (r.error_message("model exploded"), ("error", "model exploded")),
        ({"id": "m-1", "message_type": "user_message", "content": "hi"}, ("other", "hi")),
        (r.ping(), None),
        (r.stop_reason("max_steps"), None),
        (r.usage(), None),
        ("not a dict", None),
    ],
)
def test_every_shape_normalises(raw: Any, expected: tuple[str, str] | None) -> None:
    assert _kind_text(raw) == expected


def test_assistant_list_content_skips_non_text_parts() -> None:
    raw = r.assistant("x")
    raw["content"] = [{"type": "image", "source": {}}, {"type": "text", "text": "caption"}]
    assert _kind_text(raw) == ("assistant", "caption")


def test_message_without_message_type_is_recognised_by_its_field() -> None:
    raw = r.legacy_assistant("very old")
    del raw["message_type"]
    assert _kind_text(raw) == ("assistant", "very old")


def test_tool_call_keeps_name_and_arguments() -> None:
    raw = r.tool_call("web_search", {"query": "matrix"})
    msg = parse_message(raw)
    assert msg == LettaMessage(
        "tool_call", raw["id"], "", "web_search", json.dumps({"query": "matrix"})
    )


def test_tool_calls_list_without_tool_call_field() -> None:
    raw = r.tool_call("web_search", "{}")
    del raw["tool_call"]
    msg = parse_message(raw)
    assert msg is not None and (msg.kind, msg.tool_name) == ("tool_call", "web_search")


@pytest.mark.parametrize("arguments", ['{"message": "unterminated', '{"text": "no message"}'])
def test_send_message_with_unusable_arguments_stays_a_tool_call(arguments: str) -> None:
    msg = parse_message(r.tool_call("send_message", arguments))
    assert msg is not None
    assert (msg.kind, msg.tool_name, msg.tool_arguments) == (
        "tool_call",
        "send_message",
        arguments,
    )


def test_approval_request() -> None:
    msg = parse_message(r.approval_request("delete_file", {"path": "/tmp/x"}))
    assert msg is not None
    assert (msg.kind, msg.tool_name) == ("approval", "delete_file")
    assert json.loads(msg.tool_arguments or "") == {"path": "/tmp/x"}


def test_tool_return_name_when_the_server_sends_it() -> None:
    msg = parse_message(r.tool_return("ok", name="web_search"))
    assert msg is not None and msg.tool_name == "web_search"


def test_parse_response_of_the_documented_example() -> None:
    body = {
        "messages": [
            r.reasoning("let me search"),
            r.tool_call("web_search", {"q": "x"}),
            r.tool_return("found"),
            r.assistant("Hello!"),
            r.assistant("And more."),
        ],
        "stop_reason": r.stop_reason("end_turn"),
        "usage": r.usage(),
    }
    response = parse_response(body)
    assert [m.kind for m in response.messages] == [
        "reasoning",
        "tool_call",
        "tool_return",
        "assistant",
        "assistant",
    ]
    assert response.assistant_texts == ["Hello!", "And more."]
    assert response.stop_reason == "end_turn"


def test_parse_response_without_stop_reason_and_with_noise() -> None:
    # Servers before 0.8.5 send no stop_reason; stray pings are dropped.
    response = parse_response({"messages": [r.ping(), r.legacy_assistant("hi")]})
    assert response.stop_reason is None
    assert response.assistant_texts == ["hi"]


@pytest.mark.parametrize("body", [{"detail": "nope"}, "text", None, {"messages": "x"}])
def test_parse_response_rejects_other_bodies(body: Any) -> None:
    with pytest.raises(ValueError):
        parse_response(body)


def test_agent_from_json() -> None:
    raw = {
        "id": "agent-1",
        "name": "Helper",
        "description": None,
        "tags": ["matrix", "prod"],
        "updated_at": "2025-01-01T00:00:00Z",
        "blocks": [],
    }
    assert Agent.from_json(raw) == Agent(
        "agent-1", "Helper", None, ("matrix", "prod"), "2025-01-01T00:00:00Z"
    )
    assert Agent.from_json({"id": "agent-2", "name": "x", "tags": None}).tags == ()
    with pytest.raises(ValueError):
        Agent.from_json({"name": "no id"})


def test_merge_stream_deltas_joins_by_id_and_kind() -> None:
    # Letta gives the reasoning and the reply of one LLM call the same message id.
    shared = r.new_id()
    whole = [r.reasoning("Let me think about it", shared), r.assistant("Here you are!", shared)]
    deltas = [parse_message(raw) for raw in r.token_deltas(whole, size=3)]
    assert len(deltas) > 4
    merged = merge_stream_deltas(m for m in deltas if m is not None)
    assert [(m.kind, m.text) for m in merged] == [
        ("reasoning", "Let me think about it"),
        ("assistant", "Here you are!"),
    ]


def test_merge_stream_deltas_rebuilds_a_send_message_call() -> None:
    deltas = [parse_message(raw) for raw in r.token_deltas([r.send_message_call("Hi!")], 5)]
    assert all(m is not None and m.kind == "tool_call" for m in deltas)  # no piece is valid JSON
    merged = merge_stream_deltas(m for m in deltas if m is not None)
    assert [(m.kind, m.text) for m in merged] == [("assistant", "Hi!")]


def test_merge_stream_deltas_never_merges_messages_without_id() -> None:
    msgs = [LettaMessage("assistant", None, "a"), LettaMessage("assistant", None, "b")]
    assert merge_stream_deltas(msgs) == msgs


def _decode(chunks: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    return events + decoder.close()


def test_sse_framing() -> None:
    stream = (
        b": comment\r\n"
        b'data: {"a": 1}\r\n\r\n'
        b"data: line one\n"
        b"data: line two\n\n"
        b"event: error\n"
        b'data: {"message_type": "error_message"}\n\n'
        b"event: lonely\n\n"  # no data: not dispatched
        b"retry: 10\n"
        b"data: [DONE]"  # final event without its blank line
    )
    expected = [
        SSEEvent(data='{"a": 1}'),
        SSEEvent(data="line one\nline two"),
        SSEEvent(event="error", data='{"message_type": "error_message"}'),
        SSEEvent(data="[DONE]"),
    ]
    assert _decode([stream]) == expected
    # Any split of the bytes gives the same events, even inside a multi-byte character.
    assert _decode([bytes([b]) for b in stream]) == expected
    text = 'data: {"t": "héllo ✓"}\n\n'.encode()
    assert _decode([text[:12], text[12:14], text[14:]]) == [SSEEvent(data='{"t": "héllo ✓"}')]
