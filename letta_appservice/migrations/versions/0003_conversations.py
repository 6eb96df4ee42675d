"""Conversations: replies remembered per agent, finished Letta turns, puppets invited to rooms.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _sent_event(with_agent: bool) -> None:
    columns = [
        sa.Column("source_event_id", sa.Text, primary_key=True),
        sa.Column("part", sa.Integer, primary_key=True),
        sa.Column("room_id", sa.Text, nullable=False),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("sent_at", sa.BigInteger, nullable=False),
    ]
    if with_agent:
        # One person's message can be answered by several agents (a room with two puppets):
        # each agent's parts are numbered on their own. '' = posted by the bridge bot.
        columns.insert(1, sa.Column("agent_id", sa.Text, primary_key=True, server_default=""))
    op.create_table("sent_event", *columns)


def upgrade() -> None:
    # Nothing wrote sent_event before this revision: recreating it is the simplest way to
    # widen its primary key on SQLite as well as PostgreSQL.
    op.drop_table("sent_event")
    _sent_event(with_agent=True)
    # A finished Letta turn, as the parts to post: a resumed event posts the missing parts of
    # this answer instead of asking Letta again.
    op.create_table(
        "letta_turn",
        sa.Column("source_event_id", sa.Text, primary_key=True),
        sa.Column("agent_id", sa.Text, primary_key=True),
        sa.Column("room_id", sa.Text, nullable=False),
        sa.Column("parts", sa.Text, nullable=False),  # JSON list of {msgtype, body, html}
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    # Agents whose puppet a person invited into a room (DMs and group rooms): the room routes
    # to each of them.
    op.create_table(
        "invited_agent",
        sa.Column("room_id", sa.Text, primary_key=True),
        sa.Column("agent_id", sa.Text, primary_key=True),
        sa.Column("added_at", sa.BigInteger, nullable=False),
    )
    op.create_index("invited_agent_agent", "invited_agent", ["agent_id"])


def downgrade() -> None:
    op.drop_index("invited_agent_agent", "invited_agent")
    op.drop_table("invited_agent")
    op.drop_table("letta_turn")
    op.drop_table("sent_event")
    _sent_event(with_agent=False)
