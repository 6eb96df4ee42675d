"""Reconciler: find an agent by its room quickly (drift events arrive per room).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("agent_room", "agent", ["room_id"])


def downgrade() -> None:
    op.drop_index("agent_room", "agent")
