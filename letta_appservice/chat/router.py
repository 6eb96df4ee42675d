"""Event routing: ignore, bridge command, agent conversation, or membership; inbox lanes."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from mautrix.api import Method, Path
from mautrix.errors import MatrixRequestError
from mautrix.types import Member, Membership, MessageEvent, RoomID, StateEvent, UserID

from ..config import Config
from ..db.agent import ACTIVE, AgentRow, AgentStore
from ..db.inbox import InboxEvent
from ..db.invited_agent import InvitedAgentStore
from ..db.room import AGENT, INVITED, RoomRow, RoomStore
from ..db.user_notice import UserNoticeStore
from ..identity import Identity
from ..matrix.puppets import Puppets
from ..permissions import Permissions
from . import encryption as e2ee
from .addressing import MENTION, OPEN, addressed, default_mode, is_command
from .content import (
    GONE_NOTICE_PART,
    LOOP_NOTICE_PART,
    MEDIA_NOTICE_PART,
    PAUSED_NOTICE_PART,
    REFUSED_NOTICE_PART,
    reply_relation,
)
from .incoming import incoming_text, letta_content, media_kind, sender_name
from .loops import LOOP_NOTICE, ROUTE, TELL, LoopGuard, answers_bridge
from .media import describe, media_of, refusal
from .memberships import Memberships, agent_ids
from .poster import homeserver_retry, homeserver_trouble
from .reactions import Reactions, control_lane
from .turn import Conversations, Job

log = logging.getLogger("letta_appservice.router")
NOT_PERMITTED = "not_permitted"
AGENT_GONE = "agent_gone"
GONE = "{name} was deleted in Letta and cannot answer any more."
# The reconciler stores an agent room's row after creating it (invites included), so a person
# can write a moment before the row's bridged_at; clocks of homeserver and bridge differ too.
BRIDGED_GRACE_MS = 60_000
REDACTIONS_KEPT = 10_000
REFUSAL = "{user} may not talk to agents on this bridge; ask a bridge admin for access."
PAUSED = "{name} is paused by a bridge admin; this message was not passed on and will not be."


class Commands(Protocol):
    """The command processor (commands package) as the router uses it."""

    async def on_bot_invite(self, evt: StateEvent) -> None: ...

    async def maybe_handle(self, evt: MessageEvent) -> bool: ...


# --- the router ----------------------------------------------------------------------------------


class Router:
    """Handles every inbox event after the app's own bookkeeping (``before``: state store,
    reconciler drift). Messages for an agent go to ``Conversations``; memberships (invites,
    departures) and encryption go to ``Memberships``."""

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
        conversations: Conversations,
        reactions: Reactions,
        memberships: Memberships,
        commands: Commands,
        before: Callable[[InboxEvent], Awaitable[None]],
        loops: LoopGuard,
    ) -> None:
        self.identity = identity
        self.prefix = config.bridge.command_prefix
        self.template = config.bridge.attribution_template
        self.media = config.media
        self.permissions = permissions
        self.agents = agents
        self.rooms = rooms
        self.invited = invited
        self.notices = notices
        self.state_store = state_store
        self.puppets = puppets
        self.conversations = conversations
        self.reactions = reactions
        self.memberships = memberships
        self.commands = commands
        self.before = before
        self.loops = loops
        self._room_names: dict[str, str] = {}
        # Messages deleted (redacted) before their turn came: not passed on. The redaction is
        # handled in the room's lane, so it overtakes a message waiting behind a slow answer.
        self._redacted: OrderedDict[str, None] = OrderedDict()

    # --- lanes ---------------------------------------------------------------------------------

    async def lane_key(self, event: InboxEvent) -> str:
        """A message for exactly one agent waits in that agent's lane (FIFO, one Letta request
        at a time); everything else, commands included, in its room's lane, so a `cancel`
        never waits behind the turn it cancels. Reactions and decisions: see control_lane."""
        if not self.identity.is_bridge(event.sender) and (lane := control_lane(event)):
            return lane
        if event.event_type != "m.room.message" or self.identity.is_bridge(event.sender):
            return event.room_id
        if is_command(event.event.get("content") or {}, self.prefix):
            return event.room_id
        room = await self.rooms.get(event.room_id)
        if room is None or room.kind not in (AGENT, INVITED):
            return event.room_id
        agent_ids = await self._agent_ids(room)
        return f"agent:{agent_ids[0]}" if len(agent_ids) == 1 else event.room_id

    # --- events --------------------------------------------------------------------------------

    async def handle(self, event: InboxEvent) -> None:
        """Handle one event; the homeserver failing for a while (5xx, 429, unreachable) makes
        the whole event retried with backoff, every step being safe to repeat. Only its
        definitive answers (403, 404, …) are final."""
        async with homeserver_retry(event.attempts):
            await self._handle(event)

    async def _handle(self, event: InboxEvent) -> None:
        await self.before(event)
        if event.event_type == "m.room.message":
            await self._message(event)
        elif event.event_type == "m.reaction":
            await self.reactions.reaction(event)
        elif event.event_type == "m.room.member":
            evt = event.parsed
            if isinstance(evt, StateEvent):
                await self.memberships.member(evt)
        elif event.event_type == e2ee.ENCRYPTION and event.event.get("state_key") == "":
            await self.memberships.encryption_on(event)
        elif event.event_type == e2ee.ENCRYPTED and not self.identity.is_bridge(event.sender):
            await self.memberships.encrypted_message(event)
        elif event.event_type == "m.room.redaction":
            # Room versions up to 10 carry the target at the top level, 11+ in the content.
            target = event.event.get("redacts") or (event.event.get("content") or {}).get(
                "redacts"
            )
            if isinstance(target, str):
                self._redacted[target] = None
                while len(self._redacted) > REDACTIONS_KEPT:
                    self._redacted.popitem(last=False)
        elif event.event_type == "m.room.name" and event.event.get("state_key") == "":
            name = (event.event.get("content") or {}).get("name")
            self._room_names[event.room_id] = name if isinstance(name, str) else ""

    async def _message(self, event: InboxEvent) -> None:
        raw = event.event
        sender, room_id = event.sender, event.room_id
        content = raw.get("content") or {}
        media = media_kind(content)
        if self.identity.is_bridge(sender) or (incoming_text(content, "") is None and not media):
            return  # our own messages (no loops), notices, edits
        if event.event_id in self._redacted:
            log.info("%s was deleted while it waited; not passed on", event.event_id)
            return
        body = content.get("body")
        if await self.rooms.get(room_id) is None and (
            not isinstance(body, str) or self.prefix.lower() not in body.lower()
        ):
            return  # a room we do not serve, and no command: no parsing, no query (load)
        if not media and await self.reactions.reply(event):
            return  # an answer to an approval card
        if not media:
            evt = event.parsed
            if isinstance(evt, MessageEvent) and await self.commands.maybe_handle(evt):
                return
        bot = self.loops.is_bot(sender, content)
        if bot and not await self.loops.bots_allowed(room_id):
            log.debug("%s in %s is a bot; bots are not allowed there", sender, room_id)
            return
        room = await self.rooms.get(room_id)
        if room is None or room.kind not in (AGENT, INVITED):
            return
        written = raw.get("origin_server_ts")  # a sender's claim: any JSON, or none
        if (written if isinstance(written, int) else 0) < room.bridged_at - BRIDGED_GRACE_MS:
            return  # written before the room was bridged
        agents = await self._agents(room)
        if not agents and room.kind == INVITED and self.permissions.is_user(sender):
            await self._all_gone(event, room)
            return
        heard = {a.agent_id: await self._addressed(room, a, agents, content) for a in agents}
        targets = [a for a in agents if heard[a.agent_id] is not None]
        if not targets:
            return
        if not self.permissions.is_user(sender):
            text = REFUSAL.format(user=sender)
            await self._once(event, targets[0], NOT_PERMITTED, REFUSED_NOTICE_PART, text)
            return
        relation = reply_relation(content, event.event_id)
        found = media_of(content) if media else None
        why = refusal(found, self.media) if found else None
        if why is not None:  # over a limit, a type agents cannot take: the person hears why
            await self.conversations.notify(
                targets[0], room_id, event.event_id, MEDIA_NOTICE_PART, why, relation
            )
        if why is not None or (media and found is None):  # (no url: an encrypted file)
            return
        chained = bot or answers_bridge(content, self.identity.is_bridge)
        verdict, why = self.loops.admit(room_id, event.event_id, chained=chained)
        if verdict != ROUTE:
            if verdict == TELL:
                text = LOOP_NOTICE.format(why=why, prefix=self.prefix)
                await self.conversations.notify(
                    targets[0], room_id, event.event_id, LOOP_NOTICE_PART, text, relation
                )
            return
        for agent in targets:
            if agent.paused:
                text = PAUSED.format(name=agent.displayname or agent.name)
                await self.conversations.notify(
                    agent, room_id, event.event_id, PAUSED_NOTICE_PART, text, relation
                )
                continue
            api = self.puppets.api(agent.mxid)
            displayname = await self._displayname(room_id, sender, api)
            text = describe(found) if found else incoming_text(content, displayname)
            assert text is not None
            room_name = await self._room_name(room, agent)
            job = Job(
                event_id=event.event_id,
                room_id=room_id,
                sender=sender,
                agent=agent,
                content=letta_content(
                    self.template,
                    displayname=displayname,
                    sender=sender,
                    room_name=room_name,
                    text=text,
                ),
                name=sender_name(sender),
                relation=relation,
                received_at=event.received_at,
                attempts=event.attempts,
                expects_reply=bool(heard[agent.agent_id]),
                media=found,
            )
            await self.conversations.answer(job)

    async def _agent_ids(self, room: RoomRow) -> list[str]:
        return await agent_ids(self.invited, room)

    async def _agents(self, room: RoomRow) -> list[AgentRow]:
        found = [await self.agents.get(agent_id) for agent_id in await self._agent_ids(room)]
        return [a for a in found if a is not None and a.state == ACTIVE]

    async def _all_gone(self, event: InboxEvent, room: RoomRow) -> None:
        """Every agent of this room was deleted in Letta: rather than silence, the person
        hears it once (the puppet stays, in case the agent comes back)."""
        for agent_id in await self._agent_ids(room):
            agent = await self.agents.get(agent_id)
            if agent is not None:
                text = GONE.format(name=agent.displayname or agent.name)
                await self._once(event, agent, AGENT_GONE, GONE_NOTICE_PART, text)
                return

    async def _addressed(
        self,
        room: RoomRow,
        agent: AgentRow,
        agents: list[AgentRow],
        content: Mapping[str, Any],
    ) -> bool | None:
        """None: the message is not for the agent. Else whether the person expects a reply:
        in the agent's own room, a 1:1 DM, or having named it (not so in a group room an
        admin opened to every message)."""
        own = room.kind == AGENT and room.agent_id == agent.agent_id
        others = 0 if own else await self._others(room.room_id, agent, agents)
        natural = default_mode(room.kind, own, others)
        if not addressed(room.mode or natural, content, agent):
            return None
        return natural == OPEN or addressed(MENTION, content, agent)

    async def _others(self, room_id: str, agent: AgentRow, agents: list[AgentRow]) -> int:
        """Members besides the puppet and the bot; other agents' puppets count as people, from
        the moment they are invited (their join may not have reached the state store yet)."""
        members = set(await self.state_store.get_members(RoomID(room_id), (Membership.JOIN,)))
        members |= {a.mxid for a in agents}
        return len(members - {agent.mxid, self.identity.bot_mxid})

    async def _once(
        self, event: InboxEvent, agent: AgentRow, kind: str, part: int, text: str
    ) -> None:
        """A notice from the agent's puppet that a person gets once per room (``kind``)."""
        room_id, sender = event.room_id, event.sender
        if await self.notices.given(room_id, sender, kind):
            return
        relation = reply_relation(event.event.get("content") or {}, event.event_id)
        await self.conversations.notify(agent, room_id, event.event_id, part, text, relation)
        await self.notices.record(room_id, sender, kind)

    async def _displayname(self, room_id: str, user_id: str, api: Any) -> str:
        member = await self.state_store.get_member(RoomID(room_id), UserID(user_id))
        if member is None:
            try:
                raw = await api.request(
                    Method.GET, Path.v3.rooms[room_id].state["m.room.member"][user_id]
                )
                member = Member.deserialize(raw)
                await self.state_store.set_member(RoomID(room_id), UserID(user_id), member)
            except MatrixRequestError as e:
                if homeserver_trouble(e):
                    raise
                member = None
        if member is not None and member.displayname:
            return member.displayname
        return sender_name(user_id)

    async def _room_name(self, room: RoomRow, agent: AgentRow) -> str:
        if room.kind == AGENT and room.agent_id == agent.agent_id:
            return agent.room_name or agent.name
        name = self._room_names.get(room.room_id)
        if name is None:
            try:
                raw = await self.puppets.api(agent.mxid).request(
                    Method.GET, Path.v3.rooms[room.room_id].state["m.room.name"]
                )
                name = raw.get("name") if isinstance(raw.get("name"), str) else ""
            except MatrixRequestError as e:
                if homeserver_trouble(e):
                    raise
                name = ""
            self._room_names[room.room_id] = name
        return name or "a direct chat"
