"""Alembic environment: async engine for aiosqlite/asyncpg; mautrix's mx_* tables excluded."""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig
from pathlib import Path

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = config.attributes.get("sqlalchemy_url")
    if url:
        return url
    # Run by hand (`alembic upgrade head`): same sources as the appservice itself.
    from letta_appservice.config import load_config
    from letta_appservice.db.database import DatabaseURL

    value = os.environ.get("LETTA_APPSERVICE_DATABASE") or (
        load_config(Path("config.yaml"), need_tokens=False).appservice.database
    )
    return DatabaseURL.parse(value).sqlalchemy


def include_name(name: str | None, type_: str, _parent_names: object) -> bool:
    # mautrix's state store owns mx_* tables (and a Postgres enum 'membership').
    return not (type_ == "table" and name is not None and name.startswith("mx_"))


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=None,
        include_name=include_name,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = create_async_engine(_url(), poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=None, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(run_async_migrations())
