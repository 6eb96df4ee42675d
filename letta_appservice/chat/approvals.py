"""Approval cards in the room: stored when posted (a decision after a restart still finds
them), offered ✅ and ❌ by the puppet, and edited to show the decision."""

from __future__ import annotations

import attrs
from mautrix.api import Method, Path
from mautrix.appservice import AppServiceAPI

from ..db.approval import ApprovalRow, ApprovalStore
from ..matrix.puppets import Puppets
from .cards import APPROVE_KEY, DENY_KEY, decided_text, decision_line
from .content import edit_content, edit_suffix, txn_id
from .parts import Part
from .poster import Job


class Cards:
    def __init__(self, *, store: ApprovalStore, puppets: Puppets) -> None:
        self.store = store
        self.puppets = puppets

    async def opened(self, job: Job, card_event_id: str, part: Part) -> None:
        """A turn posted a card: remember what it decides, then offer the two reactions (both
        safe to repeat when the turn's event is retried)."""
        agent_id = job.agent.agent_id
        row = ApprovalRow(
            card_event_id=card_event_id,
            room_id=job.room_id,
            agent_id=agent_id,
            asker=job.sender,
            relation=job.relation,
            calls=[attrs.asdict(call) for call in part.calls],
            card=part.to_json(),
        )
        await self.store.add(row)
        api = self.puppets.api(job.agent.mxid)
        for n, key in enumerate((APPROVE_KEY, DENY_KEY)):
            content = {
                "m.relates_to": {"rel_type": "m.annotation", "event_id": card_event_id, "key": key}
            }
            txn = txn_id(card_event_id, agent_id, n, ".react")
            path = Path.v3.rooms[job.room_id].send["m.reaction"][txn]
            await api.request(Method.PUT, path, content)

    async def show_decision(self, mxid: str, row: ApprovalRow) -> None:
        """Edit the card: who decided and when, in place of how to answer."""
        assert row.decision is not None
        card = Part.from_json(row.card)
        line = decision_line(row.decision, row.decided_by, row.reason, row.decided_at)
        decided = Part(card.msgtype, *decided_text((card.body, card.html), line))
        api: AppServiceAPI = self.puppets.api(mxid)
        txn = txn_id(row.card_event_id, row.agent_id, 0, edit_suffix(decided.body))
        path = Path.v3.rooms[row.room_id].send["m.room.message"][txn]
        await api.request(Method.PUT, path, edit_content(decided, row.card_event_id))
