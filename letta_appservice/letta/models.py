"""Plain attrs models of Letta replies and agents, parsed tolerantly across server versions."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import attrs

MessageKind = Literal[
    "assistant", "reasoning", "tool_call", "tool_return", "approval", "error", "other"
]

# Stream bookkeeping events: they carry no content for the user.
_NON_MESSAGES = frozenset({"ping", "stop_reason", "usage_statistics"})
# Tool through which memgpt-style agents (and use_assistant_message=false) deliver their reply.
SEND_MESSAGE_TOOL = "send_message"


@attrs.frozen
class Agent:
    """The parts of a Letta AgentState the bridge uses."""

    id: str
    name: str
    description: str | None = None
    tags: tuple[str, ...] = ()
    updated_at: str | None = None

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Agent:
        """Build from an AgentState dict; raises ValueError when it has no usable id."""
        agent_id = raw.get("id") if isinstance(raw, Mapping) else None
        if not isinstance(agent_id, str) or not agent_id:
            raise ValueError(f"agent object without an id: {str(raw)[:200]}")
        tags = raw.get("tags") or ()
        description = raw.get("description")
        updated_at = raw.get("updated_at")
        return cls(
            id=agent_id,
            name=str(raw.get("name") or ""),
            description=description if isinstance(description, str) else None,
            tags=tuple(str(tag) for tag in tags if isinstance(tag, str)),
            updated_at=str(updated_at) if updated_at is not None else None,
        )


@attrs.frozen
class ToolCall:
    """One tool call waiting for a person's approval."""

    id: str
    name: str
    arguments: str


@attrs.frozen
class LettaMessage:
    """One message of an agent turn, normalised across Letta versions."""

    kind: MessageKind
    id: str | None
    text: str
    tool_name: str | None = None
    tool_arguments: str | None = None
    calls: tuple[ToolCall, ...] = ()  # of an approval request: every call it waits for


@attrs.frozen
class LettaResponse:
    """A complete (non-streamed) reply: the turn's messages and why the agent stopped."""

    messages: tuple[LettaMessage, ...]
    stop_reason: str | None = None

    @property
    def assistant_texts(self) -> list[str]:
        """The texts meant for the user, in order."""
        return [m.text for m in self.messages if m.kind == "assistant"]


def content_text(content: Any) -> str:
    """Text of a message content: a string, or a list of `{"type": "text", "text": …}` parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                # Non-text parts (images, …) have no "text"; they are skipped.
                if part.get("type", "text") == "text":
                    parts.append(part["text"])
        return "".join(parts)
    return str(content)


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _first_call(raw: Mapping[str, Any], *fields: str) -> Mapping[str, Any]:
    """The tool call of a message: a `tool_call` object or the first of a `tool_calls` list."""
    for field in fields:
        value = raw.get(field)
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, Mapping):
            return value
    return {}


def _calls(raw: Mapping[str, Any]) -> tuple[ToolCall, ...]:
    """Every call of an approval request that has an id (a streamed delta may carry none)."""
    listed = raw.get("tool_calls")
    found = listed if isinstance(listed, list) else [raw.get("tool_call")]
    calls = []
    for call in found:
        if isinstance(call, Mapping) and isinstance(call.get("tool_call_id"), str):
            name, arguments = _call_parts(call)
            calls.append(ToolCall(call["tool_call_id"], name or "", arguments or ""))
    return tuple(calls)


def tool_call_message(msg_id: str | None, name: str | None, arguments: str | None) -> LettaMessage:
    """A tool call, except that a `send_message` call carrying valid JSON is the agent's reply."""
    if name == SEND_MESSAGE_TOOL and arguments:
        try:
            args = json.loads(arguments)
        except ValueError:
            args = None
        if isinstance(args, Mapping) and isinstance(args.get("message"), str):
            return LettaMessage("assistant", msg_id, args["message"])
    return LettaMessage("tool_call", msg_id, "", tool_name=name, tool_arguments=arguments)


def _call_parts(call: Mapping[str, Any]) -> tuple[str | None, str | None]:
    name = call.get("name")
    arguments = call.get("arguments")
    return (
        name if isinstance(name, str) else None,
        _as_text(arguments) if arguments is not None else None,
    )


def _message_type(raw: Mapping[str, Any]) -> str | None:
    mtype = raw.get("message_type")
    if isinstance(mtype, str):
        return mtype
    # Very old payloads may lack message_type; recognise them by their single content field.
    for field in ("internal_monologue", "function_call", "function_return", "assistant_message"):
        if field in raw:
            return field
    return None


