"""What `import-legacy` checks before it adopts anything: the appservice is stopped, the
homeserver accepts our token, and (dry run) a database it may read without changing it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from mautrix.api import Method, Path
from mautrix.appservice import AppServiceAPI
from mautrix.errors import MatrixConnectionError, MatrixRequestError
from mautrix.util.async_db import Database

from ..db.database import (
    DatabaseURL,
    create_database,
    current_revision,
    head_revision,
    open_database,
)


class ImportAborted(Exception):
    """The import cannot start (homeserver down, appservice running, …); nothing was done."""


async def refuse_if_running(http: aiohttp.ClientSession, config: Any) -> None:
    """The running appservice would reconcile while we adopt: two writers of the same rows."""
    host = config.appservice.hostname
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{host}:{config.appservice.port}/health"
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=3)) as resp:
            running = resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return
    if running:
        raise ImportAborted(f"the appservice is running ({url} answered): stop it first")


async def check_homeserver(api: AppServiceAPI, address: str) -> None:
    try:
        await api.request(Method.GET, Path.v3.account.whoami)
    except MatrixConnectionError as e:
        raise ImportAborted(f"cannot reach the homeserver at {address}: {e}") from None
    except MatrixRequestError as e:
        raise ImportAborted(
            f"the homeserver at {address} refused the appservice ({e.errcode}: {e.message}); "
            "load the registration in it and restart it first"
        ) from None


def _exists(path: str) -> bool:
    return os.path.exists(path)


@contextlib.asynccontextmanager
async def import_database(url: DatabaseURL, dry_run: bool) -> AsyncIterator[Database]:
    """The bridge database; for a dry run it is neither created nor migrated."""
    db: Database | None
    try:
        if not dry_run:
            db = await open_database(url, in_child=False)
        elif url.kind == "sqlite" and not _exists(url.mautrix.removeprefix("sqlite:")):
            db = None
        else:
            db = create_database(url)
            await db.start()
    except OSError as e:
        raise ImportAborted(f"cannot open the database: {e.strerror or e}") from None
    if db is not None and dry_run:
        revision = await current_revision(db)
        if revision is None:
            await db.stop()
            db = None
        elif revision != head_revision():
            await db.stop()
            raise ImportAborted("the database has an older schema: run `db upgrade` first")
    if db is not None:
        try:
            yield db
        finally:
            await db.stop()
        return
    with tempfile.TemporaryDirectory() as tmp:
        empty = await open_database(DatabaseURL.parse(f"sqlite:{tmp}/dry-run.db"), in_child=False)
        try:
            yield empty
        finally:
            await empty.stop()
