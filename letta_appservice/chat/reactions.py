"""People in control from the chat: ✅ / ❌ (or a reply "approve" / "deny [reason]") on an
approval card decides it and the turn goes on where it stopped; 🛑 stops an answer."""

from __future__ import annotations

import logging

import attrs

from ..db.agent import AgentStore
from ..db.approval import APPROVE, DENY, ELSEWHERE, ApprovalRow, ApprovalStore
from ..db.inbox import InboxEvent
from ..db.turn import TurnStore
from ..db.user_notice import UserNoticeStore
from ..identity import Identity
from ..inbox.worker import Retry
from ..letta import LettaError
from ..letta.approvals import Decision, pending_calls
from ..permissions import Permissions
from .approvals import Cards
from .cards import (
    ADMINS,
    STOP_KEY,
    USERS,
    decision_of_key,
    reaction_key,
    replied_to,
    reply_decision,
    who_may_decide,
)
from .content import APPROVAL_REFUSED_PART
from .conversations import RoomConversations
from .turn import Conversations, Job, backoff

log = logging.getLogger("letta_appservice.reactions")
REFUSED = "approval_refused"  # user_notice kind: told once per room
NOT_YOURS = "{user} may not decide on this tool call; {who} may."


def control_lane(event: InboxEvent) -> str | None:
    """Reactions and decisions get lanes of their own per room, apart from the turns they
    stop or continue: a 🛑 never waits behind the answer it stops, nor a decision behind the
    messages queued until it is made (pure)."""
    content = event.event.get("content") or {}
    if event.event_type == "m.reaction":
        found = reaction_key(content)
        return (
            f"stop:{event.room_id}"
            if found and found[1] == STOP_KEY
            else f"decide:{event.room_id}"
        )
    if event.event_type == "m.room.message" and reply_decision(content) is not None:
        return f"decide:{event.room_id}"
    return None


class Reactions:
    def __init__(
        self,
        *,
        policy: str,
        identity: Identity,
        permissions: Permissions,
        agents: AgentStore,
        notices: UserNoticeStore,
        cards: Cards,
        conversations: Conversations,
    ) -> None:
        self.policy = policy
        self.identity = identity
        self.permissions = permissions
        self.agents = agents
        self.notices = notices
        self.cards = cards
        self.conversations = conversations
        # The cards' table; the turns and conversations of the turns decisions continue.
        self.approvals: ApprovalStore = cards.store
        self.turns: TurnStore = conversations.turns
        self.rooms: RoomConversations = conversations.rooms

    async def reaction(self, event: InboxEvent) -> None:
        found = reaction_key(event.event.get("content") or {})
        sender = event.sender
        if (
            found is None
            or self.identity.is_bridge(sender)
            or not self.permissions.is_user(sender)
        ):
            return  # the puppets' own ✅ ❌ come back here too
        target, key = found
        if key == STOP_KEY:
            admin = self.permissions.is_admin(sender)
            stopped = await self.conversations.stop_answer(
                event.room_id, target, sender, admin=admin
            )
            log.info("🛑 by %s on %s: %s", sender, target, stopped)
            return
        approve = decision_of_key(key)
        if approve is not None:
            await self.decide(event, target, approve, "")

    async def reply(self, event: InboxEvent) -> bool:
        """A reply "approve" / "deny [reason]" to a card decides it; False for any other
        message (it goes on to the agents)."""
        content = event.event.get("content") or {}
        decision = reply_decision(content)
        target = replied_to(content)
        if decision is None or target is None or not self.permissions.is_user(event.sender):
            return False
        if await self.approvals.get(target) is None:
            return False
        await self.decide(event, target, *decision)
        return True

    def _may_decide(self, row: ApprovalRow, user: str) -> bool:
        if self.permissions.is_admin(user):
            return True
        if self.policy == ADMINS:
            return False
        return self.permissions.is_user(user) if self.policy == USERS else user == row.asker

    async def decide(self, event: InboxEvent, card: str, approve: bool, reason: str) -> None:
        row = await self.approvals.get(card)
        if row is None or (row.decision is not None and row.decision_event_id != event.event_id):
            return  # not a card, or decided already
        agent = await self.agents.get(row.agent_id)
        if agent is None:
            return
        if not self._may_decide(row, event.sender):
            if not await self.notices.given(event.room_id, event.sender, REFUSED):
                text = NOT_YOURS.format(
                    user=event.sender, who=who_may_decide(self.policy, row.asker)
                )
                relation = {"m.in_reply_to": {"event_id": card}}
                await self.conversations.notify(
                    agent, event.room_id, event.event_id, APPROVAL_REFUSED_PART, text, relation
                )
                await self.notices.record(event.room_id, event.sender, REFUSED)
            return
        decision = APPROVE if approve else DENY
        claimed = await self.approvals.claim(card, event.event_id, event.sender, decision, reason)
        if claimed is None:
            return  # someone else's decision came first
        ids = [call["id"] for call in claimed.calls]
        waits = await self.turns.get(event.event_id, agent.agent_id) is not None
        if not waits:
            waits = await self._waits(agent.agent_id, claimed, ids, event.attempts)
        if not waits:
            # Decided in Letta's own UI meanwhile: say so on the card instead of failing.
            await self.approvals.decided_elsewhere(card)
            await self.cards.show_decision(agent.mxid, attrs.evolve(claimed, decision=ELSEWHERE))
            return
        await self.cards.show_decision(agent.mxid, claimed)
        job = Job(
            event_id=event.event_id,
            room_id=event.room_id,
            sender=claimed.asker,  # the answer goes on where it stopped, to who asked
            agent=agent,
            content="",
            name="",
            relation=claimed.relation,
            received_at=event.received_at,
            attempts=event.attempts,
            decisions=tuple(Decision(i, approve, reason) for i in ids),
        )
        await self.conversations.answer(job)

    async def _waits(self, agent_id: str, row: ApprovalRow, ids: list[str], attempts: int) -> bool:
        """Whether Letta still waits on one of these calls (if it cannot tell, the decision
        is sent and Letta's answer is the judge)."""
        try:
            conversation = await self.rooms.of(agent_id, row.room_id, row.relation)
            pending = await pending_calls(
                self.rooms.calls.client, agent_id, conversation_id=conversation
            )
        except LettaError as e:
            if e.retryable:
                raise Retry(backoff(attempts), str(e)) from e
            return True
        return any(call.id in ids for call in pending)
