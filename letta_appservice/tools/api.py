"""The tool API on the appservice port: what the tools in Letta's sandbox call (agent id and
the agent's secret, checked in constant time), and the send API for scripts (a token from the
config). Errors are sentences the model can act on; secrets never appear in an answer or a log.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from mautrix.errors import MatrixConnectionError, MatrixRequestError
from prometheus_client import Counter

from ..db.agent import ACTIVE, AgentRow, AgentStore
from ..metrics import Metrics
from .matrix import MatrixActions, ToolError, send, tool_content
from .source import API_PATH
from .sync import ToolSync
from .talk import Talks, find_agents

log = logging.getLogger("letta_appservice.tools.api")
SEND_PATH = "/_letta_appservice/send"
DENIED = (
    "This Matrix tool call is not authorized: the agent id and its secret do not match. "
    "A bridge admin can check the agent's tools with `!letta tools <agent>`."
)
Handler = Callable[[AgentRow, dict[str, Any]], Awaitable[str]]


def _error(status: int, text: str) -> web.Response:
    return web.json_response({"error": text}, status=status)


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    return header[7:] if header.startswith("Bearer ") else ""


def _homeserver_failed(e: Exception) -> web.Response:
    reason = getattr(e, "errcode", None) or type(e).__name__
    return _error(502, f"The Matrix homeserver refused or failed ({reason}); try later.")


HOMESERVER_ERRORS = (MatrixRequestError, MatrixConnectionError, aiohttp.ClientError)


def _str(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str):
        raise ToolError(f"The argument {key!r} is missing or not text.")
    return value


class RateLimit:
    """At most ``per_minute`` calls per agent in any minute."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._calls: dict[str, deque[float]] = {}

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        calls = self._calls.setdefault(key, deque())
        while calls and now - calls[0] > 60:
            calls.popleft()
        if len(calls) >= self.per_minute:
            return False
        calls.append(now)
        return True


class ToolApi:
    def __init__(
        self,
        *,
        sync: ToolSync,
        agents: AgentStore,
        actions: MatrixActions,
        talks: Talks,
        metrics: Metrics,
        calls_per_minute: int,
        send_token: str,
    ) -> None:
        self.sync = sync
        self.agents = agents
        self.actions = actions
        self.limit = RateLimit(calls_per_minute)
        self._send_token = send_token.encode()
        self.calls = Counter(
            "letta_appservice_tool_calls",
            "Matrix tool calls by agents (and the send API), by tool and result",
            ["tool", "result"],
            registry=metrics.registry,
        )
        a = actions
        self.handlers: dict[str, Handler] = {
            "matrix_list_rooms": lambda agent, _: a.list_rooms(agent),
            "matrix_read_room": lambda agent, args: a.read_room(
                agent, _str(args, "room"), args.get("limit", 20)
            ),
            "matrix_send_message": lambda agent, args: a.send_message(
                agent, _str(args, "room"), _str(args, "text"), "matrix_send_message"
            ),
            "matrix_message_person": lambda agent, args: a.message_person(
                agent, _str(args, "user"), _str(args, "text"), "matrix_message_person"
            ),
            "matrix_talk_to_agent": lambda agent, args: talks.talk(
                agent, _str(args, "agent"), _str(args, "message")
            ),
        }

    def mount(self, app: web.Application) -> None:
        app.router.add_post(API_PATH + "{tool}", self.call)
        app.router.add_post(SEND_PATH, self.send)

    async def call(self, request: web.Request) -> web.Response:
        tool = request.match_info["tool"]
        response = await self._call(request, tool)
        result = "ok" if response.status == 200 else str(response.status)
        self.calls.labels(tool if tool in self.handlers else "unknown", result).inc()
        return response

    async def _call(self, request: web.Request, tool: str) -> web.Response:
        agent_id = request.headers.get("X-Letta-Agent-Id", "")
        if not await self.sync.check(agent_id, _bearer(request)):
            log.warning("Refused a %.60r tool call for agent %.60r: bad secret", tool, agent_id)
            return _error(403, DENIED)
        agent = await self.agents.get(agent_id)
        if agent is None or agent.state != ACTIVE:
            return _error(403, "This agent is not bridged to Matrix (any more).")
        handler = self.handlers.get(tool)
        if handler is None:
            return _error(404, f"There is no Matrix tool {tool!r}.")
        if not self.limit.allow(agent_id):
            return _error(
                429,
                f"Too many Matrix tool calls: at most {self.limit.per_minute} a minute. "
                "Wait a minute, then try again.",
            )
        try:
            args = json.loads(await request.read() or b"{}")
        except ValueError:
            args = None
        if not isinstance(args, dict):
            return _error(400, "The tool's arguments are not a JSON object.")
        try:
            result = await handler(agent, args)
        except ToolError as e:
            return _error(400, str(e))
        except HOMESERVER_ERRORS as e:
            log.warning("Tool %s of agent %s: homeserver error: %s", tool, agent_id, e)
            return _homeserver_failed(e)
        return web.json_response({"result": result})

    async def send(self, request: web.Request) -> web.Response:
        """POST {"agent": <id or name>, "room": <room>, "text": <Markdown>} with the send token:
        posts as the agent's puppet into one of its rooms."""
        token = _bearer(request)
        if not self._send_token:
            return _error(404, "The send API is off (tools.send_token is empty).")
        if not hmac.compare_digest(token.encode("utf-8", "surrogateescape"), self._send_token):
            self.calls.labels("send_api", "403").inc()
            return _error(403, "Wrong or missing token.")
        try:
            body = json.loads(await request.read() or b"{}")
            agent = await self._agent(_str(body, "agent"))
            room_id = await self.actions.room(agent, _str(body, "room"))
            content = tool_content(_str(body, "text"), {"api": "send"})
            event_id = await send(self.actions.puppets.api(agent.mxid), room_id, content)
        except (ValueError, TypeError, AttributeError):
            return _error(400, "The body must be a JSON object with agent, room and text.")
        except ToolError as e:
            return _error(400, str(e))
        except HOMESERVER_ERRORS as e:
            return _homeserver_failed(e)
        self.calls.labels("send_api", "ok").inc()
        return web.json_response({"event_id": event_id, "room_id": room_id})

    async def _agent(self, query: str) -> AgentRow:
        found = await find_agents(self.agents, query)
        if len(found) != 1:
            raise ToolError(f"No single bridged agent is called {query!r}; give its id.")
        return found[0]
