"""The PostgreSQL server the tests and benchmarks use: `LETTA_APPSERVICE_TEST_PG` (set by
`scripts/postgres.sh`, which test.sh sources), a URL whose role may create databases."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg

DEFAULT_DSN = "postgres://letta_test:letta_test@127.0.0.1:5432/postgres"


def admin_dsn() -> str:
    return os.environ.get("LETTA_APPSERVICE_TEST_PG", DEFAULT_DSN)


def database_url(name: str) -> str:
    """The admin URL pointed at database `name`."""
    return urlunsplit(urlsplit(admin_dsn())._replace(path=f"/{name}"))


@contextlib.asynccontextmanager
async def pg_database(prefix: str = "la_test") -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_dsn())
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        yield database_url(name)
    finally:
        await drop_database(conn, name)


async def drop_database(conn: asyncpg.Connection, name: str) -> None:
    """Drop database ``name`` once its last session has gone (an autovacuum worker after a
    busy test too: ending it takes a privilege the test role lacks), and close ``conn``."""
    try:
        for _ in range(150):
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except (asyncpg.ObjectInUseError, asyncpg.InsufficientPrivilegeError):
                await asyncio.sleep(0.2)
    finally:
        await conn.close()
