"""Inbox under load and faults: a transaction remembers which events it carried (a txnId
reused after a homeserver restart is no longer mistaken for a redelivery), and events of a
busy lane wait in the database ('parked', with their lane) instead of in memory.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # sha256 of the transaction's event ids; NULL (rows from before) never matches.
    op.add_column("appservice_txn", sa.Column("events_hash", sa.Text, nullable=True))
    op.add_column("inbox", sa.Column("lane", sa.Text, nullable=True))
    op.create_index("inbox_lane_seq", "inbox", ["state", "lane", "seq"])


def downgrade() -> None:
    op.execute("UPDATE inbox SET state = 'pending', lane = NULL WHERE state = 'parked'")
    op.drop_index("inbox_lane_seq", "inbox")
    op.drop_column("inbox", "lane")
    op.drop_column("appservice_txn", "events_hash")
