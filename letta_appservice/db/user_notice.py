"""The user_notice table: one-off notices already given to a user in a room."""

from __future__ import annotations

from mautrix.util.async_db import Database

from .database import now_ms


class UserNoticeStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def given(self, room_id: str, user_id: str, kind: str) -> bool:
        value = await self.db.fetchval(
            "SELECT 1 FROM user_notice WHERE room_id=$1 AND user_id=$2 AND kind=$3",
            room_id,
            user_id,
            kind,
        )
        return value is not None

    async def record(self, room_id: str, user_id: str, kind: str) -> None:
        await self.db.execute(
            "INSERT INTO user_notice (room_id, user_id, kind, sent_at) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT DO NOTHING",
            room_id,
            user_id,
            kind,
            now_ms(),
        )

    async def forget(self, room_id: str, user_id: str, kind: str) -> None:
        await self.db.execute(
            "DELETE FROM user_notice WHERE room_id=$1 AND user_id=$2 AND kind=$3",
            room_id,
            user_id,
            kind,
        )
