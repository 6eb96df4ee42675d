"""Shared fixtures: a real Synapse (session), databases on SQLite and PostgreSQL, the fake Letta
server and running appservice instances."""

from __future__ import annotations

import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_asyncio

from letta_appservice.app import App
from letta_appservice.config import Config, merge_sections, parse_config
from letta_appservice.matrix.registration import build_registration, write_registration
from tests.harness.docker_engine import CommandError, Containers, engine_problem, in_ci
from tests.harness.docker_images import ImageError, build_appservice_image, ensure_base_image
from tests.harness.postgres import pg_database
from tests.harness.routing import Routing, routing_setup
from tests.harness.synapse import SynapseServer

REPO = Path(__file__).resolve().parent.parent
SERVER_NAME = "test.local"
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


# --- Docker --------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="session")
async def docker_engine() -> None:
    """A reachable Docker Engine. Without one the Docker tests are skipped, except in CI
    (CI=true), where they must run and fail instead."""
    problem = await engine_problem()
    if problem is not None:
        if in_ci():
            pytest.fail(f"CI=true but the Docker tests cannot run: {problem}", pytrace=False)
        pytest.skip(problem)


@pytest_asyncio.fixture(scope="session")
async def docker_base_image(docker_engine: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A Debian bookworm base made with debootstrap (no registry to pull one from), cached in
    the engine by its recipe: minutes on the first run, nothing after."""
    try:
        return await ensure_base_image(tmp_path_factory.mktemp("docker-base"))
    except (ImageError, CommandError) as e:
        pytest.fail(f"could not make the Docker tests' base image: {e}", pytrace=False)


@pytest_asyncio.fixture(scope="session")
async def appservice_image(
    docker_base_image: str, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """The repository's Dockerfile built on that base with the legacy builder; its image id."""
    workdir = tmp_path_factory.mktemp("docker-build")
    try:
        return await build_appservice_image(docker_base_image, REPO, workdir)
    except (ImageError, CommandError) as e:
        pytest.fail(str(e), pytrace=False)


@pytest_asyncio.fixture
async def containers(docker_engine: None) -> AsyncIterator[Containers]:
    """Containers of one test, force-removed when it ends, whatever happened."""
    tracked = Containers()
    try:
        yield tracked
    finally:
        await tracked.remove_all()


@pytest_asyncio.fixture
async def routing(tmp_path: Path) -> AsyncIterator[Routing]:
    """A router and memberships on SQLite with no homeserver (tests/harness/routing.py)."""
    async with routing_setup(tmp_path) as r:
        yield r
