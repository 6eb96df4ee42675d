"""A task cancelled inside a database transaction on SQLite (a stop in the middle of a
reconcile or a state-store update) must not leave the connection in that transaction."""

from __future__ import annotations

import asyncio
from pathlib import Path

from letta_appservice.db.database import DatabaseURL, open_database


async def test_a_transaction_cancelled_midway_is_rolled_back_and_later_writes_are_kept(
    tmp_path: Path,
) -> None:
    url = DatabaseURL.parse(f"sqlite:{tmp_path}/bridge.db")
    db = await open_database(url, in_child=False)
    inside = asyncio.Event()

    async def pass_cut_short() -> None:
        async with db.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO bridge_state (key, value) VALUES ('half', '1')")
            inside.set()
            await asyncio.sleep(3600)  # stopped here

    task = asyncio.create_task(pass_cut_short())
    await inside.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # The bridge goes on writing: on its own connection, and on another one (the inbox's).
    await db.execute("INSERT INTO bridge_state (key, value) VALUES ('after', '1')")
    other = await open_database(url, in_child=False)
    await other.execute("INSERT INTO bridge_state (key, value) VALUES ('other', '1')")
    await other.stop()
    await db.stop()

    db = await open_database(url, in_child=False)
    keys = {r["key"] for r in await db.fetch("SELECT key FROM bridge_state")}
    await db.stop()
    assert keys == {"after", "other"}
