"""Rooms a person invited puppets into are kind 'invited' (they were 'dm', group rooms too).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE room SET kind = 'invited' WHERE kind = 'dm'")


def downgrade() -> None:
    op.execute("UPDATE room SET kind = 'dm' WHERE kind = 'invited'")
