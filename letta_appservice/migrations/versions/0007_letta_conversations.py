"""Per-room context: the Letta conversation (Conversations API, Letta 0.16.2+) that holds a
Matrix room's (or thread's) exchange with an agent.

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "letta_conversation",
        sa.Column("agent_id", sa.Text, primary_key=True),
        sa.Column("room_id", sa.Text, primary_key=True),
        # The thread's root event id, or '' for the room outside threads.
        sa.Column("thread_id", sa.Text, primary_key=True, server_default=""),
        sa.Column("conversation_id", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("letta_conversation")
