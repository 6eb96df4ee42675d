"""Applying one agent's planned change on the homeserver, its row saved after its calls."""

from __future__ import annotations

import logging

from mautrix.appservice import AppServiceAPI
from mautrix.appservice.state_store import ASStateStore
from mautrix.errors import MatrixRequestError
from mautrix.types import Membership, RoomID, UserID

from ..db.agent import ACTIVE, DELETED, AgentRow, AgentStore
from ..db.room import AGENT, ARCHIVED, RoomRow, RoomStore
from ..matrix import rooms
from ..matrix.ids import agent_localpart
from ..matrix.puppets import Puppets
from .plan import (
    ARCHIVE,
    BOT,
    CREATE,
    INVITE_PREFIX,
    POWER,
    PUPPET,
    REPARENT,
    RESTORE,
    AgentChange,
    Desired,
    ReconcileSettings,
)
from .space import adopt_alias, gone, invite_quietly

log = logging.getLogger("letta_appservice.reconciler")


class Applier:
    """Performs planned changes: one agent at a time, its row saved after its Matrix calls."""

    def __init__(
        self,
        *,
        settings: ReconcileSettings,
        bot_api: AppServiceAPI,
        puppets: Puppets,
        agents: AgentStore,
        rooms: RoomStore,
        state_store: ASStateStore,
    ) -> None:
        self.s = settings
        self.bot_api = bot_api
        self.puppets = puppets
        self.agents = agents
        self.rooms = rooms
        self.state_store = state_store

    # --- one agent -----------------------------------------------------------------------------

    async def apply(self, change: AgentChange, space_id: str) -> AgentRow:
        d = change.desired
        row = change.row or AgentRow(
            change.agent_id, self.s.mxid(change.agent_id), d.name if d else "", None
        )
        async with self.puppets.lock(row.mxid):
            if change.kind == ARCHIVE:
                await self._archive(change, row, space_id)
            elif change.kind == CREATE:
                assert d is not None
                await self._create(change, d, row, space_id)
            else:
                assert d is not None
                await self._update(change, d, row, space_id)
            await self.agents.upsert(row)
        return row

    async def _create(self, ch: AgentChange, d: Desired, row: AgentRow, space_id: str) -> None:
        await self.puppets.ensure_registered(row.mxid)
        if ch.displayname is not None:
            await self.puppets.set_displayname(row.mxid, ch.displayname)
            row.displayname = ch.displayname
        room_id, adopted = await self._new_room(d, row.mxid, space_id)
        row.room_id, row.state, row.in_space = room_id, ACTIVE, False
        # Adopted rooms may carry an older name/topic: unknown (None) until set below.
        row.room_name, row.topic = (None, None) if adopted else (d.room_name, d.topic)
        row.name, row.description = d.name, d.description
        await self._save_mapping(row)
        if adopted:
            await self._set_names(row, d.room_name, d.topic)
        await self._put_child(space_id, room_id, True)
        row.in_space = True

    async def _new_room(self, d: Desired, mxid: str, space_id: str) -> tuple[RoomID, bool]:
        """Create the agent's room, or find the one a crashed pass created under its alias."""
        body = rooms.agent_room_body(
            alias_localpart=agent_localpart(self.s.username_template, d.agent_id),
            name=d.room_name,
            topic=d.topic,
            bot=self.s.bot_mxid,
            puppet=mxid,
            admins=self.s.admins,
            space_id=space_id,
            domain=self.s.domain,
            list_creator=self.s.list_creator,
        )
        try:
            room_id = await rooms.create_room(self.bot_api, body)
        except rooms.RoomInUse:
            room_id = await adopt_alias(self.bot_api, self.s.alias(d.agent_id))
            log.info("Adopted %s for agent %s (created before a restart)", room_id, d.agent_id)
            await self._join_puppet(room_id, mxid)
            return room_id, True
        await rooms.join(self.puppets.api(mxid), room_id)
        await self.state_store.joined(room_id, UserID(mxid))
        return room_id, False

    async def _save_mapping(self, row: AgentRow) -> None:
        assert row.room_id is not None
        await self.agents.upsert(row)
        await self.rooms.upsert(RoomRow(row.room_id, AGENT, row.agent_id))

    async def _update(self, ch: AgentChange, d: Desired, row: AgentRow, space_id: str) -> None:
        assert row.room_id is not None
        if BOT in ch.repairs:
            await self._repair_bot(row, d, space_id)
        room_id = row.room_id
        if PUPPET in ch.repairs:
            await self._join_puppet(room_id, row.mxid)
        if REPARENT in ch.repairs:
            parent = rooms.space_parent(self.s.domain)
            await rooms.put_state(self.bot_api, room_id, rooms.SPACE_PARENT, parent, space_id)
            await rooms.put_state(
                self.bot_api, room_id, rooms.JOIN_RULES, rooms.restricted_to(space_id)
            )
        if POWER in ch.repairs:
            await self._repair_power(room_id)
        for reason in sorted(ch.repairs):
            if reason.startswith(INVITE_PREFIX):
                await invite_quietly(self.bot_api, room_id, reason.removeprefix(INVITE_PREFIX))
        if ch.displayname is not None:
            await self.puppets.set_displayname(row.mxid, ch.displayname)
            row.displayname = ch.displayname
        await self._set_names(row, ch.room_name, ch.topic)
        # A recreated room (bot repair) is not in the space yet either.
        if ch.space_child or REPARENT in ch.repairs or not row.in_space:
            await self._put_child(space_id, room_id, True)
            row.in_space = True
        if ch.kind == RESTORE:
            await self._notice(row, ch.notice)
            row.state = ACTIVE
        row.name, row.description = d.name, d.description

    async def _archive(self, ch: AgentChange, row: AgentRow, space_id: str) -> None:
        if row.room_id is not None:
            if ch.space_child is False:
                await self._put_child(space_id, row.room_id, False)
                row.in_space = False
            await self._notice(row, ch.notice)
            await self._set_names(row, ch.room_name, None)
        row.state = DELETED

    # --- steps ---------------------------------------------------------------------------------

    async def _set_names(self, row: AgentRow, name: str | None, topic: str | None) -> None:
        assert row.room_id is not None
        if name is not None:
            await rooms.put_state(self.bot_api, row.room_id, rooms.ROOM_NAME, {"name": name})
            row.room_name = name
        if topic is not None:
            await rooms.put_state(self.bot_api, row.room_id, rooms.ROOM_TOPIC, {"topic": topic})
            row.topic = topic

    async def _put_child(self, space_id: str, room_id: str, present: bool) -> None:
        content = rooms.space_child(self.s.domain) if present else {}
        await rooms.put_state(self.bot_api, space_id, rooms.SPACE_CHILD, content, room_id)

    async def _notice(self, row: AgentRow, text: str | None) -> None:
        if text is None or row.room_id is None:
            return
        # The row's last save time keeps the txn id stable until this change is saved, so a
        # retried pass does not post the notice twice; the next archive gets a new one.
        txn_id = f"letta-{row.state}-{row.agent_id}-{row.updated_at}"
        await rooms.send_notice(self.puppets.api(row.mxid), row.room_id, text, txn_id)

    async def _join_puppet(self, room_id: str, mxid: str) -> None:
        """Join the puppet unless the state store says it is in. A puppet that left or was
        kicked needs an invite first (it is not a member of the space), a banned one an unban;
        when the store knows nothing, the join is tried alone first."""
        member = await self.state_store.get_member(RoomID(room_id), UserID(mxid))
        membership = member.membership if member is not None else None
        if membership == Membership.JOIN:
            return
        api = self.puppets.api(mxid)
        if membership in (Membership.LEAVE, Membership.BAN):
            await self._readmit(room_id, mxid, banned=membership == Membership.BAN)
            await rooms.join(api, room_id)
        else:
            try:
                await rooms.join(api, room_id)
            except MatrixRequestError as e:
                if e.http_status != 403:
                    raise
                await self._readmit(room_id, mxid, banned=False)
                await rooms.join(api, room_id)
        await self.state_store.joined(RoomID(room_id), UserID(mxid))

    async def _readmit(self, room_id: str, mxid: str, *, banned: bool) -> None:
        if banned:
            await rooms.unban(self.bot_api, room_id, mxid)
        await rooms.invite(self.bot_api, room_id, mxid)

    async def _repair_bot(self, row: AgentRow, d: Desired, space_id: str) -> None:
        assert row.room_id is not None
        try:
            await rooms.join(self.bot_api, row.room_id)
            return
        except MatrixRequestError as e:
            if not gone(e):
                raise
            log.warning(
                "The bot cannot re-enter %s of agent %s (%s); creating a new room",
                row.room_id,
                row.agent_id,
                e.errcode,
            )
        old = row.room_id
        await rooms.remove_alias(self.bot_api, self.s.alias(row.agent_id))
        room_id, _ = await self._new_room(d, row.mxid, space_id)
        if row.in_space:
            await self._put_child(space_id, old, False)
        row.room_id, row.room_name, row.topic, row.in_space = room_id, d.room_name, d.topic, False
        await self.rooms.upsert(RoomRow(old, ARCHIVED, row.agent_id))
        await self._save_mapping(row)

    async def _repair_power(self, room_id: str) -> None:
        levels = await self.state_store.get_power_levels(RoomID(room_id))
        if levels is None:
            return
        content = levels.serialize()
        users = content.setdefault("users", {})
        missing = [a for a in self.s.admins if users.get(a, 0) < rooms.ADMIN_LEVEL]
        if missing:
            users.update(dict.fromkeys(missing, rooms.ADMIN_LEVEL))
            await rooms.put_state(self.bot_api, room_id, rooms.POWER_LEVELS, content)
