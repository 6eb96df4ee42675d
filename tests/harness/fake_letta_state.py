"""FakeLetta's state: agents, request records and turns in progress (the SSE writer)."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from aiohttp import web
from multidict import MultiDict

from tests.harness import letta_replies as replies

if TYPE_CHECKING:
    from tests.harness.fake_letta import FakeLetta

Raw = dict[str, Any]
Responder = Callable[["FakeAgent", str], "list[Raw] | Awaitable[list[Raw]]"]


def is_legacy_client(headers: Mapping[str, str]) -> bool:
    """Letta 0.16.8's rule: SDK v1 header, no User-Agent or letta-client/1.x are modern."""
    if "X-Stainless-Package-Version" in headers:
        return False
    agent = headers.get("User-Agent")
    if not agent or agent.startswith("letta-client/1."):
        return False
    return "/" in agent


@dataclass
class FakeAgent:
    """One agent and its per-agent behaviour knobs."""

    id: str
    name: str
    seq: int
    description: str | None = None
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    agent_type: str = "letta_v1_agent"
    model: str = "openai/gpt-4o-mini"
    created_at: str = field(default_factory=replies.now_iso)
    updated_at: str = field(default_factory=replies.now_iso)
    responder: Responder | None = None  # None: the server's responder
    delay: float | None = None  # None: the server's delay
    stop_reason: str | None = "end_turn"  # None: omit it, as servers before 0.8.5 did
    stream_error: str | None = None  # set: streams end with `event: error`
    pending_approval: bool = False
    pending_request_id: str | None = None  # the approval request it waits on
    pending_call: Raw | None = None  # that request's message (its own history's)
    drop_stream_after: int | None = None  # set: the connection is cut after so many messages

    def to_json(self, *, blocks: bool, tools: bool) -> Raw:
        dummy_blocks = [
            {"id": f"block-{uuid.uuid5(uuid.NAMESPACE_URL, self.id + label)}", "label": label}
            | {"value": f"The {label} block.", "limit": 20000, "read_only": False}
            for label in ("persona", "human")
        ]
        dummy_tools = [
            {"id": f"tool-{uuid.uuid5(uuid.NAMESPACE_URL, name)}", "name": name}
            | {"tool_type": "letta_core", "json_schema": {"name": name, "parameters": {}}}
            for name in ("send_message", "conversation_search", "memory_replace")
        ]
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "tags": list(self.tags),
            "metadata": dict(self.metadata),
            "agent_type": self.agent_type,
            "model": self.model,
            "llm_config": {"model": self.model.split("/")[-1], "context_window": 128000},
            "system": "You are a helpful assistant.",
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "project_id": None,
            "blocks": dummy_blocks if blocks else [],
            "tools": dummy_tools if tools else [],
        }


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: MultiDict[str]
    headers: dict[str, str]  # without Authorization
    json: Any
    time: float
    has_auth: bool
    legacy_client: bool  # how the server judged the client, by its headers


class LoggedMessage(NamedTuple):
    agent_id: str
    text: str
    otid: str | None
    name: str | None
    start_time: float
    end_time: float
    conversation_id: str | None = None  # None: the agent's own history


@dataclass
class FakeConversation:
    """A conversation of an agent (0.16.2+): a history of its own, with its own pending
    approval request."""

    id: str
    agent_id: str
    created_at: str = field(default_factory=replies.now_iso)
    messages: list[Raw] = field(default_factory=list)  # what the agent said, oldest first
    pending_call: Raw | None = None

    def to_json(self) -> Raw:
        return {"id": self.id, "agent_id": self.agent_id, "created_at": self.created_at,
                "summary": None}  # fmt: skip


