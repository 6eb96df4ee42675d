"""Builders of raw Letta message dicts, in every shape Letta servers have sent (fake + tests)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

Raw = dict[str, Any]


def new_id(prefix: str = "message") -> str:
    """An id in Letta's `<prefix>-<uuid4>` form."""
    return f"{prefix}-{uuid.uuid4()}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _base(message_type: str, msg_id: str | None) -> Raw:
    return {
        "id": msg_id or new_id(),
        "date": now_iso(),
        "name": None,
        "message_type": message_type,
        "otid": None,
        "sender_id": None,
        "step_id": None,
        "run_id": None,
    }


def _call(name: str, arguments: dict[str, Any] | str) -> Raw:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"name": name, "arguments": args, "tool_call_id": new_id("call")}


def reasoning(text: str, msg_id: str | None = None) -> Raw:
    return {**_base("reasoning_message", msg_id), "source": "reasoner_model", "reasoning": text}


def assistant(text: str, msg_id: str | None = None) -> Raw:
    """The modern assistant message: `content` is a string."""
    return {**_base("assistant_message", msg_id), "content": text}


def assistant_parts(*texts: str, msg_id: str | None = None) -> Raw:
    """Assistant message whose `content` is a list of text parts."""
    parts = [{"type": "text", "text": text} for text in texts]
    return {**_base("assistant_message", msg_id), "content": parts}


def legacy_assistant(text: str, msg_id: str | None = None) -> Raw:
    """0.6.x: the text in field `assistant_message`."""
    return {**_base("assistant_message", msg_id), "assistant_message": text}


def send_message_call(text: str, msg_id: str | None = None) -> Raw:
    """The reply of memgpt-style agents: a `send_message` tool call."""
    return tool_call("send_message", {"message": text}, msg_id)


def tool_call(name: str, arguments: dict[str, Any] | str, msg_id: str | None = None) -> Raw:
    call = _call(name, arguments)
    return {**_base("tool_call_message", msg_id), "tool_call": call, "tool_calls": [call]}


def tool_return(
    text: str, status: str = "success", name: str | None = None, msg_id: str | None = None
) -> Raw:
    raw = _base("tool_return_message", msg_id)
    raw.update(tool_return=text, status=status, tool_call_id=new_id("call"), stdout=None)
    raw["name"] = name
    return raw


def approval_request(name: str, arguments: dict[str, Any], msg_id: str | None = None) -> Raw:
    return {**_base("approval_request_message", msg_id), "tool_call": _call(name, arguments)}


def internal_monologue(text: str) -> Raw:
    """≤0.6.5 reasoning."""
    return {**_base("internal_monologue", None), "internal_monologue": text}


def function_call(name: str, arguments: dict[str, Any] | str) -> Raw:
    """≤0.6.5 tool call."""
    return {**_base("function_call", None), "function_call": _call(name, arguments)}


def function_return(text: str, status: str = "success") -> Raw:
    """≤0.6.5 tool return."""
    return {**_base("function_return", None), "function_return": text, "status": status}


def error_message(text: str) -> Raw:
    return {"message_type": "error_message", "error_type": "internal_error", "message": text}


def stop_reason(reason: str = "end_turn") -> Raw:
    return {"message_type": "stop_reason", "stop_reason": reason}


def usage(steps: int = 1) -> Raw:
    return {
        "message_type": "usage_statistics",
        "completion_tokens": 12 * steps,
        "prompt_tokens": 900 * steps,
        "total_tokens": 912 * steps,
        "step_count": steps,
    }


def ping() -> Raw:
    return {"message_type": "ping"}


def echo(_agent: object, text: str) -> list[Raw]:
    """The fake's default responder: a thought, then `Echo: <text>`."""
    return [reasoning(f"The user said {text!r}; echo it."), assistant(f"Echo: {text}")]


def release(version: str) -> tuple[int, ...]:
    """ "0.6.14" -> (0, 6, 14), for comparing server versions."""
    return tuple(int(part) for part in version.split(".")[:3])


def _assistant_text(raw: Raw) -> str:
    content = raw.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else raw.get("assistant_message") or ""


def for_version(messages: list[Raw], version: str) -> list[Raw]:
    """Modern messages as a server of ``version`` sends them (shared/letta-api.md): up to
    0.6.5 `internal_monologue` / `function_call` / `function_return` and the assistant text in
    field `assistant_message`; 0.6.6 to 0.6.14 still that field; later, as given."""
    at = release(version)
    if at >= (0, 6, 15):
        return messages
    out: list[Raw] = []
    for raw in messages:
        kind = raw.get("message_type")
        if kind == "assistant_message":
            old = {k: v for k, v in raw.items() if k != "content"}
            out.append({**old, "assistant_message": _assistant_text(raw)})
        elif at >= (0, 6, 6):
            out.append(raw)
        elif kind == "reasoning_message":
            out.append({**_base("internal_monologue", raw["id"]), "internal_monologue":
                        raw["reasoning"]})  # fmt: skip
        elif kind == "tool_call_message":
            out.append({**_base("function_call", raw["id"]), "function_call": raw["tool_call"]})
        elif kind == "tool_return_message":
            ret = {"function_return": raw["tool_return"], "status": raw.get("status", "success")}
            out.append({**_base("function_return", raw["id"]), **ret})
        else:
            out.append(raw)
    return out


def token_deltas(messages: list[Raw], size: int = 4) -> list[Raw]:
    """What `stream_tokens=true` sends: the same id repeated with text pieces of `size` chars."""
    fields = {"reasoning_message": "reasoning", "assistant_message": "content"}
    out: list[Raw] = []
    for raw in messages:
        field = fields.get(raw.get("message_type", ""))
        text = raw.get(field) if field else None
        if isinstance(text, str) and text:
            out.extend({**raw, field: text[i : i + size]} for i in range(0, len(text), size))
        elif raw.get("message_type") == "tool_call_message":
            args = raw["tool_call"]["arguments"]
            for i in range(0, len(args), size):
                # Only the first delta names the tool, as with real token streaming.
                call = {**raw["tool_call"], "arguments": args[i : i + size]}
                if i:
                    call["name"] = None
                out.append({**raw, "tool_call": call, "tool_calls": [call]})
        else:
            out.append(raw)
    return out


def long_text(paragraphs: int = 120) -> str:
    """Markdown far longer than one Matrix event may be (~70 kB in 120 paragraphs)."""
    words = " ".join(["some **bold** words"] * 30)
    return "\n\n".join(f"Paragraph {i}: {words}" for i in range(paragraphs))


def decided(request: Raw, approval: Raw) -> list[Raw]:
    """The rest of a turn after a person's answer to its ``approval_request`` (0.16.8): the
    tool runs (or is denied, with the person's reason) and the agent says what came of it."""
    name = request["tool_call"]["name"]
    if approval.get("approve"):
        return [tool_return(f"{name} ran", name=name), assistant(f"I ran {name}.")]
    reason = approval.get("reason") or "no reason given"
    denied = f"Error: request to call tool denied. User reason: {reason}"
    return [tool_return(denied, "error", name), assistant(f"I did not run {name}: {reason}.")]
