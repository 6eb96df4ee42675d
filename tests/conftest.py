"""Shared fixtures: a real Synapse (session), databases on SQLite and PostgreSQL, the fake Letta
server and running appservice instances."""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import attrs
import pytest
import pytest_asyncio

from letta_appservice.app import App
from letta_appservice.config import Config, merge_sections, parse_config
from letta_appservice.registration import build_registration, write_registration
from tests.harness.synapse import SynapseServer

SERVER_NAME = "test.local"
PG_ADMIN_DSN = "postgres://postgres@127.0.0.1:5432/postgres"
ADMIN = f"@admin:{SERVER_NAME}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@attrs.define
class Instance:
    """An appservice identity Synapse knows from the start (its registration is loaded)."""

    id: str
    bot_localpart: str
    username_template: str
    space_name: str
    port: int = attrs.field(factory=free_port)
    as_token: str = attrs.field(factory=lambda: secrets.token_hex(24))
    hs_token: str = attrs.field(factory=lambda: secrets.token_hex(24))

    def config_data(self, homeserver: str, database: str, letta_url: str) -> dict[str, Any]:
        return {
            "homeserver": {"address": homeserver, "domain": SERVER_NAME},
            "appservice": {
                "id": self.id,
                "address": f"http://127.0.0.1:{self.port}",
                "hostname": "127.0.0.1",
                "port": self.port,
                "bot_localpart": self.bot_localpart,
                "as_token": self.as_token,
                "hs_token": self.hs_token,
                "database": database,
            },
            "letta": {"base_url": letta_url, "sync_interval": 3600},
            "bridge": {
                "username_template": self.username_template,
                "space_name": self.space_name,
                "permissions": {SERVER_NAME: "user", ADMIN: "admin"},
            },
        }


INSTANCES = {
    "letta": Instance("letta", "letta", "agent_{agent_id}", "Letta Agents"),
    "lab": Instance("lab", "lab", "lab_agent_{agent_id}", "Lab Agents"),
}


# --- PostgreSQL and SQLite -----------------------------------------------------------------


def _ensure_postgres() -> None:
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
    except OSError:
        version = next(Path("/etc/postgresql").iterdir()).name
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], check=True
        )


@contextlib.asynccontextmanager
async def pg_database() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    _ensure_postgres()
    name = f"la_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        yield f"postgres://postgres@127.0.0.1:5432/{name}"
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


@pytest_asyncio.fixture
async def postgres_url() -> AsyncIterator[str]:
    async with pg_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:{tmp_path / 'letta-appservice.db'}"


@pytest_asyncio.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Runs the test once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:{tmp_path / 'letta-appservice.db'}"
    else:
        async with pg_database() as url:
            yield url


# --- Synapse, Letta, the appservice --------------------------------------------------------


def write_registrations(workdir: Path) -> list[Path]:
    """The registration of every test instance, as the homeserver loads them."""
    paths = []
    for inst in INSTANCES.values():
        config = parse_config(inst.config_data("http://unused", "sqlite:unused.db", "http://x"))
        path = workdir / f"registration-{inst.id}.yaml"
        write_registration(build_registration(config), path)
        paths.append(path)
    return paths


@pytest_asyncio.fixture(scope="session")
async def synapse(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SynapseServer]:
    workdir = tmp_path_factory.mktemp("synapse")
    paths = write_registrations(workdir)
    server = await SynapseServer.start(workdir / "hs", paths, server_name=SERVER_NAME)
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture(scope="session")
async def admin_user(synapse: SynapseServer):
    """@admin:test.local: a bridge admin (per the test configs), registered once."""
    user = await synapse.register_user("admin", admin=True, displayname="Admin")
    yield user
    await user.close()


@pytest_asyncio.fixture
async def fake_letta() -> AsyncIterator[Any]:
    from tests.harness.fake_letta import FakeLetta

    server = FakeLetta()
    server.url = await server.start()
    try:
        yield server
    finally:
        await server.stop()


# --- A real Letta server (tests marked real_letta) -------------------------------------------


@pytest_asyncio.fixture(scope="session")
async def real_letta() -> AsyncIterator[Any]:
    """The real Letta 0.16.8 server (tests/harness/real_letta.py), installed on first use.
    Outside CI a machine that cannot install it skips these tests; in CI they fail."""
    import os

    from tests.harness.real_letta import RealLetta

    try:
        server = await RealLetta.start()
    except Exception as exc:
        if os.environ.get("CI"):
            pytest.fail(f"could not start the real Letta server: {exc}")
        pytest.skip(f"could not start the real Letta server: {exc}")
    try:
        yield server
    finally:
        await server.stop()


# --- end of the real Letta block ----------------------------------------------------------


AppFactory = Callable[..., Awaitable[App]]


def make_config(
    synapse: SynapseServer, database: str, letta_url: str, instance: str = "letta", **over: Any
) -> Config:
    data = INSTANCES[instance].config_data(synapse.url, database, letta_url)
    return parse_config(merge_sections(data, over), env={})


@pytest_asyncio.fixture
async def start_app(
    synapse: SynapseServer, fake_letta: Any, sqlite_url: str
) -> AsyncIterator[AppFactory]:
    """Start appservice instances against the session's Synapse; all stopped at the end.
    ``await start_app(database=..., instance="letta", letta={...}, bridge={...})``.
    A test that passes ``database=database_url`` must list ``database_url`` BEFORE
    ``start_app`` in its arguments, so the database outlives the app at teardown."""
    apps: list[App] = []

    async def start(
        database: str | None = None, instance: str = "letta", ready: bool = True, **over: Any
    ) -> App:
        config = make_config(synapse, database or sqlite_url, fake_letta.url, instance, **over)
        app = App(config)
        apps.append(app)
        await app.start()
        if ready:
            await app.wait_ready(timeout=60)
        return app

    try:
        yield start
    finally:
        for app in reversed(apps):
            await app.stop()
