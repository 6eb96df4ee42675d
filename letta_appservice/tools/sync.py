"""Keeping Letta's side of the Matrix tools right: the tools registered (updated when their code
changes), attached to the agents that should have them with a secret of their own, detached
(secret removed) from the others.

Runs after each reconcile pass with the agents it listed. What is set up is remembered per
agent (``agent_tool.synced``: the version set up), so a pass where nothing changed reads one
table and the tools' ids in Letta, and writes nothing to Letta. Tools deleted in Letta are
registered and attached again on the next pass.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections.abc import Iterable

from ..config import ToolsConfig
from ..db.agent_tool import AgentToolRow, AgentToolStore
from ..letta import Agent, LettaError
from ..letta.errors import safe_url
from ..letta.tools import LettaTools
from .source import NAMES, SECRET_ENV, SOURCES, TAG, URL_ENV, VERSION

log = logging.getLogger("letta_appservice.tools")
# Kinds of answer meaning "this server has no such API" (404, 405, a 422 for the body).
NO_API = ("not_found", "client", "validation")
CONCURRENCY = 8  # agents set up at once (each takes about seven Letta requests)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


class ToolSync:
    def __init__(
        self, *, config: ToolsConfig, address: str, letta: LettaTools, store: AgentToolStore
    ) -> None:
        self.config = config
        self.url = config.url or address  # what the sandbox calls
        self.letta = letta
        self.store = store
        # The version set up per agent: the tools' code and the URL they call.
        self.version = hashlib.sha256(f"{VERSION} {self.url}".encode()).hexdigest()[:12]
        self.available: bool | None = None  # None: not registered yet; False: no API
        self.tool_ids: dict[str, str] = {}
        self._lock = asyncio.Lock()

    # --- who gets the tools --------------------------------------------------------------------

    def wanted(self, agent: Agent, row: AgentToolRow | None) -> bool:
        if row is not None and row.enabled is not None:
            return row.enabled
        mode = self.config.agents
        if mode.startswith("tag:"):
            return mode[4:] in agent.tags
        return mode == "all"

    # --- a pass --------------------------------------------------------------------------------

    async def on_pass(self, agents: Iterable[Agent]) -> None:
        """Set up or take down the tools of the agents whose state differs from what they
        should have. Failures are logged and left for the next pass."""
        async with self._lock:
            if await self._tools_gone():
                # Deleted in Letta (or replaced under another id): nothing is set up any more.
                # Recorded, so that every agent that should have them gets them again even
                # when this pass cannot register them or set some agent up.
                self.available = None
                await self.store.forget_synced()
            rows = await self.store.all()
            todo = [(a, rows.get(a.id)) for a in agents if self._differs(a, rows.get(a.id))]
            if not todo or not await self._register():
                return
            gate = asyncio.Semaphore(CONCURRENCY)

            async def one(agent: Agent, row: AgentToolRow | None) -> None:
                async with gate:
                    try:
                        await self._settle(agent, row)
                    except LettaError as e:
                        log.warning("Matrix tools of agent %s not set up yet: %s", agent.id, e)

            await asyncio.gather(*(one(agent, row) for agent, row in todo))

    def _differs(self, agent: Agent, row: AgentToolRow | None) -> bool:
        synced = row.synced if row is not None else None
        return synced != self.version if self.wanted(agent, row) else synced is not None

    async def _settle(self, agent: Agent, row: AgentToolRow | None) -> None:
        if not self._differs(agent, row):
            return
        if self.wanted(agent, row):
            await self._set_up(agent.id, row or AgentToolRow(agent.id))
        else:
            assert row is not None
            await self._take_down(agent.id, row)

    async def _tools_gone(self) -> bool:
        """Whether a tool registered by this process is no longer in Letta under its id (one
        read per tool and pass; a failed read counts as nothing gone)."""
        if not self.available:
            return False
        try:
            existing = await self.letta.find(NAMES)
        except LettaError as e:
            log.warning("Could not check the Matrix tools in Letta: %s", e)
            return False
        gone = [n for n in NAMES if existing.get(n, {}).get("id") != self.tool_ids.get(n)]
        if gone:
            log.warning("Matrix tools gone from Letta, registering them again: %s", gone)
        return bool(gone)

    async def _register(self) -> bool:
        """Register (or update) the tools once per process; False while that is impossible."""
        if self.available is not None:
            return self.available
        try:
            existing = await self.letta.find(NAMES)
            for name in NAMES:
                tool = existing.get(name)
                if tool is None or tool.get("source_code") != SOURCES[name]:
                    tool = await self.letta.upsert(SOURCES[name], [TAG])
                    log.info("Registered the tool %s in Letta (version %s)", name, VERSION)
                self.tool_ids[name] = str(tool["id"])
        except LettaError as e:
            if e.kind not in NO_API:
                log.warning("Cannot register the Matrix tools in Letta yet: %s", e)
                return False
            log.warning(
                "Letta at %s has no custom-tool API (%s): agents get no Matrix tools",
                safe_url(self.letta.client.base_url),
                e,
            )
            self.available = False
            return False
        self.available = True
        return True

    async def _set_up(self, agent_id: str, row: AgentToolRow) -> None:
        changes: dict[str, str | None] = {URL_ENV: self.url}
        if row.secret_hash is None:
            secret = secrets.token_urlsafe(32)
            changes[SECRET_ENV] = secret
            row.secret_hash = secret_hash(secret)
        await self.letta.set_secrets(agent_id, changes)
        for tool_id in self.tool_ids.values():
            await self.letta.attach(agent_id, tool_id)
        row.synced = self.version
        await self.store.upsert(row)
        log.info("Matrix tools set up for agent %s", agent_id)

    async def _take_down(self, agent_id: str, row: AgentToolRow) -> None:
        for tool_id in self.tool_ids.values():
            await self.letta.detach(agent_id, tool_id)
        await self.letta.set_secrets(agent_id, {URL_ENV: None, SECRET_ENV: None})
        row.synced, row.secret_hash = None, None
        await self.store.upsert(row)
        log.info("Matrix tools removed from agent %s", agent_id)

    # --- admin commands ------------------------------------------------------------------------

    async def switch(self, agent: Agent, enabled: bool | None) -> bool:
        """An admin's switch (None: back to the config); whether the agent now has the tools.
        Applied in Letta at once."""
        async with self._lock:
            row = await self.store.get(agent.id) or AgentToolRow(agent.id)
            row.enabled = enabled
            await self.store.upsert(row)
            if await self._register():
                await self._settle(agent, row)
            return self.wanted(agent, row)

    async def rotate(self, agent_id: str) -> bool:
        """A new secret for an agent that has the tools (the old one stops working at once);
        False when it has none."""
        async with self._lock:
            row = await self.store.get(agent_id)
            if row is None or row.synced is None:
                return False
            secret = secrets.token_urlsafe(32)
            await self.letta.set_secrets(agent_id, {SECRET_ENV: secret})
            row.secret_hash = secret_hash(secret)
            await self.store.upsert(row)
            log.info("Tool secret of agent %s rotated", agent_id)
            return True

    # --- the tool API's check ------------------------------------------------------------------

    async def check(self, agent_id: str, secret: str) -> bool:
        """Whether ``secret`` is the agent's tool secret (constant time in the secret)."""
        row = await self.store.get(agent_id) if agent_id else None
        stored = row.secret_hash if row is not None and row.synced is not None else None
        # Compared even without a row, so a wrong id costs the same as a wrong secret.
        given = secret_hash(secret)
        match = hmac.compare_digest(given, stored or secret_hash("\0no secret"))
        return match and stored is not None and bool(secret)
