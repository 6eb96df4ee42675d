"""Letta's tool and agent-secret API: custom tools (upsert by name), attaching them to agents,
and the agent's tool secrets (environment variables of its tool sandbox)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from .client import LettaClient
from .errors import LettaError


class LettaTools:
    """The calls the bridge's Matrix tools need, through the client's request machinery
    (retries for idempotent calls, metrics, scrubbed errors)."""

    def __init__(self, client: LettaClient) -> None:
        self.client = client

    async def _call(self, method: str, path: str, body: Any = None, **params: str) -> Any:
        return await self.client.call(
            method, path, params=list(params.items()), body=body, idempotent=True
        )

    async def find(self, names: Sequence[str]) -> dict[str, Mapping[str, Any]]:
        """The server's tools with these names, by name (at most one each)."""
        found: dict[str, Mapping[str, Any]] = {}
        for name in names:
            page = await self._call("GET", "/v1/tools/", name=name, limit="5")
            for tool in page if isinstance(page, list) else []:
                if isinstance(tool, Mapping) and tool.get("name") == name:
                    found[name] = tool
        return found

    async def upsert(self, source_code: str, tags: Sequence[str]) -> Mapping[str, Any]:
        """Create the tool, or replace the one with the same name (its id stays)."""
        body = {"source_code": source_code, "source_type": "python", "tags": list(tags)}
        tool = await self._call("PUT", "/v1/tools/", body)
        if not isinstance(tool, Mapping) or not isinstance(tool.get("id"), str):
            raise LettaError("protocol", f"unexpected tool answer: {str(tool)[:200]}")
        return tool

    async def attach(self, agent_id: str, tool_id: str) -> None:
        await self._call("PATCH", f"{_agent(agent_id)}/tools/attach/{quote(tool_id, safe='')}")

    async def detach(self, agent_id: str, tool_id: str) -> None:
        try:
            await self._call("PATCH", f"{_agent(agent_id)}/tools/detach/{quote(tool_id, safe='')}")
        except LettaError as e:
            if e.kind != "not_found":  # the tool (or agent) is gone already: detached
                raise

    async def secrets(self, agent_id: str) -> dict[str, str]:
        """The agent's tool secrets (named `secrets` since 0.12, before that
        `tool_exec_environment_variables`)."""
        agent = await self._call("GET", _agent(agent_id), include="agent.secrets")
        out: dict[str, str] = {}
        if not isinstance(agent, Mapping):
            return out
        for field in ("tool_exec_environment_variables", "secrets"):
            for item in agent.get(field) or []:
                if isinstance(item, Mapping) and isinstance(item.get("key"), str):
                    out[item["key"]] = str(item.get("value") or "")
        return out

    async def set_secrets(self, agent_id: str, changes: Mapping[str, str | None]) -> None:
        """Set (or, with None, remove) some of the agent's secrets, keeping the others: Letta
        replaces the whole set on every update."""
        current = await self.secrets(agent_id)
        wanted = {k: v for k, v in {**current, **changes}.items() if v is not None}
        if wanted == current:
            return
        # Both names: old servers know the second only; 0.16 takes the first and ignores it.
        body = {"secrets": wanted, "tool_exec_environment_variables": wanted}
        await self._call("PATCH", _agent(agent_id), body)


def _agent(agent_id: str) -> str:
    return f"/v1/agents/{quote(agent_id, safe='')}"
