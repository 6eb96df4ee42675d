"""Database creation from the one config value, and alembic migrations to head."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import attrs
from alembic import command
from alembic.config import Config as AlembicConfig
from mautrix.util.async_db import Database

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
log = logging.getLogger("letta_appservice.db")


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
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["sqlalchemy_url"] = url.sqlalchemy
    return cfg


def migrate(url: DatabaseURL, revision: str = "head") -> None:
    """Run alembic migrations (blocking; alembic's async env runs its own event loop)."""
    command.upgrade(alembic_config(url), revision)


async def migrate_async(url: DatabaseURL, revision: str = "head") -> None:
    await asyncio.to_thread(migrate, url, revision)


def create_database(url: DatabaseURL) -> Database:
    """A mautrix Database with no upgrade table: alembic owns our schema."""
    db_args: dict = {"min_size": 1, "max_size": 10}
    if url.kind == "sqlite":
        # FULL: a transaction is on disk before we answer the homeserver 200.
        db_args = {"init_commands": ["PRAGMA journal_mode = WAL", "PRAGMA synchronous = FULL"]}
    return Database.create(url.mautrix, upgrade_table=None, db_args=db_args, log=log)


async def open_database(url: DatabaseURL, *, run_migrations: bool = True) -> Database:
    if run_migrations:
        await migrate_async(url)
    db = create_database(url)
    await db.start()
    return db
