"""Tool approvals decided in Matrix: the cards waiting for (or showing) a person's decision,
stored so that a decision after a bridge restart still reaches Letta.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "approval",
        sa.Column("card_event_id", sa.Text, primary_key=True),
        sa.Column("room_id", sa.Text, nullable=False),
        sa.Column("agent_id", sa.Text, nullable=False),
        sa.Column("asker", sa.Text, nullable=False),  # who sent the message that led here
        sa.Column("relation", sa.Text, nullable=False),  # JSON: where the turn's answer goes
        sa.Column("calls", sa.Text, nullable=False),  # JSON list of {id, name, arguments}
        sa.Column("card", sa.Text, nullable=False),  # JSON part: the card as first posted
        sa.Column("created_at", sa.BigInteger, nullable=False),
        # approve, deny or elsewhere (decided in Letta); NULL while it waits
        sa.Column("decision", sa.Text, nullable=True),
        sa.Column("decided_by", sa.Text, nullable=True),
        sa.Column("decision_event_id", sa.Text, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("decided_at", sa.BigInteger, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("approval")
