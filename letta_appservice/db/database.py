"""Database creation from the one config value, and alembic migrations to head."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import attrs
from mautrix.util.async_db import Database, UpgradeTable
from mautrix.util.async_db.aiosqlite import SQLiteDatabase
from mautrix.util.async_db.connection import LoggingConnection
from yarl import URL

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
log = logging.getLogger("letta_appservice.db")


def now_ms() -> int:
    """Wall-clock milliseconds, as every table stores times (and Matrix gives them)."""
    return int(time.time() * 1000)


@attrs.frozen
class DatabaseURL:
    """``appservice.database`` in the two dialects that read it: mautrix and SQLAlchemy."""

    kind: str  # "sqlite" or "postgres"
    mautrix: str = attrs.field(repr=False)
    sqlalchemy: str = attrs.field(repr=False)

    @classmethod
    def parse(cls, value: str, base_dir: Path | None = None) -> DatabaseURL:
        if value.startswith("sqlite:"):
            # mautrix reads sqlite:///x as /x while SQLAlchemy reads it as ./x: resolve to an
            # absolute path once and give each library its own spelling of it.
            raw = value.removeprefix("sqlite:")
            raw = "/" + raw.lstrip("/") if raw.startswith("//") else raw
            path = Path(raw).expanduser()
            path = path if path.is_absolute() else (base_dir or Path.cwd()) / path
            return cls("sqlite", f"sqlite:{path}", f"sqlite+aiosqlite:///{path}")
        parts = urlsplit(value)
        if parts.scheme in ("postgres", "postgresql"):
            return cls(
                "postgres",
                urlunsplit(parts._replace(scheme="postgres")),
                urlunsplit(parts._replace(scheme="postgresql+asyncpg")),
            )
        raise ValueError("database must be sqlite:<path> or postgres://…")


def alembic_config(url: DatabaseURL) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["sqlalchemy_url"] = url.sqlalchemy
    return cfg


def migrate(url: DatabaseURL, revision: str = "head") -> None:
    """Run alembic migrations (blocking; alembic's async env runs its own event loop)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


_URL_ENV = "LETTA_APPSERVICE_MIGRATE_URL"


async def migrate_async(url: DatabaseURL) -> None:
    """Migrate to head in a child process: alembic and SQLAlchemy cost ~30 MB of memory that
    a long-running appservice would otherwise keep for nothing after start-up."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        __name__,
        # The URL may hold a password: pass it in the environment, not on the command line.
        env={**os.environ, _URL_ENV: url.mautrix},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError("database migration failed: " + " | ".join(tail))


class _SQLiteDatabase(SQLiteDatabase):
    """mautrix's SQLite database, which leaves a transaction open when the task inside it is
    cancelled (it rolls back on Exception only): the connection then held its write lock, the
    inbox's connection got "database is locked", and every later write on it was lost when it
    closed. A connection given back inside a transaction is rolled back here."""

    @contextlib.asynccontextmanager
    async def _acquire(self) -> AsyncIterator[LoggingConnection]:
        async with super()._acquire() as conn:
            try:
                yield conn
            finally:
                if conn.wrapped.in_transaction:
                    await conn.wrapped.rollback()


def create_database(url: DatabaseURL) -> Database:
    """A mautrix Database with no upgrade table: alembic owns our schema."""
    if url.kind == "sqlite":
        # WAL with synchronous=NORMAL (as mautrix bridges run SQLite): a committed write
        # survives a crash of the process without waiting for the disk (~3.4 ms a sync here);
        # a power loss may take the last commits. PostgreSQL syncs every commit (README).
        pragmas = ["PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL"]
        return _SQLiteDatabase(
            URL(url.mautrix), UpgradeTable(), db_args={"init_commands": pragmas}, log=log
        )
    db_args = {"min_size": 1, "max_size": 10}
    return Database.create(url.mautrix, upgrade_table=None, db_args=db_args, log=log)


async def open_inbox_database(url: DatabaseURL, db: Database) -> Database:
    """The inbox's own connection on SQLite. mautrix gives SQLite one connection, and every
    statement queues for it: with 20 turns' bookkeeping in that queue, the homeserver's ack
    waited ten times longer than its own write took. WAL lets two connections take turns writing
    (busy_timeout covers the short waits). PostgreSQL has a pool: the same one serves both."""
    if url.kind != "sqlite":
        return db
    inbox_db = create_database(url)
    await inbox_db.start()
    return inbox_db


def head_revision() -> str:
    """The newest migration's id, read from the files (without importing alembic)."""
    revisions, parents = set(), set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        if m := re.search(r'^revision = "([^"]+)"', text, re.M):
            revisions.add(m.group(1))
        if m := re.search(r'^down_revision = "([^"]+)"', text, re.M):
            parents.add(m.group(1))
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"migrations must have exactly one head, found {sorted(heads)}")
    return heads.pop()


async def current_revision(db: Database) -> str | None:
    if not await db.table_exists("alembic_version"):
        return None
    return await db.fetchval("SELECT version_num FROM alembic_version")


async def open_database(
    url: DatabaseURL, *, run_migrations: bool = True, in_child: bool = True
) -> Database:
    """Open the database, migrating it to head first unless it is there already (in a child
    process by default; ``in_child=False`` for short-lived tools and storage tests)."""
    db = create_database(url)
    await db.start()
    if run_migrations and await current_revision(db) != head_revision():
        await db.stop()
        await (migrate_async(url) if in_child else asyncio.to_thread(migrate, url))
        db = create_database(url)
        await db.start()
    return db


if __name__ == "__main__":
    # The child process of migrate_async().
    logging.basicConfig(level=logging.WARNING)
    migrate(DatabaseURL.parse(os.environ[_URL_ENV]))