def parse_message(raw: Any) -> LettaMessage | None:
    """Normalise one raw Letta message; None for pings, stop reasons and usage statistics."""
    if not isinstance(raw, Mapping):
        return None
    mtype = _message_type(raw)
    if mtype in _NON_MESSAGES:
        return None
    msg_id = raw.get("id") if isinstance(raw.get("id"), str) else None
    if mtype == "assistant_message":
        # ≤0.6.14 put the text in `assistant_message`; later versions in `content`.
        content = raw.get("content")
        if content is None:
            content = raw.get("assistant_message")
        return LettaMessage("assistant", msg_id, content_text(content))
    if mtype in ("reasoning_message", "internal_monologue"):
        field = "reasoning" if mtype == "reasoning_message" else "internal_monologue"
        return LettaMessage("reasoning", msg_id, _as_text(raw.get(field)))
    if mtype == "hidden_reasoning_message":
        return LettaMessage("reasoning", msg_id, _as_text(raw.get("hidden_reasoning")))
    if mtype in ("tool_call_message", "function_call"):
        name, arguments = _call_parts(_first_call(raw, "tool_call", "tool_calls", "function_call"))
        return tool_call_message(msg_id, name, arguments)
    if mtype in ("tool_return_message", "function_return"):
        field = "tool_return" if mtype == "tool_return_message" else "function_return"
        name = raw.get("name")
        return LettaMessage(
            "tool_return",
            msg_id,
            _as_text(raw.get(field)),
            tool_name=name if isinstance(name, str) else None,
        )
    if mtype == "approval_request_message":
        name, arguments = _call_parts(_first_call(raw, "tool_call", "tool_calls"))
        return LettaMessage(
            "approval", msg_id, "", tool_name=name, tool_arguments=arguments, calls=_calls(raw)
        )
    if mtype == "error_message" or (mtype is None and "error" in raw):
        return LettaMessage("error", msg_id, error_text(raw))
    return LettaMessage("other", msg_id, content_text(raw.get("content")))


def error_text(raw: Mapping[str, Any]) -> str:
    """Human-readable text of an error payload (`error_message` or `{"error": {...}}`)."""
    for candidate in (raw.get("message"), raw.get("detail"), raw.get("error")):
        if isinstance(candidate, Mapping):
            candidate = candidate.get("message") or candidate.get("detail")
        if isinstance(candidate, str) and candidate:
            return candidate
    return "unknown error"


def stop_reason_of(value: Any) -> str | None:
    """The reason from a `stop_reason` event (`{"stop_reason": "end_turn"}`) or a bare string."""
    if isinstance(value, Mapping):
        value = value.get("stop_reason")
    return value if isinstance(value, str) else None


def parse_response(raw: Any) -> LettaResponse:
    """Parse a LettaResponse body; raises ValueError when it is not one."""
    if isinstance(raw, list):  # tolerate a server answering with the bare message list
        raw = {"messages": raw}
    if not isinstance(raw, Mapping) or not isinstance(raw.get("messages"), list):
        raise ValueError(f"not a Letta response: {str(raw)[:200]}")
    parsed = (parse_message(m) for m in raw["messages"])
    return LettaResponse(
        messages=tuple(m for m in parsed if m is not None),
        stop_reason=stop_reason_of(raw.get("stop_reason")),
    )


def merge_calls(previous: LettaMessage, delta: LettaMessage) -> tuple[ToolCall, ...]:
    """The approval calls of two deltas of one streamed message: a call seen again grows by
    its arguments; argument pieces without a call id belong to the last call."""
    calls = list(previous.calls)
    for call in delta.calls:
        at = next((i for i, c in enumerate(calls) if c.id == call.id), None)
        if at is None:
            calls.append(call)
        else:
            known = calls[at]
            calls[at] = ToolCall(
                known.id, known.name or call.name, known.arguments + call.arguments
            )
    if not delta.calls and delta.tool_arguments and calls:
        last = calls[-1]
        calls[-1] = attrs.evolve(last, arguments=last.arguments + delta.tool_arguments)
    return tuple(calls)


def merge_stream_deltas(messages: Iterable[LettaMessage]) -> list[LettaMessage]:
    """Join `stream_tokens` deltas: texts and tool arguments concatenated per message id.

    The key is (id, kind) because Letta gives the reasoning, tool call and assistant text
    produced by one LLM call the same message id. Order is that of first appearance;
    messages without an id are never merged.
    """
    merged: dict[object, LettaMessage] = {}
    for index, msg in enumerate(messages):
        key: object = (msg.id, msg.kind) if msg.id is not None else index
        previous = merged.get(key)
        if previous is None:
            merged[key] = msg
            continue
        arguments = None
        if previous.tool_arguments is not None or msg.tool_arguments is not None:
            arguments = (previous.tool_arguments or "") + (msg.tool_arguments or "")
        merged[key] = attrs.evolve(
            previous,
            text=previous.text + msg.text,
            tool_name=previous.tool_name or msg.tool_name,
            tool_arguments=arguments,
            calls=merge_calls(previous, msg),
        )
    # A send_message call streamed in pieces only becomes valid JSON once joined.
    return [
        tool_call_message(m.id, m.tool_name, m.tool_arguments) if m.kind == "tool_call" else m
        for m in merged.values()
    ]