def content_text(content: Any) -> str:
    """Text of a list-of-parts user content."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


class Turn:
    """One agent turn in progress: counts as in flight until finished, cancellable."""

    def __init__(
        self,
        fake: FakeLetta,
        agent: FakeAgent,
        text: str,
        message: Raw,
        conversation: FakeConversation | None = None,
        answer: list[Raw] | None = None,
    ) -> None:
        self.fake, self.agent, self.text = fake, agent, text
        self.otid, self.name = message.get("otid"), message.get("name")
        self.conversation = conversation
        self.answer = answer  # set: the turn says this instead of asking the responder
        self.streamed = False
        self.run_id = replies.new_id("run")
        self.cancel = asyncio.Event()
        self.start = time.monotonic()
        self.done = False
        fake.turns.add(self)
        fake.in_flight[agent.id] += 1
        fake.max_in_flight[agent.id] = max(fake.max_in_flight[agent.id], fake.in_flight[agent.id])
        fake.notify()

    def finish(self, *, refused: bool = False) -> None:
        """The turn is over; a refused one (the agent busy) never reaches the message log."""
        if self.done:
            return
        self.done = True
        self.fake.turns.discard(self)
        self.fake.in_flight[self.agent.id] -= 1
        if refused:
            self.fake.notify()
            return
        conversation = self.conversation.id if self.conversation else None
        self.fake.message_log.append(
            LoggedMessage(
                self.agent.id,
                self.text,
                self.otid,
                self.name,
                self.start,
                time.monotonic(),
                conversation,
            )
        )
        self.fake.notify()

    async def _sleep(self, seconds: float) -> bool:
        """Wait, unless cancelled first; True when the turn was cancelled."""
        if seconds > 0 and not self.cancel.is_set():
            try:
                await asyncio.wait_for(self.cancel.wait(), seconds)
            except TimeoutError:
                pass
        return self.cancel.is_set()

    def _delay(self) -> float:
        return self.agent.delay if self.agent.delay is not None else self.fake.delay

    async def _reply(self) -> tuple[list[Raw], str | None]:
        if self.cancel.is_set():
            return [], "cancelled"
        if self.answer is not None:
            messages = list(self.answer)
        else:
            result = (self.agent.responder or self.fake.responder)(self.agent, self.text)
            messages = list(await result if inspect.isawaitable(result) else result)
        version = self.fake.version
        reason = self.agent.stop_reason
        for m in messages:
            if m.get("message_type") == "approval_request_message":
                # The history the request is in waits on it.
                if self.conversation is not None:
                    self.conversation.pending_call = m
                else:
                    self.agent.pending_approval, self.agent.pending_request_id = True, m["id"]
                    self.agent.pending_call = m
                reason = "requires_approval"
        if self.conversation is not None:
            self.conversation.messages.extend(messages)
        # Servers before 0.8.5 sent no stop reason at all.
        if replies.release(version) < (0, 8, 5):
            reason = None
        return replies.for_version(messages, version), reason

    async def run(self) -> Raw:
        if self.agent.stream_error:
            raise web.HTTPInternalServerError(
                text=json.dumps({"detail": self.agent.stream_error}),
                content_type="application/json",
            )
        await self._sleep(self._delay())
        messages, reason = await self._reply()
        response: Raw = {"messages": messages, "usage": replies.usage()}
        if reason:
            response["stop_reason"] = replies.stop_reason(reason)
        return response

    async def stream(self, request: web.Request, body: Raw) -> web.StreamResponse:
        self.streamed = True
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)

        async def send(payload: Raw | str, event: str | None = None) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            await resp.write(
                ((f"event: {event}\n" if event else "") + f"data: {data}\n\n").encode()
            )

        try:
            pings = self.fake.pings if body.get("include_pings", True) else 0
            for i in range(pings + 1):
                if await self._sleep(self._delay() / (pings + 1)):
                    break
                if i < pings:
                    await send(replies.ping())
            messages, reason = await self._reply()
            if body.get("stream_tokens"):
                messages = replies.token_deltas(messages)
            for n, message in enumerate(messages):
                if n == self.agent.drop_stream_after:
                    # Letta gone mid-stream (crashed, network cut): no error event, no end.
                    assert request.transport is not None
                    request.transport.close()
                    return resp
                await send(message)
            if self.agent.stream_error:
                await send(replies.error_message(self.agent.stream_error), event="error")
                return resp
            if reason:
                await send(replies.stop_reason(reason))
            await send(replies.usage())
            self.finish()  # before [DONE], so a client sending its next message is not refused
            for marker in self.fake.done_markers:
                await send(marker)
            await resp.write_eof()
        except ConnectionResetError:
            pass  # the client went away; a real server would carry on regardless
        return resp
