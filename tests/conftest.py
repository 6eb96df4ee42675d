"""Shared fixtures: a real Synapse (session), databases on SQLite and PostgreSQL, the fake Letta
server and running appservice instances. Helpers live in tests/harness."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from letta_appservice.db.database import DatabaseURL, open_database
from letta_appservice.db.inbox import InboxStore
from tests.harness.apps import Apps, Bridge
from tests.harness.config import SERVER_NAME, write_registrations
from tests.harness.docker_engine import CommandError, Containers, in_ci, require_docker
from tests.harness.docker_images import ImageError, build_appservice_image, ensure_base_image
from tests.harness.endpoint import Endpoint, endpoint_on
from tests.harness.fake_letta import FakeLetta
from tests.harness.homeserver import Homeserver, start_homeserver
from tests.harness.matrix_user import MatrixUser
from tests.harness.postgres import pg_database
from tests.harness.real_letta import LettaAdmin, RealLetta
from tests.harness.real_scene import Scene
from tests.harness.routing import Routing, routing_setup
from tests.harness.stand_ins import build_postgres_image, build_tuwunel_image
from tests.harness.tuwunel import tuwunel_bin

REPO = Path(__file__).resolve().parent.parent


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


@pytest_asyncio.fixture
async def store(database_url: str) -> AsyncIterator[InboxStore]:
    """The inbox store on each database (SQLite, PostgreSQL)."""
    db = await open_database(DatabaseURL.parse(database_url), in_child=False)
    yield InboxStore(db)
    await db.stop()


# --- Synapse, Letta, the appservice --------------------------------------------------------


@pytest_asyncio.fixture(scope="session")
async def homeserver(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Homeserver]:
    """The session's homeserver with both test appservices registered: Tuwunel when
    TUWUNEL_BIN names a binary, else Synapse."""
    workdir = tmp_path_factory.mktemp("homeserver")
    paths = write_registrations(workdir)
    server = await start_homeserver(workdir / "hs", paths, SERVER_NAME)
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture(scope="session")
async def admin_user(homeserver: Homeserver) -> AsyncIterator[MatrixUser]:
    """@admin:test.local: a bridge admin (per the test configs), registered once."""
    user = await homeserver.register_user("admin", admin=True, displayname="Admin")
    yield user
    await user.close()


@pytest_asyncio.fixture
async def fake_letta() -> AsyncIterator[FakeLetta]:
    server = FakeLetta()
    server.url = await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture
async def apps(
    homeserver: Homeserver, fake_letta: FakeLetta, sqlite_url: str
) -> AsyncIterator[Apps]:
    """Appservice instances on the session's Synapse and the test's fake Letta (database: the
    test's SQLite unless given), all stopped at the end:
    ``await apps.start(database_url, instance="lab", letta={...}, bridge={...})``.
    A test that passes ``database_url`` must list it BEFORE ``apps`` in its arguments, so the
    database outlives the apps at teardown."""
    async with Apps(homeserver.url, fake_letta.url, sqlite_url) as started:
        yield started


# --- A real Letta server (tests marked real_letta) -------------------------------------------


@pytest_asyncio.fixture(scope="session")
async def real_letta() -> AsyncIterator[RealLetta]:
    """The real Letta 0.16.8 server (tests/harness/real_letta.py), installed on first use.
    Outside CI a machine that cannot install it skips these tests; in CI they fail."""
    try:
        server = await RealLetta.start()
    except Exception as exc:
        if in_ci():
            pytest.fail(f"could not start the real Letta server: {exc}")
        pytest.skip(f"could not start the real Letta server: {exc}")
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture
async def letta(real_letta: RealLetta) -> AsyncIterator[LettaAdmin]:
    """Letta's own API, as a person uses it (ADE, SDK)."""
    admin = LettaAdmin(real_letta.url)
    try:
        yield admin
    finally:
        await admin.close()


@pytest_asyncio.fixture
async def scene(
    homeserver: Homeserver, real_letta: RealLetta, letta: LettaAdmin, admin_user: MatrixUser
) -> AsyncIterator[Scene]:
    """One test's bridge on the real Letta (tests/harness/real_scene.py)."""
    apps = Apps(homeserver.url, real_letta.url)
    try:
        yield Scene(apps, letta, admin_user)
    finally:
        await apps.close()


# --- end of the real Letta block ----------------------------------------------------------


@pytest.fixture
def bridge() -> Bridge:
    """A puppet namespace of the test's own: ``apps.start(namespace=bridge)``."""
    return Bridge()


# --- Docker --------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="session")
async def docker_base_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A Debian bookworm base made with debootstrap (no registry to pull one from), cached in
    the engine by its recipe: minutes on the first run, nothing after."""
    await require_docker()
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


@pytest.fixture(scope="session")
def tuwunel_binary() -> Path:
    """The Tuwunel binary TUWUNEL_BIN names; the tests that need one skip without it."""
    binary = tuwunel_bin()
    if binary is None:
        pytest.skip("TUWUNEL_BIN names no Tuwunel binary")
    return Path(binary)


@pytest_asyncio.fixture(scope="session")
async def tuwunel_image(
    docker_base_image: str, tuwunel_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """That binary packaged by docker/tuwunel.Dockerfile with the legacy builder."""
    try:
        return await build_tuwunel_image(
            docker_base_image, tuwunel_binary, tmp_path_factory.mktemp("tuwunel-image")
        )
    except (ImageError, CommandError) as e:
        pytest.fail(str(e), pytrace=False)


@pytest_asyncio.fixture(scope="session")
async def postgres_image(docker_base_image: str) -> str:
    """The PostgreSQL stand-in (Debian's server, the official image's variables)."""
    try:
        return await build_postgres_image(docker_base_image)
    except (ImageError, CommandError) as e:
        pytest.fail(str(e), pytrace=False)


@pytest_asyncio.fixture
async def containers() -> AsyncIterator[Containers]:
    """Containers of one test, force-removed when it ends, whatever happened."""
    await require_docker()
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


@pytest_asyncio.fixture
async def endpoint(database_url: str) -> AsyncIterator[Endpoint]:
    """The transaction endpoint on an inbox in the test's database (tests/harness/endpoint.py)."""
    async with endpoint_on(database_url) as e:
        yield e
