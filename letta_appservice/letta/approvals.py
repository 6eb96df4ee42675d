"""Tool approvals in Letta: answering a pending request (plain or streamed), and asking which
calls an agent still waits on. Requests go through the client's machinery (errors, metrics).

Every call takes an optional Letta conversation id: a turn held in a conversation is answered
there (`/v1/conversations/{id}/messages`) instead of on the agent."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import attrs

from .client import LettaClient
from .errors import LettaError, safe_url
from .models import LettaResponse, ToolCall, parse_message, parse_response
from .stream import LettaStream

PENDING_APPROVAL = "agent.pending_approval"


@attrs.frozen
class Decision:
    """A person's answer to one tool call."""

    tool_call_id: str
    approve: bool
    reason: str = ""


def approval_message(decisions: Sequence[Decision]) -> dict[str, Any]:
    """The message that answers an approval request (Letta 0.16)."""
    approvals = []
    for d in decisions:
        answer: dict[str, Any] = {"type": "approval", "tool_call_id": d.tool_call_id}
        answer["approve"] = d.approve
        if not d.approve and d.reason:
            answer["reason"] = d.reason
        approvals.append(answer)
    return {"type": "approval", "approvals": approvals}


def _messages_path(agent_id: str, conversation_id: str | None) -> str:
    if conversation_id:
        return f"/v1/conversations/{quote(conversation_id, safe='')}/messages"
    return f"/v1/agents/{quote(agent_id, safe='')}/messages"


async def send_decisions(
    client: LettaClient,
    agent_id: str,
    decisions: Sequence[Decision],
    *,
    conversation_id: str | None = None,
) -> LettaResponse:
    """Answer the pending calls and wait for the rest of the turn. Not retried: like a user
    message, the answer may have reached the agent."""
    path = _messages_path(agent_id, conversation_id)
    body: dict[str, Any] = {"messages": [approval_message(decisions)]}
    if conversation_id:
        body["streaming"] = False  # conversations stream by default
    raw = await client.call("POST", path, body=body, idempotent=False)
    try:
        return parse_response(raw)
    except ValueError as exc:
        raise LettaError("protocol", str(exc), url=safe_url(client.url(path))) from exc


def stream_decisions(
    client: LettaClient,
    agent_id: str,
    decisions: Sequence[Decision],
    *,
    conversation_id: str | None = None,
    stream_tokens: bool = True,
) -> LettaStream:
    """Answer the pending calls and stream the rest of the turn (as `stream_message`)."""
    message = approval_message(decisions)

    async def open_stream() -> Any:
        if not conversation_id:
            return await client.open_stream(agent_id, message, stream_tokens)
        body = {"messages": [message], "streaming": True, "stream_tokens": stream_tokens}
        body["include_pings"] = True
        return await client.post_stream(_messages_path(agent_id, conversation_id), body)

    return LettaStream(open_stream, client.timeout, on_error=client.stream_failed)


async def pending_calls(
    client: LettaClient, agent_id: str, *, conversation_id: str | None = None
) -> tuple[ToolCall, ...]:
    """The tool calls the agent (in the conversation) waits on now: none when nothing is
    pending. An agent's `pending_approval` is filled only when asked for; a conversation's
    is its newest message."""
    if conversation_id:
        path = _messages_path(agent_id, conversation_id)
        newest = await client.call(
            "GET", path, params=[("limit", "1"), ("order", "desc")], idempotent=True
        )
        pending = newest[0] if isinstance(newest, list) and newest else None
    else:
        path = f"/v1/agents/{quote(agent_id, safe='')}"
        params = [("include", PENDING_APPROVAL)]
        raw = await client.call("GET", path, params=params, idempotent=True)
        pending = raw.get("pending_approval") if isinstance(raw, Mapping) else None
    message = parse_message(pending) if isinstance(pending, Mapping) else None
    if message is None or message.kind != "approval":
        return ()
    return message.calls
