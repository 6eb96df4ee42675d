"""The Letta calls of a turn (send, stream, cancel) for an agent's own history or one of its
conversations (Letta 0.16.2+: one agent, many isolated conversations), and creating them."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import aiohttp

from .client import LettaClient
from .errors import LettaError, safe_url
from .models import LettaResponse, parse_response
from .stream import LettaStream
from .versions import UserContent, release

log = logging.getLogger("letta_appservice.letta")
CONVERSATIONS_SINCE = (0, 16, 2)


def _path(conversation_id: str, tail: str) -> str:
    return f"/v1/conversations/{quote(conversation_id, safe='')}/{tail}"


class TurnCalls:
    """Every Letta call of a turn goes through here. ``conversation_id`` None is the agent's
    own history (servers without conversations, or conversations switched off)."""

    def __init__(self, client: LettaClient) -> None:
        self.client = client
        self._supported: bool | None = None

    async def supported(self) -> bool:
        """Whether the server has the Conversations API: older than 0.16.2 by its version, else
        asked once (a 404 means no); raises LettaError while the server cannot answer."""
        if self._supported is None:
            version = await self.client.server_version()
            known = release(version or "")
            if known is not None and known < CONVERSATIONS_SINCE:
                self._supported = False
            else:
                try:
                    await self.client.call(
                        "GET", "/v1/conversations/", params=[("limit", "1")], idempotent=True
                    )
                    self._supported = True
                except LettaError as exc:
                    if exc.kind != "not_found" and exc.status != 405:
                        raise
                    self._supported = False
            if not self._supported:
                log.info(
                    "Letta at %s has no Conversations API (0.16.2+): each agent keeps one "
                    "history across all its rooms",
                    safe_url(self.client.base_url),
                )
        return self._supported

    async def create(self, agent_id: str) -> str:
        """A new, empty conversation of the agent; its id. Not retried: a retry could leave
        an unused conversation behind, which is harmless, but a failed POST may have made one
        anyway, so the caller's retry is as good."""
        raw = await self.client.call(
            "POST",
            "/v1/conversations/",
            params=[("agent_id", agent_id)],
            body={},
            idempotent=False,
        )
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
            raise LettaError("protocol", f"unexpected conversation: {str(raw)[:200]}")
        return raw["id"]

    async def send(
        self,
        agent_id: str,
        conversation_id: str | None,
        content: UserContent,
        *,
        name: str | None = None,
        otid: str | None = None,
    ) -> LettaResponse:
        """One user message, waiting for the whole turn (never retried: see LettaClient)."""
        if conversation_id is None:
            return await self.client.send_message(agent_id, content, name=name, otid=otid)
        path = _path(conversation_id, "messages")

        async def post(message: dict[str, Any]) -> Any:
            body = {"messages": [message], "streaming": False}
            return await self.client.call("POST", path, body=body, idempotent=False)

        raw = await self.client.send(post, content, name, otid)
        try:
            return parse_response(raw)
        except ValueError as exc:
            url = safe_url(self.client.base_url + path)
            raise LettaError("protocol", str(exc), url=url) from exc

    def stream(
        self,
        agent_id: str,
        conversation_id: str | None,
        content: UserContent,
        *,
        name: str | None = None,
        otid: str | None = None,
        stream_tokens: bool = False,
    ) -> LettaStream:
        """One user message, its turn streamed (see LettaClient.stream_message)."""
        client = self.client
        if conversation_id is None:
            return client.stream_message(
                agent_id, content, name=name, otid=otid, stream_tokens=stream_tokens
            )
        path = _path(conversation_id, "messages")

        async def open_stream() -> aiohttp.ClientResponse:
            async def post(message: dict[str, Any]) -> aiohttp.ClientResponse:
                body = {"messages": [message], "streaming": True, "stream_tokens": stream_tokens}
                return await client.post_stream(path, {**body, "include_pings": True})

            return await client.send(post, content, name, otid)

        return LettaStream(open_stream, client.timeout, on_error=client.stream_failed)

    async def cancel(self, agent_id: str, conversation_id: str | None) -> None:
        """Cancel the running turn; nothing to cancel is not an error."""
        if conversation_id is not None:
            try:
                await self.client.call(
                    "POST", _path(conversation_id, "cancel"), idempotent=True, final={409}
                )
                return
            except LettaError as exc:
                if exc.status != 409:
                    raise
            # 409 "No active runs": 0.16.8 records no conversation on a run it does not
            # stream; the agent's cancel finds it (the bridge runs one turn per agent).
        await self.client.cancel(agent_id)
