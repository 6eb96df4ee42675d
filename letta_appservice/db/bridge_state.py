"""The bridge_state table: small named values (the space id, the last reconcile, …)."""

from __future__ import annotations

import json
from typing import Any

from mautrix.util.async_db import Connection, Database


class BridgeState:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, key: str, default: Any = None) -> Any:
        value = await self.db.fetchval("SELECT value FROM bridge_state WHERE key=$1", key)
        return default if value is None else json.loads(value)

    async def set(self, key: str, value: Any, conn: Connection | None = None) -> None:
        """Store ``value`` (JSON); ``conn``: inside that connection's transaction."""
        await (conn or self.db).execute(
            "INSERT INTO bridge_state (key, value) VALUES ($1, $2)"
            " ON CONFLICT (key) DO UPDATE SET value=excluded.value",
            key,
            json.dumps(value),
        )

    async def delete(self, key: str) -> None:
        await self.db.execute("DELETE FROM bridge_state WHERE key=$1", key)
