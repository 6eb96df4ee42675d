"""Initial schema: transactions, inbox, agents, rooms, bridge state, sent events, notices.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# INTEGER PRIMARY KEY is SQLite's rowid (autoincrement); BIGINT identity on PostgreSQL.
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Transaction ids the homeserver pushed: a redelivered txnId is answered without work.
    op.create_table(
        "appservice_txn",
        sa.Column("txn_id", sa.Text, primary_key=True),
        sa.Column("received_at", sa.BigInteger, nullable=False),
        sa.Column("event_count", sa.Integer, nullable=False),
    )
    # Durable inbox: every pushed event, keyed by event_id, stored before the 200.
    op.create_table(
        "inbox",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.Text, nullable=False, unique=True),
        sa.Column("room_id", sa.Text, nullable=False),
        sa.Column("sender", sa.Text, nullable=False),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("event_json", sa.Text, nullable=False),
        sa.Column("txn_id", sa.Text, nullable=False),
        # pending -> processing -> done | failed
        sa.Column("state", sa.Text, nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("not_before", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("received_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_index("inbox_state_seq", "inbox", ["state", "seq"])
    # One row per Letta agent ever bridged; last-applied Matrix values let a pass with no
    # changes make no Matrix calls.
    op.create_table(
        "agent",
        sa.Column("agent_id", sa.Text, primary_key=True),
        sa.Column("mxid", sa.Text, nullable=False, unique=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("room_id", sa.Text, nullable=True),
        # active | deleted (gone from Letta; room archived, mapping kept)
        sa.Column("state", sa.Text, nullable=False, server_default="active"),
        sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("displayname", sa.Text, nullable=True),  # last set on the puppet
        sa.Column("room_name", sa.Text, nullable=True),  # last set on the room
        sa.Column("topic", sa.Text, nullable=True),  # last set on the room
        sa.Column("in_space", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    # Every room the bridge knows: agent rooms, DMs with puppets, management rooms, archives.
    op.create_table(
        "room",
        sa.Column("room_id", sa.Text, primary_key=True),
        sa.Column("agent_id", sa.Text, nullable=True),
        # agent | dm | management | archived
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("mode", sa.Text, nullable=True),  # open | mention | off; NULL = default
        sa.Column("owner", sa.Text, nullable=True),  # the user of a management room / DM
        sa.Column("bridged_at", sa.BigInteger, nullable=False),
    )
    op.create_index("room_agent", "room", ["agent_id"])
    # Small named values: the space id, last reconcile summary, …
    op.create_table(
        "bridge_state",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    # Matrix events we posted for an inbox event (part = n-th message of the reply), so a
    # resumed event never posts the same part twice.
    op.create_table(
        "sent_event",
        sa.Column("source_event_id", sa.Text, primary_key=True),
        sa.Column("part", sa.Integer, primary_key=True),
        sa.Column("room_id", sa.Text, nullable=False),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("sent_at", sa.BigInteger, nullable=False),
    )
    # One-off notices already given (e.g. "you may not use this bridge") per user and room.
    op.create_table(
        "user_notice",
        sa.Column("room_id", sa.Text, primary_key=True),
        sa.Column("user_id", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, primary_key=True),
        sa.Column("sent_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for table in ("user_notice", "sent_event", "bridge_state", "room", "agent", "inbox"):
        op.drop_table(table)
    op.drop_table("appservice_txn")
