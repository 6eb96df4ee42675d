"""FakeLetta: an in-memory Letta REST server speaking the protocol of shared/letta-api.md."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Literal

from aiohttp import web
from multidict import MultiDict

from tests.harness import letta_replies as replies
from tests.harness.fake_letta_state import (
    FakeAgent,
    FakeConversation,
    LoggedMessage,
    Raw,
    RecordedRequest,
    Responder,
    Turn,
    content_text,
    is_legacy_client,
)
from tests.harness.fake_letta_stores import BODY as _BODY
from tests.harness.fake_letta_stores import FakeFolder, StoreRoutes
from tests.harness.fake_letta_stores import json_detail as _detail

__all__ = [
    "FakeAgent",
    "FakeConversation",
    "FakeFolder",
    "FakeLetta",
    "LoggedMessage",
    "RecordedRequest",
    "Responder",
]

_LEGACY = web.RequestKey("legacy", bool)  # the client judged legacy by its headers
_STREAMING_422 = "streaming=true is only supported for SDK v1.0+ clients."
_PENDING_APPROVAL = (
    "Cannot send a new message: The agent is waiting for approval on a tool call. Please "
    "approve or deny the pending request before continuing."
)
# An answer to an approval nothing waits on (the fake's words; 0.16.8 refuses it too).
_NO_PENDING = "Cannot process approval response: no tool call is waiting for approval."


class FakeLetta(StoreRoutes):
    """Letta server double with fault injection and recording.

    Modes: `paginate=False` is 0.6.0 (no `limit`/`after`); `honour_after=False` is a broken
    server that ignores cursors; `inline_streaming` is "v1" (0.16.8: by client headers),
    "never" (422 to everyone) or "ignored" (before 0.14: the flag is ignored, JSON comes back).
    Like 0.16.8, it runs a second turn of a busy agent at once; `reject_concurrent=True` answers
    409 instead, as servers that lock an agent per request do (the refused request still counts
    in `in_flight`/`max_in_flight`: they measure what the client sent). Cancelling an agent with
    no turn running is a 409, as on 0.16.8; so is a message to an agent waiting on a tool
    approval, with 0.16.8's `PENDING_APPROVAL` detail. A message of type `approval` answers
    that request: the tool runs (or is denied) and the turn goes on to `end_turn`
    (letta_replies.decided).

    From 0.16.2 it has the Conversations API (`self.conversations`): histories of an agent of
    their own, each with its own pending approval; messages there stream unless `"streaming":
    false`; an unknown (deleted) one is 404 "Conversation not found"; its cancel finds only a
    streamed turn of it (0.16.8 records no conversation on the run of a plain one), else 409.
    Older versions answer 404 there, as the real ones do (so does `has_conversations=False`).
    Folders (`self.folders`) take uploads (`duplicate_handling` "skip" keeps a file of that
    name, else a suffixed copy) and are processed at once; `has_folders=False`: none.

    It follows the version it claims: replies in that version's shapes (letta_replies.
    for_version), no stop reason before 0.8.5, and (unless `inline_streaming` is given) the
    `streaming` flag ignored before 0.14.
    """

    def __init__(
        self,
        api_key: str = "",
        *,
        version: str = "0.16.8",
        paginate: bool = True,
        honour_after: bool = True,
        inline_streaming: Literal["v1", "never", "ignored"] | None = None,
        reject_concurrent: bool = False,
        has_conversations: bool = True,
        has_folders: bool = True,
    ) -> None:
        self.api_key, self.version = api_key, version
        self.paginate = paginate
        self.honour_after = honour_after
        self.inline_streaming = inline_streaming
        self.reject_concurrent = reject_concurrent
        self.has_conversations = has_conversations  # False: 404 there whatever the version
        self.has_folders = has_folders  # False: no /v1/folders (nor /v1/sources): 404
        self.folders: dict[str, FakeFolder] = {}
        self.attached: dict[str, set[str]] = defaultdict(set)  # agent id -> folder ids
        self.agents: dict[str, FakeAgent] = {}
        self.conversations: dict[str, FakeConversation] = {}
        self.responder: Responder = replies.echo
        self.delay = 0.0
        self.pings = 0  # keep-alive pings spread over the delay of streamed turns
        self.done_markers: tuple[str, ...] = ("[DONE]",)
        self.requests: list[RecordedRequest] = []
        self.message_log: list[LoggedMessage] = []
        self.in_flight: dict[str, int] = defaultdict(int)
        self.max_in_flight: dict[str, int] = defaultdict(int)
        self.url = ""
        self._failures: list[list[Any]] = []
        self.turns: set[Turn] = set()
        self._changed = asyncio.Event()
        self._seq = 0
        self._runner: web.AppRunner | None = None

    # -- control ---------------------------------------------------------------------------

    def add_agent(self, name: str, **fields: Any) -> FakeAgent:
        self._seq += 1
        agent = FakeAgent(id=f"agent-{uuid.uuid4()}", name=name, seq=self._seq, **fields)
        self.agents[agent.id] = agent
        return agent

    def fail_next(self, n: int, status: int = 500, path_contains: str = "") -> None:
        """Answer the next `n` requests whose path contains `path_contains` with `status`."""
        self._failures.append([n, status, path_contains])

    def requests_to(self, path: str, method: str | None = None) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path and method in (None, r.method)]

    def conversations_of(self, agent_id: str) -> list[str]:
        """The ids of the agent's conversations, oldest first."""
        return [c.id for c in self.conversations.values() if c.agent_id == agent_id]

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_until(self, predicate: Callable[[], bool], within: float) -> None:
        async with asyncio.timeout(within):
            while not predicate():
                await self._changed.wait()

    async def wait_for_messages(self, n: int, timeout: float = 10) -> list[LoggedMessage]:
        """Wait until `n` messages have been fully processed."""
        await self._wait_until(lambda: len(self.message_log) >= n, timeout)
        return list(self.message_log)

    async def wait_for_in_flight(self, agent_id: str, n: int = 1, timeout: float = 10) -> None:
        """Wait until `n` turns of the agent are being processed."""
        await self._wait_until(lambda: self.in_flight[agent_id] >= n, timeout)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(middlewares=[self._middleware])
        add = app.router.add_route
        for path in ("/v1/health/", "/v1/health"):
            add("GET", path, self._health)
        for path in ("/v1/agents/", "/v1/agents"):
            add("GET", path, self._list_agents)
            add("POST", path, self._create_agent)
        add("GET", "/v1/agents/{agent_id}", self._get_agent)
        add("PATCH", "/v1/agents/{agent_id}", self._patch_agent)
        add("DELETE", "/v1/agents/{agent_id}", self._delete_agent)
        add("POST", "/v1/agents/{agent_id}/messages", self._messages)
        add("POST", "/v1/agents/{agent_id}/messages/stream", self._messages)
        add("POST", "/v1/agents/{agent_id}/messages/cancel", self._cancel)
        self.add_store_routes(add)
        self._runner = web.AppRunner(app, shutdown_timeout=2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.url = f"http://{host}:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        for turn in self.turns:  # release slow turns so shutdown does not wait for them
            turn.cancel.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- HTTP --------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        # Uploads are multipart: their handler reads the form.
        multipart = request.content_type.startswith("multipart/")
        raw = await request.read() if request.can_read_body and not multipart else b""
        try:
            request[_BODY] = json.loads(raw) if raw else None
        except ValueError:
            return _detail(422, "Request body is not valid JSON")
        auth = request.headers.get("Authorization")
        request[_LEGACY] = is_legacy_client(request.headers)
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        self.requests.append(
            RecordedRequest(
                request.method,
                request.path,
                MultiDict(request.query),
                headers,
                request[_BODY],
                time.monotonic(),
                auth is not None,
                request[_LEGACY],
            )
        )
        for failure in self._failures:
            if failure[0] > 0 and failure[2] in request.path:
                failure[0] -= 1
                return _detail(failure[1], f"Injected failure {failure[1]}")
        if self.api_key and not request.path.startswith("/v1/health"):
            if auth != f"Bearer {self.api_key}":
                return _detail(401, "Unauthorized")
        return await handler(request)

    def _agent(self, request: web.Request) -> FakeAgent:
        agent = self.agents.get(request.match_info["agent_id"])
        if agent is None:
            detail = f"Agent with ID {request.match_info['agent_id']} not found"
            body = json.dumps({"detail": detail})
            raise web.HTTPNotFound(text=body, content_type="application/json")
        return agent

    def _agent_json(self, request: web.Request, agent: FakeAgent) -> Raw:
        # Legacy clients get blocks and tools expanded; v1 clients only when they ask.
        include = request.query.getall("include", [])
        expand = request[_LEGACY]
        return agent.to_json(
            blocks=expand or "agent.blocks" in include, tools=expand or "agent.tools" in include
        )

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"version": self.version, "status": "ok"})

    async def _list_agents(self, request: web.Request) -> web.Response:
        query = request.query
        agents = sorted(self.agents.values(), key=lambda a: a.seq)
        if query.get("order", "desc") != "asc":
            agents.reverse()
        tags = set(query.getall("tags", []))
        if tags:
            match_all = query.get("match_all_tags", "false").lower() == "true"
            agents = [
                a for a in agents if (tags <= set(a.tags) if match_all else tags & set(a.tags))
            ]
        if "name" in query:
            agents = [a for a in agents if a.name == query["name"]]
        if "query_text" in query:
            agents = [a for a in agents if query["query_text"].lower() in a.name.lower()]
        if self.paginate:
            try:
                limit = int(query.get("limit", "50"))
            except ValueError:
                return _detail(422, [{"loc": ["query", "limit"], "msg": "not an integer"}])
            ids = [a.id for a in agents]
            after, before = query.get("after"), query.get("before")
            if before is not None:
                agents = agents[: ids.index(before)] if before in ids else []
            if after is not None and self.honour_after:
                agents = agents[ids.index(after) + 1 :] if after in ids else []
            # Nearest to the `before` cursor when paging backwards.
            agents = agents[-limit:] if before and not after else agents[:limit]
        return web.json_response([self._agent_json(request, a) for a in agents])

    async def _create_agent(self, request: web.Request) -> web.Response:
        body = request[_BODY] if isinstance(request[_BODY], dict) else {}
        known = ("description", "tags", "metadata", "agent_type", "model")
        agent = self.add_agent(
            body.get("name") or f"agent-{self._seq + 1}",
            **{k: body[k] for k in known if body.get(k) is not None},
        )
        return web.json_response(self._agent_json(request, agent))

    async def _get_agent(self, request: web.Request) -> web.Response:
        return web.json_response(self._agent_json(request, self._agent(request)))

    async def _patch_agent(self, request: web.Request) -> web.Response:
        agent = self._agent(request)
        body = request[_BODY] if isinstance(request[_BODY], dict) else {}
        for key in ("name", "description", "tags", "metadata"):
            if key in body:
                setattr(agent, key, body[key])
        agent.updated_at = replies.now_iso()
        return web.json_response(self._agent_json(request, agent))

    async def _delete_agent(self, request: web.Request) -> web.Response:
        agent = self.agents.pop(self._agent(request).id)
        return web.json_response({"message": f"Agent id={agent.id} successfully deleted"})

    async def _cancel(self, request: web.Request) -> web.Response:
        agent = self._agent(request)
        turns = [t for t in self.turns if t.agent is agent]
        if not turns:
            return _detail(409, f"CONFLICT: No active runs to cancel for agent {agent.id}")
        for turn in turns:
            turn.cancel.set()
        return web.json_response({turn.run_id: "cancelled" for turn in turns})

    # -- messages ----------------------------------------------------------------------------

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        agent = self._agent(request)
        body = request[_BODY] if isinstance(request[_BODY], dict) else {}
        release = replies.release(self.version)
        inline = self.inline_streaming or ("v1" if release >= (0, 14) else "ignored")
        legacy_route = request.path.endswith("/stream")
        streaming = legacy_route or bool(body.get("streaming"))
        if not legacy_route and inline == "ignored":
            streaming = False  # servers before 0.14 do not know the flag
        elif not legacy_route:
            if not streaming and (body.get("stream_tokens") or body.get("include_pings") is False):
                return _detail(422, "Streaming options set without streaming enabled.")
            legacy = inline == "never" or request[_LEGACY]
            if streaming and legacy:
                return _detail(422, _STREAMING_422)
        return await self._turn(agent, body, request, streaming, None)

    async def _turn(
        self,
        agent: FakeAgent,
        body: Raw,
        request: web.Request,
        streaming: bool,
        conversation: FakeConversation | None,
    ) -> web.StreamResponse:
        """A turn of ``agent`` in its own history or ``conversation``."""
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
            return _detail(422, [{"loc": ["body", "messages"], "msg": "Field required"}])
        message = messages[-1]
        pending = conversation.pending_call if conversation else agent.pending_call
        answer = None
        if message.get("type") == "approval":
            answer = self._decided(agent, conversation, message)
            if isinstance(answer, web.Response):
                return answer
            approvals = [a for a in message.get("approvals") or [] if isinstance(a, dict)]
            text = " ".join(f"[{'approve' if a.get('approve') else 'deny'} "
                            f"{a.get('tool_call_id')}]" for a in approvals)  # fmt: skip
        else:
            # Servers before 0.6.15 read `text` and have no `content` (FastAPI: missing -> 422).
            field = "text" if replies.release(self.version) < (0, 6, 15) else "content"
            content = message.get(field)
            if content is None:
                loc = ["body", "messages", 0, field]
                return _detail(422, [{"loc": loc, "msg": "Field required"}])
            text = content if isinstance(content, str) else content_text(content)
            if pending is not None or (conversation is None and agent.pending_approval):
                # 0.16.8's answer (server/rest_api/routers/v1/agents.py, PendingApprovalError).
                detail = {"code": "PENDING_APPROVAL", "message": _PENDING_APPROVAL}
                request_id = pending["id"] if pending else agent.pending_request_id
                return _detail(409, {**detail, "pending_request_id": request_id})
        # Counted in flight before any refusal.
        turn = Turn(self, agent, text, message, conversation, answer)
        if self.reject_concurrent and self.in_flight[agent.id] > 1:
            turn.finish(refused=True)
            return _detail(409, f"Agent {agent.id} is already processing a request")
        try:
            if streaming:
                return await turn.stream(request, body)
            reply = await turn.run()
            return web.json_response(reply)
        finally:
            turn.finish()

    def _decided(
        self, agent: FakeAgent, conversation: FakeConversation | None, message: Raw
    ) -> list[Raw] | web.Response:
        """What the turn says after a person's answer to the pending request (which it
        clears), or the refusal of an answer nothing waits on."""
        pending = conversation.pending_call if conversation else agent.pending_call
        if pending is None:
            return _detail(400, _NO_PENDING)
        call_id = pending["tool_call"]["tool_call_id"]
        approvals = [a for a in message.get("approvals") or [] if isinstance(a, dict)]
        answer = [a for a in approvals if a.get("tool_call_id") == call_id]
        if not answer:
            return _detail(400, f"Invalid tool call IDs: expected {call_id}")
        if conversation is not None:
            conversation.pending_call = None
        else:
            agent.pending_approval, agent.pending_request_id = False, None
            agent.pending_call = None
        return replies.decided(pending, answer[0])


async def serve(host: str, port: int, agents: list[str]) -> None:
    """The fake Letta as a server of its own, with these agents, until SIGTERM or SIGINT."""
    import signal

    letta = FakeLetta()
    for name in agents:
        letta.add_agent(name)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(f"fake Letta on {await letta.start(host, port)}", flush=True)
    try:
        await stop.wait()
    finally:
        await letta.stop()


if __name__ == "__main__":
    # In a container on the compose stack's network (tests/compose/stand-ins.yml).
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.harness.fake_letta")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8283)
    parser.add_argument("--agent", action="append", default=[], help="an agent's name")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.agent))
