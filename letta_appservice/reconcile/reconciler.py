"""The reconciler: Letta's agents (desired) vs the agent table (stored) -> plan -> apply.

A pass lists the agents, plans against the last-applied values stored per agent, and applies
agent by agent (saving each row after its Matrix calls), so a pass with no changes makes no
homeserver request and a pass cut short leaves every agent either done or untouched.
Drift is learned from pushed events (``observe``) and, at start-up and on demand, from a full
check of two batched requests (the bot's joined rooms and the space's state).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import attrs
from mautrix.appservice import AppServiceAPI
from mautrix.errors import MatrixConnectionError, MatrixError
from mautrix.types import EventType, Membership

from ..config import Config
from ..db.agent import ACTIVE, AgentStore
from ..errors import describe
from ..identity import Identity
from ..letta import Agent, LettaClient, LettaError
from ..matrix import rooms
from .apply import Applier
from .drift import DriftCheck
from .plan import (
    BOT,
    INVITE_PREFIX,
    PUPPET,
    REPARENT,
    SPACE_CHILD,
    AgentChange,
    ReconcileSettings,
    desired_agents,
    plan,
)
from .space import Space

log = logging.getLogger("letta_appservice.reconciler")
# Failures a pass expects (network, homeserver or Letta refusing): one log line, no traceback.
EXPECTED = (LettaError, MatrixError, aiohttp.ClientError, TimeoutError)


@attrs.define
class PassSummary:
    """The outcome of one pass, as the status command shows it."""

    started_at: float  # epoch seconds
    duration: float = 0.0
    result: str = "ok"  # ok | error
    error: str | None = None
    changes: dict[str, int] = attrs.field(factory=dict)  # kind -> agents done
    failed: int = 0  # agents left for the next pass
    agents: int = 0  # agents bridged (listed and kept by the filters)
    matrix_requests: int = 0
    full: bool = False

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


class Reconciler:
    """One pass at a time is the scheduler's job; this class does the passes."""

    def __init__(
        self,
        config: Config,
        *,
        settings: ReconcileSettings,
        identity: Identity,
        bot_api: AppServiceAPI,
        letta: LettaClient,
        agents: AgentStore,
        space: Space,
        drift: DriftCheck,
        applier: Applier,
        request_count: Callable[[], int],
        concurrency: int = 8,
        on_agents: Callable[[list[Agent]], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.identity = identity
        self.letta = letta
        self.tags = config.letta.filter_tags
        self.name_pattern = config.letta.filter_name
        self.agents = agents
        self.bot_api = bot_api
        self.space = space
        self.drift = drift
        self.applier = applier
        self._request_count = request_count
        self._concurrency = concurrency
        # Told the bridged agents after each pass that listed them (the Matrix tools).
        self.on_agents = on_agents
        # Repairs learned from pushed events, done by the next pass: agent id -> reasons.
        self._dirty: dict[str, set[str]] = {}
        self._space_dirty: set[str] = set()

    def use_room_version(self, room_version: str) -> None:
        """The homeserver's default room version decides how new rooms list their creator's
        power; told once at start-up (before the first pass)."""
        settings = attrs.evolve(
            self.settings, list_creator=not rooms.creators_have_power(room_version)
        )
        self.settings = self.space.s = self.drift.s = self.applier.s = settings

    # --- drift from pushed events --------------------------------------------------------------

    async def observe(self, evt: Any) -> bool:
        """Note drift in one pushed event (after the state store has seen it). True when a
        repair is now pending, so the caller can ask for a pass soon. Makes no requests."""
        s, space_id = self.settings, self.space.id
        if evt.type == EventType.ROOM_MEMBER:
            if evt.content.membership not in (Membership.LEAVE, Membership.BAN):
                return False
            target = evt.state_key
            admin_left = target in s.admins and _was_joined(evt)
            if space_id is not None and evt.room_id == space_id:
                reason = (
                    BOT if target == s.bot_mxid else INVITE_PREFIX + target if admin_left else None
                )
                if reason:
                    self._space_dirty.add(reason)
                return reason is not None
            if target != s.bot_mxid and not admin_left and not self.identity.is_puppet(target):
                return False
            row = await self.agents.get_by_room(evt.room_id)
            if row is None or row.state != ACTIVE:
                return False
            if target == s.bot_mxid:
                reason = BOT
            elif target == row.mxid:
                reason = PUPPET
            elif admin_left:
                reason = INVITE_PREFIX + target
            else:
                return False
            return self._mark(row.agent_id, reason)
        if evt.type == EventType.SPACE_CHILD and space_id is not None:
            if (
                evt.room_id != space_id
                or evt.sender == s.bot_mxid
                or getattr(evt.content, "via", None)
            ):
                return False
            row = await self.agents.get_by_room(evt.state_key)
            if row is None or row.state != ACTIVE or not row.in_space:
                return False
            return self._mark(row.agent_id, SPACE_CHILD)
        return False

    def _mark(self, agent_id: str, reason: str, quiet: bool = False) -> bool:
        self._dirty.setdefault(agent_id, set()).add(reason)
        log.log(logging.DEBUG if quiet else logging.INFO, "Drift: agent %s: %s", agent_id, reason)
        return True

    @property
    def pending_repairs(self) -> int:
        return len(self._dirty) + bool(self._space_dirty)

    # --- a pass --------------------------------------------------------------------------------

    async def run_pass(self, full: bool = False) -> PassSummary:
        """List, plan, apply. Never raises for expected failures: they end up in the summary
        (and one ERROR log line); the next pass picks up what is left."""
        summary = PassSummary(started_at=time.time(), full=full)
        began, requests = time.monotonic(), self._request_count()
        try:
            await self._run(summary, full)
        except EXPECTED as e:
            summary.result, summary.error = "error", describe(e)
        summary.duration = round(time.monotonic() - began, 3)
        summary.matrix_requests = self._request_count() - requests
        self._log(summary)
        return summary

    async def _run(self, summary: PassSummary, full: bool) -> None:
        try:
            listed = await self.letta.list_agents(tags=self.tags, match_all_tags=bool(self.tags))
        except LettaError as e:
            # Nothing is planned from a failed listing: a missing agent would look deleted.
            raise LettaError(e.kind, f"cannot list agents from Letta: {e}") from e
        desired = desired_agents(listed, self.settings.templates, self.name_pattern)
        summary.agents = len(desired)
        rows = await self.agents.all()
        space_id = await self.space.load()
        joined: set[str] | None = None
        space_marks = set(self._space_dirty)
        if full and space_id is not None:
            joined = await rooms.joined_rooms(self.bot_api)
            space_marks |= await self.drift.space(space_id, joined)
        space_id, new_space = await self.space.ensure(sorted(space_marks))
        self._space_dirty -= space_marks
        active = [r for r in rows if r.state == ACTIVE and r.room_id]
        found = 0
        if new_space:
            for row in active:
                found += self._mark(row.agent_id, REPARENT, quiet=True)
        elif joined is not None:
            children = rooms.children_of(await rooms.room_state(self.bot_api, space_id))
            for row in active:
                marks = await self.drift.room(row, joined, children)
                for reason in marks:
                    self._mark(row.agent_id, reason, quiet=True)
                found += bool(marks)
        if found:
            log.info("Full check: %d of %d agent rooms need repair", found, len(active))
        dirty = {k: frozenset(v) for k, v in self._dirty.items()}
        changes = plan(desired, rows, dirty, self.settings.templates)
        # Marks of agents that are not active (or gone) have nothing left to repair.
        for agent_id in set(self._dirty) - {c.agent_id for c in changes}:
            self._dirty.pop(agent_id, None)
        try:
            await self._apply_all(changes, dirty, space_id, summary)
        finally:
            if self.on_agents is not None:
                await self.on_agents([a for a in listed if a.id in desired])

    async def _apply_all(
        self,
        changes: list[AgentChange],
        dirty: dict[str, frozenset[str]],
        space_id: str,
        summary: PassSummary,
    ) -> None:
        gate = asyncio.Semaphore(self._concurrency)
        errors: list[BaseException] = []

        async def one(change: AgentChange) -> None:
            async with gate:
                if errors and _unreachable(errors[0]):
                    return  # the homeserver is down: leave the rest for the next pass
                try:
                    await self.applier.apply(change, space_id)
                except EXPECTED as e:
                    errors.append(e)
                    log.debug("Agent %s not reconciled: %s", change.agent_id, describe(e))
                    return
                done = self._dirty.get(change.agent_id)
                if done is not None:
                    done -= dirty.get(change.agent_id, frozenset())
                    if not done:
                        del self._dirty[change.agent_id]
                kind = change.kind
                summary.changes[kind] = summary.changes.get(kind, 0) + 1

        await asyncio.gather(*(one(c) for c in changes))
        if errors:
            summary.failed = len(changes) - sum(summary.changes.values())
            raise errors[0]

    def _log(self, summary: PassSummary) -> None:
        took = f"{summary.duration:.1f} s, {summary.matrix_requests} homeserver requests"
        if summary.result == "error":
            done = ", ".join(f"{n} {k}" for k, n in summary.changes.items()) or "nothing"
            left = f"; {summary.failed} agent(s) left for the next pass" if summary.failed else ""
            log.error(
                "Reconcile pass failed: %s (done: %s%s; %s)", summary.error, done, left, took
            )
        elif summary.changes:
            done = ", ".join(f"{n} {k}" for k, n in sorted(summary.changes.items()))
            log.info("Reconcile pass: %s of %d agents (%s)", done, summary.agents, took)
        else:
            log.debug("Reconcile pass: no changes for %d agents (%s)", summary.agents, took)


def _unreachable(e: BaseException) -> bool:
    return isinstance(e, MatrixConnectionError | aiohttp.ClientError | TimeoutError)


def _was_joined(evt: Any) -> bool:
    """Whether the member was joined before this leave (so a declined invite is not answered
    with another invite). Synapse sends prev_content; the state store notes what it knew."""
    prev = getattr(evt.prev_content, "membership", None)
    if prev is None:
        known = evt.unsigned.get("mautrix_prev_membership") if evt.unsigned else None
        prev = getattr(known, "membership", None)
    return prev == Membership.JOIN
