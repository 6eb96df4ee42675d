"""Who comes and goes in the rooms the bridge is in: a person's invite of a puppet (join or
decline), the bridge leaving once the last person has, and end-to-end encryption, which the
bridge cannot read (it says so instead of going silent)."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from mautrix.api import Method, Path
from mautrix.errors import MatrixRequestError
from mautrix.types import Member, Membership, RoomID, StateEvent, UserID

from ..config import Config
from ..db.agent import ACTIVE, AgentRow, AgentStore
from ..db.inbox import InboxEvent
from ..db.invited_agent import InvitedAgentStore
from ..db.room import AGENT, ARCHIVED, INVITED, MANAGEMENT, RoomRow, RoomStore
from ..db.user_notice import UserNoticeStore
from ..identity import Identity
from ..matrix import rooms as mx
from ..matrix.ids import room_origin
from ..matrix.puppets import Puppets
from ..permissions import Permissions
from . import encryption as e2ee
from .poster import homeserver_trouble

log = logging.getLogger("letta_appservice.memberships")
ENCRYPTED_NOTICE = "encrypted"
REMOTE_REFUSAL = "Only bridge admins may bring agents into rooms of other servers."


class BotInvites(Protocol):
    """The command processor's part in memberships (commands package)."""

    async def on_bot_invite(self, evt: StateEvent) -> None: ...


async def agent_ids(invited: InvitedAgentStore, room: RoomRow) -> list[str]:
    """The agents a room talks to: an agent room's own, then those invited into it."""
    ids = [room.agent_id] if room.kind == AGENT and room.agent_id else []
    ids += [a for a in await invited.agents_in(room.room_id) if a not in ids]
    return ids


