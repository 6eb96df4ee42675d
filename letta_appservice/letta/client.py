"""Thin async REST client for a Letta server: health, agents, messages (plain and streamed)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Container, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp

from .. import __version__
from .errors import LettaError, http_error, read_detail, safe_url, transport_errors
from .models import Agent, LettaResponse, parse_response
from .stream import LettaStream
from .versions import UserContent, message_text_field, user_message

log = logging.getLogger("letta_appservice.letta")

# Letta 0.16 serves "v1.0+ SDK" clients (inline streaming, agents without expanded blocks and
# tools) only when it sees this header; a User-Agent with a "/" alone marks a legacy client.
_MODERN_API_HEADER = {"X-Stainless-Package-Version": "1.0.0"}
_T = TypeVar("_T")
# (operation, seconds or None, error kind or None); seconds is None for an error in the middle
# of a stream, whose request was observed when the stream started.
RequestObserver = Callable[[str, float | None, str | None], None]


def _operation(path: str) -> str:
    """A low-cardinality label for a request path (no agent ids)."""
    if path.startswith("/v1/health"):
        return "health"
    if path.endswith("/cancel"):
        return "cancel"
    if "/messages" in path:
        return "message"
    if "/folders" in path or "/conversations" in path:  # creating, uploading, attaching
        return "folders" if "/folders" in path else "conversations"
    return "list_agents" if path.rstrip("/") == "/v1/agents" else "get_agent"


class LettaClient:
    """Async client for one Letta server (self-hosted 0.6 → 0.16.x or Letta Cloud).

    Idempotent GETs (and cancel) are retried with exponential backoff on network errors,
    timeouts and 5xx. Message POSTs are never retried here: a failed POST may still have
    reached the agent, and only the caller's durable inbox knows whether to send it again
    (it does so with the same `otid`), so retrying here would double messages.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str = "",
        *,
        timeout: float = 120,
        page_size: int = 50,
        retries: int = 3,
        backoff: float = 0.5,
        session: aiohttp.ClientSession | None = None,
        user_agent: str = f"letta-appservice/{__version__}",
        project: str | None = None,
        on_request: RequestObserver | None = None,
    ) -> None:
        base = base_url.rstrip("/")
        self.base_url = base.removesuffix("/v1")  # tolerate a base URL given with /v1
        self.timeout = timeout
        self.page_size = page_size
        self.retries = retries
        self.backoff = backoff
        self._session = session
        self._own_session: aiohttp.ClientSession | None = None
        self.headers = {"User-Agent": user_agent, "Accept": "application/json"}
        self.headers.update(_MODERN_API_HEADER)
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        if project:
            self.headers["X-Project"] = project
        # Told about every request (operation, seconds, error kind or None): metrics.
        self.on_request = on_request
        # Set once the server refused inline streaming: later streams go to /messages/stream.
        self.legacy_streaming = False
        self._warned_pagination = False
        # Learnt before the first message: it decides the field carrying the message text.
        self._version: str | None = None

    # -- plumbing ---------------------------------------------------------------------------

    def http(self) -> aiohttp.ClientSession:
        if self._session is not None:
            return self._session
        if self._own_session is None or self._own_session.closed:
            # Created lazily so the client can be built outside a running event loop.
            self._own_session = aiohttp.ClientSession()
        return self._own_session

    def url(self, path: str) -> str:
        return self.base_url + path

    async def close(self) -> None:
        """Close the HTTP session if this client created it (a given one is left open)."""
        if self._own_session is not None:
            await self._own_session.close()
            self._own_session = None

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, str]] = (),
        body: Any = None,
        idempotent: bool,
        final: Container[int] = (),
    ) -> Any:
        """One request, retried when idempotent; an answer with a status in ``final`` is
        never retried (it is the answer, e.g. "nothing to cancel")."""
        attempts = 1 + (self.retries if idempotent else 0)
        for attempt in range(1, attempts + 1):
            try:
                return await self._call_once(method, path, params, body)
            except LettaError as exc:
                if attempt >= attempts or not exc.retryable or exc.status in final:
                    raise
                delay = self.backoff * 2 ** (attempt - 1)
                log.warning("%s; retry %d/%d in %.1fs", exc, attempt, self.retries, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _call_once(
        self, method: str, path: str, params: Sequence[tuple[str, str]], body: Any
    ) -> Any:
        started = time.monotonic()
        try:
            result = await self._request_json(method, path, params, body)
        except LettaError as exc:
            self.observe(path, started, exc.kind)
            raise
        self.observe(path, started, None)
        return result

    def stream_failed(self, kind: str) -> None:
        if self.on_request is not None:
            self.on_request("message", None, kind)

    def observe(self, path: str, started: float, error: str | None) -> None:
        if self.on_request is not None:
            self.on_request(_operation(path), time.monotonic() - started, error)

    async def _request_json(
        self, method: str, path: str, params: Sequence[tuple[str, str]], body: Any
    ) -> Any:
        url = safe_url(self.url(path))
        with transport_errors(f"Letta {method} {url}", url, self.timeout):
            async with self.http().request(
                method,
                self.url(path),
                params=list(params) or None,
                json=body,
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                if resp.status >= 400:
                    raise http_error(resp.status, method, url, await read_detail(resp))
                text = (await resp.read()).decode("utf-8", errors="replace")
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            message = f"Letta {method} {url} answered non-JSON: {text[:200]!r}"
            raise LettaError("protocol", message, url=url) from exc

    # -- API --------------------------------------------------------------------------------

    async def health(self, *, retry: bool = True) -> str:
        """The server's version string (`GET /v1/health/`, which needs no key)."""
        body = await self.call("GET", "/v1/health/", idempotent=retry)
        if not isinstance(body, Mapping) or not isinstance(body.get("version"), str):
            raise LettaError("protocol", f"unexpected health answer: {str(body)[:200]}")
        return body["version"]

    async def list_agents(
        self, *, tags: Sequence[str] = (), match_all_tags: bool = False, name: str | None = None
    ) -> list[Agent]:
        """Every agent matching the filters, in the server's order (newest first by default).

        Pages with `after=<last id>` until an empty page. Stops early, with a warning, when
        the server brings nothing new or repeats a cursor — 0.6.0 ignores `limit`/`after`
        and returns everything each time, which this handles with one extra request.
        """
        filters: list[tuple[str, str]] = [("tags", tag) for tag in tags]
        if tags and match_all_tags:
            filters.append(("match_all_tags", "true"))
        if name is not None:
            filters.append(("name", name))
        agents: dict[str, Agent] = {}
        cursors: set[str] = set()
        cursor: str | None = None
        while True:
            params = [*filters, ("limit", str(self.page_size))]
            if cursor is not None:
                params.append(("after", cursor))
            page = await self.call("GET", "/v1/agents/", params=params, idempotent=True)
            if not isinstance(page, list):
                raise LettaError("protocol", f"agent list is not an array: {str(page)[:200]}")
            if not page:
                break
            try:
                parsed = [Agent.from_json(raw) for raw in page]
            except ValueError as exc:
                raise LettaError("protocol", f"bad agent in list: {exc}") from exc
            new = [agent for agent in parsed if agent.id not in agents]
            agents.update((agent.id, agent) for agent in new)
            cursor = parsed[-1].id
            if not new or cursor in cursors:
                self._warn_pagination(len(agents))
                break
            cursors.add(cursor)
        return list(agents.values())

    def _warn_pagination(self, count: int) -> None:
        # Expected once per process on 0.6.0 servers; repeating it every sync would be noise.
        level = logging.DEBUG if self._warned_pagination else logging.WARNING
        self._warned_pagination = True
        log.log(
            level,
            "Letta at %s does not page agent lists (a page brought nothing new); "
            "stopping with %d agents",
            safe_url(self.base_url),
            count,
        )

    async def get_agent(self, agent_id: str) -> Agent:
        """One agent by id; LettaError kind "not_found" when it does not exist."""
        raw = await self.call("GET", f"/v1/agents/{quote(agent_id, safe='')}", idempotent=True)
        try:
            return Agent.from_json(raw)
        except ValueError as exc:
            raise LettaError("protocol", str(exc)) from exc

    async def server_version(self, *, retry: bool = False) -> str | None:
        """The server's version, asked once and remembered ("" when it has no usable health
        endpoint); None while it does not answer, and then asked again next time."""
        if self._version is None:
            try:
                self._version = await self.health(retry=retry)
            except LettaError as exc:
                if exc.retryable:
                    return None
                self._version = ""
            if message_text_field(self._version) == "text":
                log.info("Letta %s is older than 0.6.15: messages carry `text`", self._version)
        return self._version

    async def send(
        self,
        post: Callable[[dict[str, Any]], Awaitable[_T]],
        content: UserContent,
        name: str | None,
        otid: str | None,
    ) -> _T:
        """POST a user message. A 422 may mean the server changed under us (an upgrade across
        0.6.15 while we ran): its version is asked again, and if the text belongs in the other
        field the message is sent once more (a 422 means it was not taken)."""
        message = user_message(await self._message_field(), content, name, otid)
        try:
            return await post(message)
        except LettaError as exc:
            if exc.kind != "validation":
                raise
            self._version = None
            again = user_message(await self._message_field(), content, name, otid)
            if again.keys() == message.keys():
                raise
            log.info("Letta is now %s: sending messages as it expects", self._version)
            return await post(again)

    async def _message_field(self) -> str:
        # Sending the wrong field would lose the message (a 422 on old servers); not knowing
        # yet, the current field (the message's own retry asks for the version again).
        version = await self.server_version()
        return "content" if version is None else message_text_field(version)

    async def send_message(
        self,
        agent_id: str,
        content: UserContent,
        *,
        name: str | None = None,
        otid: str | None = None,
    ) -> LettaResponse:
        """Send one user message and wait for the whole turn. Not retried (see class doc)."""
        path = f"/v1/agents/{quote(agent_id, safe='')}/messages"

        async def post(message: dict[str, Any]) -> Any:
            return await self.call("POST", path, body={"messages": [message]}, idempotent=False)

        raw = await self.send(post, content, name, otid)
        try:
            return parse_response(raw)
        except ValueError as exc:
            raise LettaError("protocol", str(exc), url=safe_url(self.url(path))) from exc

    def stream_message(
        self,
        agent_id: str,
        content: UserContent,
        *,
        name: str | None = None,
        otid: str | None = None,
        stream_tokens: bool = False,
    ) -> LettaStream:
        """Send one user message and stream the turn's messages as they are produced.

        Use as `async with client.stream_message(...) as stream: async for msg in stream:`;
        `stream.stop_reason` is set once it is exhausted. Not retried (see class doc).
        """

        async def open_stream() -> aiohttp.ClientResponse:
            async def post(message: dict[str, Any]) -> aiohttp.ClientResponse:
                return await self.open_stream(agent_id, message, stream_tokens)

            return await self.send(post, content, name, otid)

        return LettaStream(open_stream, self.timeout, on_error=self.stream_failed)

    async def cancel(self, agent_id: str) -> None:
        """Cancel the agent's active runs; nothing to cancel is not an error."""
        path = f"/v1/agents/{quote(agent_id, safe='')}/messages/cancel"
        try:
            await self.call("POST", path, body={"run_ids": None}, idempotent=True, final={409})
        except LettaError as exc:
            # 0.16 answers 409 "No active runs to cancel" (older servers: 200 and an empty map).
            if exc.status != 409:
                raise

    async def open_stream(
        self, agent_id: str, message: dict[str, Any], stream_tokens: bool
    ) -> aiohttp.ClientResponse:
        """POST a streaming request, inline first, else (or once refused) the legacy route."""
        path = f"/v1/agents/{quote(agent_id, safe='')}/messages"
        body: dict[str, Any] = {
            "messages": [message],
            "stream_tokens": stream_tokens,
            "include_pings": True,
        }
        if not self.legacy_streaming:
            try:
                resp = await self.post_stream(path, {**body, "streaming": True})
            except LettaError as exc:
                if exc.kind != "validation":
                    raise
                log.info("%s; streaming through /messages/stream instead", exc)
            else:
                if resp.content_type == "application/json":
                    # Older than inline streaming (< 0.14): the flag was ignored; next time
                    # use the route that streams.
                    self.legacy_streaming = True
                return resp
        resp = await self.post_stream(path + "/stream", body)
        # Remembered only now, so a genuine validation error does not switch routes for good.
        self.legacy_streaming = True
        return resp

    async def post_stream(self, path: str, body: dict[str, Any]) -> aiohttp.ClientResponse:
        url = safe_url(self.url(path))
        # No total limit: a turn may run for minutes; pings keep each read within `timeout`.
        timeout = aiohttp.ClientTimeout(sock_connect=self.timeout, sock_read=self.timeout)
        headers = {**self.headers, "Accept": "text/event-stream"}
        started = time.monotonic()
        try:
            resp = await self._open(path, url, body, headers, timeout)
        except LettaError as exc:
            self.observe(path, started, exc.kind)
            raise
        self.observe(path, started, None)  # time until the stream started
        return resp

    async def _open(
        self,
        path: str,
        url: str,
        body: dict[str, Any],
        headers: dict[str, str],
        timeout: aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        with transport_errors(f"Letta POST {url}", url, self.timeout):
            resp = await self.http().post(
                self.url(path), json=body, headers=headers, timeout=timeout
            )
            if resp.status >= 400:
                try:
                    raise http_error(resp.status, "POST", url, await read_detail(resp))
                finally:
                    resp.release()
        return resp
