"""Old finished rows are pruned on SQLite and PostgreSQL; unfinished and recent ones stay."""

from __future__ import annotations

from letta_appservice.db.approval import ApprovalRow, ApprovalStore
from letta_appservice.db.database import DatabaseURL, now_ms, open_database
from letta_appservice.db.inbox import InboxStore
from letta_appservice.db.sent_event import SentEventStore
from letta_appservice.db.turn import TurnStore
from letta_appservice.inbox.housekeeping import RETENTION_MS, prune
from tests.harness.events import message


async def test_prune_keeps_what_exactly_once_still_needs(database_url: str) -> None:
    db = await open_database(DatabaseURL.parse(database_url), in_child=False)
    inbox, sent, turns = InboxStore(db), SentEventStore(db), TurnStore(db)
    approvals = ApprovalStore(db)
    stores = {"inbox": inbox, "sent_event": sent, "letta_turn": turns, "approval": approvals}
    try:
        await inbox.store_transaction("old", [message(1), message(2)])
        await inbox.store_transaction("new", [message(3)])
        await inbox.store_transaction("failed", [message(4)])
        old = now_ms() - RETENTION_MS - 1000
        # $event1: finished long ago. $event2: old but never finished. $event3: finished now.
        # $event4: failed long ago.
        await db.execute(
            "UPDATE inbox SET state='done', updated_at=$1 WHERE event_id='$event1'", old
        )
        await db.execute(
            "UPDATE inbox SET state='failed', updated_at=$1 WHERE event_id='$event4'", old
        )
        await db.execute("UPDATE inbox SET updated_at=$1 WHERE event_id='$event2'", old)
        await db.execute("UPDATE inbox SET state='done' WHERE event_id='$event3'")
        await db.execute("UPDATE appservice_txn SET received_at=$1 WHERE txn_id='old'", old)
        await sent.add("$event1", "", 0, "!room:test.local", "$reply1")
        await sent.add("$event3", "", 0, "!room:test.local", "$reply3")
        await db.execute("UPDATE sent_event SET sent_at=$1 WHERE source_event_id='$event1'", old)

        # Approval cards: decided long ago, decided elsewhere long ago (no decision time),
        # waiting long since, decided now.
        for card in ("$decided_old", "$elsewhere_old", "$waiting_old", "$decided_new"):
            await approvals.add(
                ApprovalRow(card, "!room:test.local", "agent-1", "@a:t", {}, [], {})
            )
        await approvals.claim("$decided_old", "$r1", "@a:t", "approve", "")
        await approvals.decided_elsewhere("$elsewhere_old")
        await approvals.claim("$decided_new", "$r2", "@a:t", "deny", "")
        await db.execute("UPDATE approval SET created_at=$1", old)
        await db.execute(
            "UPDATE approval SET decided_at=$1 WHERE card_event_id='$decided_old'", old
        )

        removed = await prune(stores, now_ms() - RETENTION_MS)

        assert removed == {"inbox": 2, "sent_event": 1, "letta_turn": 0, "approval": 2}
        cards = [r["card_event_id"] for r in await db.fetch("SELECT card_event_id FROM approval")]
        assert sorted(cards) == ["$decided_new", "$waiting_old"]
        left = [r["event_id"] for r in await db.fetch("SELECT event_id FROM inbox ORDER BY seq")]
        assert left == ["$event2", "$event3"]
        txns = [r["txn_id"] for r in await db.fetch("SELECT txn_id FROM appservice_txn")]
        assert sorted(txns) == ["failed", "new"]
        assert await sent.parts("$event1") == {} and await sent.parts("$event3") == {0: "$reply3"}
    finally:
        await db.stop()
