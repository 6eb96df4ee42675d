"""Agents' Matrix tools: per agent the hash of its tool secret, an admin's switch and the tool
version attached in Letta; the direct chats agents opened with people through a tool.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_tool",
        sa.Column("agent_id", sa.Text, primary_key=True),
        sa.Column("secret_hash", sa.Text, nullable=True),  # sha256 hex; the secret is in Letta
        sa.Column("enabled", sa.Boolean, nullable=True),  # an admin's switch; NULL = config
        sa.Column("synced", sa.Text, nullable=True),  # tool version set up in Letta; NULL = none
    )
    op.create_table(
        "agent_dm",
        sa.Column("agent_id", sa.Text, primary_key=True),
        sa.Column("user_id", sa.Text, primary_key=True),
        sa.Column("room_id", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("agent_dm")
    op.drop_table("agent_tool")