class Memberships:
    """Membership and encryption events of rooms the bridge is in (the router hands them on)."""

    def __init__(
        self,
        *,
        config: Config,
        identity: Identity,
        permissions: Permissions,
        agents: AgentStore,
        rooms: RoomStore,
        invited: InvitedAgentStore,
        notices: UserNoticeStore,
        state_store: Any,
        puppets: Puppets,
        bot_invites: BotInvites,
    ) -> None:
        self.identity = identity
        self.prefix = config.bridge.command_prefix
        self.permissions = permissions
        self.agents = agents
        self.rooms = rooms
        self.invited = invited
        self.notices = notices
        self.state_store = state_store
        self.puppets = puppets
        self.bot_invites = bot_invites

    async def member(self, evt: StateEvent) -> None:
        target, membership = evt.state_key, evt.content.membership
        if target == self.identity.bot_mxid and membership == Membership.INVITE:
            await self.bot_invites.on_bot_invite(evt)
        elif self.identity.is_puppet(target) and membership == Membership.INVITE:
            await self._puppet_invited(evt)
        elif self.identity.is_puppet(target) and membership in (Membership.LEAVE, Membership.BAN):
            await self._puppet_left(evt.room_id, target)
        elif membership in (Membership.LEAVE, Membership.BAN) and target != self.identity.bot_mxid:
            await self._person_left(evt.room_id)

    async def _puppet_invited(self, evt: StateEvent) -> None:
        """A person invited a puppet: it joins and the room talks to its agent (the bridge's
        own invites, for agent rooms, are the reconciler's business)."""
        inviter, room_id, mxid = evt.sender, evt.room_id, evt.state_key
        if self.identity.is_bridge(inviter):
            return
        agent = await self.agents.get_by_mxid(mxid)
        room = await self.rooms.get(room_id)
        refusal = join_refusal(
            agent,
            room,
            self.permissions.is_user(inviter),
            self.permissions.may_bring_into(inviter, room_origin(evt)),
        )
        # Its own room is the reconciler's, encrypted or not; elsewhere it would be deaf.
        own = room is not None and room.kind == AGENT and agent is not None
        own = own and room.agent_id == agent.agent_id
        if refusal is None and not own and e2ee.invite_says_encrypted(evt):
            refusal = e2ee.DECLINED
        api = self.puppets.api(mxid)
        if refusal is not None:
            log.info("%s refuses the invite of %s to %s: %s", mxid, inviter, room_id, refusal)
            await mx.leave(api, room_id, refusal)
            return
        assert agent is not None
        # Stored before the join, so a message written as soon as the join shows is routed.
        if room is None:
            room = RoomRow(
                room_id, INVITED, agent.agent_id, owner=inviter, bridged_at=evt.timestamp
            )
            await self.rooms.upsert(room)
        if not own:
            await self.invited.add(room_id, agent.agent_id)
        await self.puppets.ensure_registered(mxid)
        try:
            await mx.join(api, room_id)
        except MatrixRequestError as e:
            if homeserver_trouble(e):
                raise  # the homeserver is having a bad moment: the invite is tried again
            log.info("%s could not join %s (%s): invite withdrawn?", mxid, room_id, e.errcode)
            await self._puppet_left(room_id, mxid)
            return
        await self.state_store.joined(RoomID(room_id), UserID(mxid))
        if not own and await e2ee.is_encrypted(api, room_id):
            # The invite's stripped state did not say (the homeserver may send none, or be
            # configured to leave encryption out of it): found out only now.
            await e2ee.tell(api, room_id, e2ee.DECLINED, evt.event_id)
            await mx.leave(api, room_id)
            await self.state_store.left(RoomID(room_id), UserID(mxid))
            await self._puppet_left(room_id, mxid)
            return
        # Learn who is there (events from before the join were never pushed to us).
        resp = await api.request(Method.GET, Path.v3.rooms[room_id].joined_members)
        joined = {
            UserID(uid): Member(membership=Membership.JOIN, displayname=info.get("display_name"))
            for uid, info in (resp.get("joined") or {}).items()
        }
        await self.state_store.set_members(RoomID(room_id), joined, Membership.JOIN)
        log.info("%s joined %s at the invite of %s", mxid, room_id, inviter)

    async def _person_left(self, room_id: str) -> None:
        """Once nobody but the bridge is left in a room it joined at someone's invitation (a
        room with invited agents, a management room), its users leave too rather than linger
        where nobody reads. Agent rooms and the space belong to the reconciler and stay."""
        room = await self.rooms.get(room_id)
        if room is None or room.kind not in (INVITED, MANAGEMENT):
            return
        ours = await self._ours(room_id)
        if not ours:
            return
        # The homeserver decides, not the state store: it may not know members who were in
        # the room before the bridge. Pending invites count as people.
        present = await mx.present_members(self.puppets.api(ours[0]), room_id)
        if any(not self.identity.is_bridge(user) for user in present):
            return
        log.info("Everyone left %s; %s leave it too", room_id, ", ".join(ours))
        await self._leave(room_id, room, ours)

    async def _ours(self, room_id: str) -> list[str]:
        """The bridge's users (bot, puppets) joined to the room, as the state store knows."""
        joined = await self.state_store.get_members(RoomID(room_id), (Membership.JOIN,))
        return [m for m in joined if self.identity.is_bridge(m)]

    async def _leave(self, room_id: str, room: RoomRow | None, ours: list[str]) -> None:
        """The bridge's users leave the room and the bridge forgets it."""
        for mxid in ours:
            try:
                await mx.leave(self.puppets.api(mxid), room_id)
            except MatrixRequestError as e:
                if homeserver_trouble(e):
                    raise
                log.info("%s could not leave %s (%s)", mxid, room_id, e.errcode)
            await self.state_store.left(RoomID(room_id), UserID(mxid))
            if self.identity.is_puppet(mxid):
                await self._puppet_left(room_id, mxid)
        if room is not None and room.kind == MANAGEMENT:
            await self.rooms.delete(room_id)

    # --- encryption (which the bridge cannot read) --------------------------------------------

    async def _speaker(self, room: RoomRow, ours: list[str]) -> tuple[AgentRow | None, Any]:
        """Who speaks for the bridge in the room: the puppet of an agent it talks to, else the
        bot (or whoever of the bridge is in it); the agent (None for the bot) and its API."""
        for agent_id in await agent_ids(self.invited, room):
            agent = await self.agents.get(agent_id)
            if agent is not None and agent.mxid in ours:
                return agent, self.puppets.api(agent.mxid)
        return None, self.puppets.api(
            self.identity.bot_mxid if self.identity.bot_mxid in ours else ours[0]
        )

    async def encryption_on(self, event: InboxEvent) -> None:
        """Someone turned encryption on: an agent room is told its agent is now deaf there (it
        stays: the room is the reconciler's); a room with invited agents or a management room
        is told and left. Other rooms (the space) are not the bridge's to talk in."""
        room_id = event.room_id
        if self.identity.is_bridge(event.sender):
            # Never asked for by the bridge: the homeserver encrypts every new room.
            log.error(
                "The homeserver encrypted %s, a room the bridge created: agents cannot read "
                "encrypted rooms. Set the homeserver's encryption_enabled_by_default_for_"
                "room_type to 'off' or 'invite', then `reset` the agents of such rooms.",
                room_id,
            )
            return
        room = await self.rooms.get(room_id)
        ours = await self._ours(room_id)
        if room is None or not ours:
            return
        agent, api = await self._speaker(room, ours)
        if room.kind == AGENT and agent is not None:
            name = agent.displayname or agent.name
            text = e2ee.AGENT_ROOM.format(name=name, prefix=self.prefix)
            await e2ee.tell(api, room_id, text, event.event_id)
        elif room.kind in (INVITED, MANAGEMENT):
            await e2ee.tell(api, room_id, e2ee.LEAVING, event.event_id)
            log.info("Encryption turned on in %s; %s leave it", room_id, ", ".join(ours))
            await self._leave(room_id, room, ours)

    async def encrypted_message(self, event: InboxEvent) -> None:
        """An encrypted message nobody here can read: its sender is told why, once per room
        (in the rooms where the bridge listens: agent rooms, rooms with invited agents,
        management rooms)."""
        room_id, sender = event.room_id, event.sender
        room = await self.rooms.get(room_id)
        if room is None or room.kind not in (AGENT, INVITED, MANAGEMENT):
            return
        ours = await self._ours(room_id)
        if not ours or await self.notices.given(room_id, sender, ENCRYPTED_NOTICE):
            return
        _agent, api = await self._speaker(room, ours)
        await e2ee.tell(api, room_id, e2ee.UNREADABLE.format(user=sender), event.event_id)
        await self.notices.record(room_id, sender, ENCRYPTED_NOTICE)

    async def _puppet_left(self, room_id: str, mxid: str) -> None:
        agent = await self.agents.get_by_mxid(mxid)
        if agent is None or agent.agent_id not in await self.invited.agents_in(room_id):
            return
        await self.invited.remove(room_id, agent.agent_id)
        room = await self.rooms.get(room_id)
        if room is None or room.kind != INVITED:
            return
        rest = await self.invited.agents_in(room_id)
        if not rest:
            await self.rooms.delete(room_id)
        elif room.agent_id == agent.agent_id:
            room.agent_id = rest[0]
            await self.rooms.upsert(room)


def join_refusal(
    agent: AgentRow | None, room: RoomRow | None, permitted: bool, may_enter: bool = True
) -> str | None:
    """Why a puppet declines a person's invite, or None when it joins (``may_enter``: the
    inviter may bring agents into a room of this room's server)."""
    if agent is None or agent.state != ACTIVE:
        return "This agent is not bridged any more."
    if not permitted:
        return "You may not talk to agents on this bridge; ask a bridge admin for access."
    if not may_enter:
        return REMOTE_REFUSAL
    if room is not None and room.kind in (MANAGEMENT, ARCHIVED):
        return "Agents do not join this room."
    return None
