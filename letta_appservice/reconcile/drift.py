"""Drift: what people changed in Matrix that the next pass must repair, found in the bot's joined
rooms, the space's children and what the state store learned from pushed events."""

from __future__ import annotations

from mautrix.appservice.state_store import ASStateStore
from mautrix.types import Membership, RoomID, UserID

from ..db.agent import AgentRow
from ..matrix import rooms
from .plan import BOT, INVITE_PREFIX, POWER, PUPPET, SPACE_CHILD, ReconcileSettings


class DriftCheck:
    """What the full check finds, from the bot's joined rooms, the space's children and what
    the state store learned from pushed events (it makes no requests itself)."""

    def __init__(self, settings: ReconcileSettings, state_store: ASStateStore) -> None:
        self.s = settings
        self.state_store = state_store

    async def space(self, space_id: str, joined: set[str]) -> set[str]:
        """The bot back in the space; admins who never had an invite."""
        if space_id not in joined:
            return {BOT}
        return {INVITE_PREFIX + a for a in await self._uninvited(space_id)}

    async def room(self, row: AgentRow, joined: set[str], children: set[str]) -> set[str]:
        """Repairs one active agent's room needs."""
        assert row.room_id is not None
        room_id = RoomID(row.room_id)
        if row.room_id not in joined:
            return {BOT, PUPPET}  # re-entered (or recreated) first; the rest is checked after
        marks = {INVITE_PREFIX + a for a in await self._uninvited(room_id)}
        if row.in_space and row.room_id not in children:
            marks.add(SPACE_CHILD)
        puppet = await self.state_store.get_member(room_id, UserID(row.mxid))
        if puppet is not None and puppet.membership != Membership.JOIN:
            marks.add(PUPPET)
        levels = await self.state_store.get_power_levels(room_id)
        if levels is not None and any(
            levels.users.get(UserID(a), 0) < rooms.ADMIN_LEVEL for a in self.s.admins
        ):
            marks.add(POWER)  # e.g. an admin added to the config since
        return marks

    async def _uninvited(self, room_id: str) -> list[str]:
        # Only admins the room has never seen: one who left or declined keeps that choice
        # (a leave is answered once, when it happens; see Reconciler.observe).
        return [
            a
            for a in self.s.admins
            if await self.state_store.get_member(RoomID(room_id), UserID(a)) is None
        ]
