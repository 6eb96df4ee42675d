"""`letta-appservice import-legacy`: adopt the older Letta-Matrix bot's rooms, puppets and space
instead of creating new ones. Idempotent: a second run changes nothing."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path as FsPath
from typing import Any

import attrs
from mautrix.api import Method, Path
from mautrix.appservice import AppServiceAPI
from mautrix.errors import MatrixRequestError

from ..db.agent import AgentRow, AgentStore
from ..db.bridge_state import BridgeState
from ..db.room import AGENT, RoomRow, RoomStore
from ..matrix import rooms
from ..matrix.puppets import Puppets
from ..reconcile.space import SPACE_KEY, SPACE_NAME_KEY
from .checks import ImportAborted, check_homeserver, import_database, refuse_if_running
from .files import LegacyAgent, LegacySpace

log = logging.getLogger("letta_appservice.import")
BOT_POWER = 100


@attrs.define
class ImportReport:
    adopted: list[str] = attrs.Factory(list)
    unchanged: list[str] = attrs.Factory(list)
    to_provision: list[str] = attrs.Factory(list)  # no room or an unreachable one
    skipped: list[str] = attrs.Factory(list)  # already bridged to another room
    problems: list[str] = attrs.Factory(list)
    space: str = "not given"

    def lines(self) -> list[str]:
        out = [
            f"adopted: {len(self.adopted)}, unchanged: {len(self.unchanged)}, "
            f"to be provisioned: {len(self.to_provision)}, skipped: {len(self.skipped)}",
            f"space: {self.space}",
        ]
        return out + [f"  - {p}" for p in self.problems]


class LegacyImporter:
    def __init__(
        self,
        *,
        bot_api: AppServiceAPI,
        bot_mxid: str,
        puppets: Puppets,
        agents: AgentStore,
        rooms_store: RoomStore,
        state: BridgeState,
    ) -> None:
        self.bot_api = bot_api
        self.bot_mxid = bot_mxid
        self.puppets = puppets
        self.agents = agents
        self.rooms = rooms_store
        self.state = state

    async def run(
        self, legacy: Sequence[LegacyAgent], space: LegacySpace | None, dry_run: bool = False
    ) -> ImportReport:
        report = ImportReport()
        for agent in legacy:
            await self._agent(agent, report, dry_run)
        if space is not None:
            await self._space(space, legacy, report, dry_run)
        return report

    async def _agent(self, agent: LegacyAgent, report: ImportReport, dry_run: bool) -> None:
        label = f"{agent.name} ({agent.agent_id})"
        existing = await self.agents.get(agent.agent_id)
        if existing is not None and existing.room_id == agent.room_id:
            report.unchanged.append(label)
            return
        if existing is not None and existing.room_id is not None:
            report.skipped.append(label)
            report.problems.append(f"{label}: already bridged to {existing.room_id}; left as is")
            return
        if dry_run:
            await self._check_room(agent, label, report)
            return
        room_id = agent.room_id
        if room_id is not None:
            try:
                await self._take_over(agent.mxid, room_id)
            except MatrixRequestError as e:
                report.problems.append(
                    f"{label}: room {room_id} could not be joined ({e.errcode}: {e.message}); "
                    "a new room will be provisioned"
                )
                room_id = None
        row = existing or AgentRow(agent_id=agent.agent_id, mxid=agent.mxid, name=agent.name)
        # Displayname, room name and space membership stay unset, so the next reconcile
        # applies this bridge's templates and adds the room to the space.
        row.room_id = room_id
        await self.agents.upsert(row)
        if room_id is None:
            report.to_provision.append(label)
            return
        await self.rooms.upsert(RoomRow(room_id=room_id, kind=AGENT, agent_id=agent.agent_id))
        report.adopted.append(label)
        log.info("Adopted %s for %s", room_id, label)

    async def _check_room(self, agent: LegacyAgent, label: str, report: ImportReport) -> None:
        """Dry run: would the old puppet still get the bot into its room?"""
        if agent.room_id is None:
            report.to_provision.append(label)
            return
        try:
            await self.puppets.api(agent.mxid).request(
                Method.GET, Path.v3.rooms[agent.room_id].joined_members
            )
        except MatrixRequestError as e:
            report.to_provision.append(label)
            report.problems.append(
                f"{label}: the old puppet is not in {agent.room_id} ({e.errcode}); the import "
                "will try to join it, else a new room will be provisioned"
            )
            return
        report.adopted.append(label)

    async def _take_over(self, mxid: str, room_id: str) -> None:
        """Act as the old puppet (now in our namespace), bring the bot in with admin power."""
        await self.puppets.ensure_registered(mxid)
        puppet = self.puppets.api(mxid)
        await rooms.join(puppet, room_id)  # a no-op when it is still a member
        await self._bring_in_bot(room_id, [mxid])

    async def _bring_in_bot(self, room_id: str, helpers: Sequence[str]) -> None:
        try:
            await rooms.join(self.bot_api, room_id)
        except MatrixRequestError:
            # Invite-only: a member we may act as invites the bot.
            for mxid in helpers:
                try:
                    await rooms.invite(self.puppets.api(mxid), room_id, self.bot_mxid)
                    break
                except MatrixRequestError:
                    continue
            await rooms.join(self.bot_api, room_id)
        await self._grant_power(room_id, helpers)

    async def _grant_power(self, room_id: str, helpers: Sequence[str]) -> None:
        levels = await self._get_state(room_id, "m.room.power_levels")
        users: dict[str, Any] = dict(levels.get("users") or {})
        if users.get(self.bot_mxid, levels.get("users_default", 0)) >= BOT_POWER:
            return
        users[self.bot_mxid] = BOT_POWER
        for mxid in helpers:
            try:
                await rooms.put_state(
                    self.puppets.api(mxid),
                    room_id,
                    "m.room.power_levels",
                    {**levels, "users": users},
                )
                return
            except MatrixRequestError:
                continue
        log.warning("The bot could not get admin power in %s; renames there may fail", room_id)

    async def _get_state(self, room_id: str, event_type: str) -> dict[str, Any]:
        try:
            return await self.bot_api.request(Method.GET, Path.v3.rooms[room_id].state[event_type])
        except MatrixRequestError:
            return {}

    async def _space(
        self,
        space: LegacySpace,
        legacy: Sequence[LegacyAgent],
        report: ImportReport,
        dry_run: bool,
    ) -> None:
        current = await self.state.get(SPACE_KEY)
        if current == space.space_id:
            report.space = f"{space.space_id} (already in use)"
            return
        if current is not None:
            report.space = f"kept {current}; the legacy space {space.space_id} was not adopted"
            return
        if dry_run:
            report.space = f"{space.space_id} would be adopted"
            return
        try:
            await self._bring_in_bot(space.space_id, [a.mxid for a in legacy])
        except MatrixRequestError as e:
            report.space = (
                f"{space.space_id} could not be joined ({e.errcode}); a new one will be made"
            )
            return
        await self.state.set(SPACE_KEY, space.space_id)
        # The stored name differs from bridge.space_name if the operator renamed it: the next
        # reconcile then applies the configured name.
        await self.state.set(SPACE_NAME_KEY, space.name or "")
        report.space = f"{space.space_id} adopted"


async def run_import(
    config: Any, mappings: str, space_file: str | None, dry_run: bool
) -> ImportReport:
    """Parse both files completely (nothing is imported if either is malformed), check that the
    appservice is stopped and the homeserver accepts our token, then adopt what the files
    describe, acting as the bot and the old puppets through the appservice. A dry run writes
    nothing: without a database yet it reads from an empty temporary one."""
    import aiohttp
    from mautrix.appservice.state_store.asyncpg import PgASStateStore

    from ..db.database import DatabaseURL
    from ..identity import Identity
    from .files import parse_mappings, parse_space

    identity = Identity.from_config(config)
    legacy = parse_mappings(FsPath(mappings), config.homeserver.domain, identity.is_puppet)
    space = parse_space(FsPath(space_file)) if space_file else None
    async with aiohttp.ClientSession(middlewares=(rooms.RateLimitMiddleware(),)) as http:
        await refuse_if_running(http, config)
        async with import_database(DatabaseURL.parse(config.appservice.database), dry_run) as db:
            state_store = PgASStateStore(db)
            if not dry_run:
                await PgASStateStore.upgrade_table.upgrade(db)
            api = rooms.appservice_api(config, state_store, http, retries=0)
            await check_homeserver(api, config.homeserver.address)
            if not dry_run:
                await api.bot_intent().ensure_registered()
            importer = LegacyImporter(
                bot_api=api,
                bot_mxid=config.bot_mxid,
                puppets=Puppets(api, state_store),
                agents=AgentStore(db),
                rooms_store=RoomStore(db),
                state=BridgeState(db),
            )
            return await importer.run(legacy, space, dry_run)


__all__ = ["ImportAborted", "ImportReport", "LegacyImporter", "run_import"]
