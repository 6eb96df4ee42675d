"""A real Letta 0.16.8 REST server for tests, on loopback and offline.

Three processes, each in its own process group: the deterministic fake LLM
(``letta_real/fake_llm.py``), a private PostgreSQL 16 + pgvector (from the ``pgserver`` wheel)
and ``letta server``. What takes long is cached under ``~/.cache/letta-appservice`` (or
``$LETTA_APPSERVICE_CACHE``), each piece built in a temporary directory and renamed into place
only when complete, so an interrupted build is never taken as ready:

- ``letta-<pins sha>/``: the virtualenv, installed with pip from the pinned requirements;
- ``letta-<version>-alembic/``: Letta's alembic migrations (only its sdist ships them);
- ``letta-<pins sha>-pgdata/``: a database cluster with the schema migrated, copied per run.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from .config import free_port
from .processes import spawn, stop, tail, wait_until_answers

VERSION = "0.16.8"
KIT = Path(__file__).resolve().parent / "letta_real"
PINS = KIT / f"requirements-letta-{VERSION}.txt"
# The fake LLM as Letta lists it, and an embedding model it accepts (served by the fake too).
MODEL = "openai-proxy/fake-echo"
EMBEDDING = "openai/text-embedding-3-small"
START_TIMEOUT = 300.0  # letta's start-up takes 10-15 s on an idle 2-core machine
STOP_GRACE = 15.0


def cache_root() -> Path:
    env = os.environ.get("LETTA_APPSERVICE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "letta-appservice"


def pins_key() -> str:
    return hashlib.sha256(PINS.read_bytes()).hexdigest()[:16]


def _run(argv: list[str], log: Path, what: str, **kw: Any) -> None:
    with log.open("ab") as out:
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False, **kw)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}); {log}:\n{tail(log)}")


def _built(target: Path, build: Callable[[Path], None]) -> Path:
    """``target``, built by ``build(tmp)`` into a sibling temporary directory and renamed into
    place once complete. A lock keeps two test runs from building the same thing at once."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_dir():
            return target
        for stale in target.parent.glob(f".{target.name}.*"):  # left by an interrupted build
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            build(tmp)
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _python311() -> str:
    # The pins are for Python 3.11 (the test venv may be newer).
    return shutil.which("python3.11") or sys.executable


def _make_venv(tmp: Path) -> None:
    # Scripts in bin/ would keep tmp's path in their shebangs: everything runs as `python -m`.
    log = tmp / "install.log"
    _run([_python311(), "-m", "venv", str(tmp)], log, "creating the Letta virtualenv")
    pip = [str(tmp / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    # The pins are a complete freeze: no resolver run needed (it backtracks for minutes).
    _run([*pip, "install", "-q", "--no-deps", "-r", str(PINS)], log, "pip install of Letta")


def _fetch_alembic(tmp: Path) -> None:
    # The wheel has no migrations; the sdist does. Only alembic/ and alembic.ini are kept.
    dl = tmp / "sdist"
    argv = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps"]
    argv += ["--no-binary", ":all:", f"letta=={VERSION}", "-d", str(dl)]
    _run(argv, tmp / "download.log", "pip download of the Letta sdist")
    [archive] = dl.glob("letta-*.tar.gz")
    prefix = f"letta-{VERSION}/"
    with tarfile.open(archive) as tar:
        members = [
            m
            for m in tar.getmembers()
            if m.name.startswith(prefix + "alembic/") or m.name == prefix + "alembic.ini"
        ]
        for member in members:
            member.name = member.name.removeprefix(prefix)
        tar.extractall(tmp, members=members, filter="data")
    shutil.rmtree(dl)
    (tmp / "download.log").unlink()


class RealLetta:
    """The three processes of one real Letta server; ``url`` is Letta's base URL."""

    def __init__(self, venv: Path, alembic: Path, workdir: Path) -> None:
        self.venv, self.alembic, self.workdir = venv, alembic, workdir
        self.python = venv / "bin" / "python"
        self.letta_port, self.llm_port, self.pg_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.letta_port}"
        self.llm_url = f"http://127.0.0.1:{self.llm_port}"
        self.start_seconds = 0.0  # of the last start of the Letta server itself
        # PostgreSQL refuses to run as root: then it runs as an unprivileged user.
        self._pg_user: str | None = None
        if os.geteuid() == 0:
            self._pg_user = os.environ.get("LETTA_PG_OS_USER") or _unprivileged_user()
        self._llm: subprocess.Popen[bytes] | None = None
        self._pg: subprocess.Popen[bytes] | None = None
        self._letta: subprocess.Popen[bytes] | None = None

    @classmethod
    async def start(cls, workdir: Path | None = None) -> RealLetta:
        """Install what is missing from the cache, then start everything and wait for Letta."""
        root = cache_root()
        # Independent downloads: at the same time (the sdist's pip comes from the test venv).
        venv, alembic = await asyncio.gather(
            asyncio.to_thread(_built, root / f"letta-{pins_key()}", _make_venv),
            asyncio.to_thread(_built, root / f"letta-{VERSION}-alembic", _fetch_alembic),
        )
        # Outside pytest's tmp (mode 700 under root): the PostgreSQL user must reach it.
        work = workdir or Path(tempfile.mkdtemp(prefix="letta-real-"))
        work.chmod(0o755)
        server = cls(venv, alembic, work)
        try:
            server._spawn_llm()
            await server._start_postgres(root / f"letta-{pins_key()}-pgdata")
            await server.start_letta()
        except BaseException:
            await server.stop()
            raise
        return server

    # -- processes ---------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        return spawn(argv, self.workdir / f"{name}.log", **kw)

    def _spawn_llm(self) -> None:
        argv = [sys.executable, str(KIT / "fake_llm.py"), str(self.llm_port)]
        self._llm = self._spawn("fake_llm", argv)

    def _as_pg(self) -> dict[str, Any]:
        if self._pg_user is None:
            return {}
        entry = pwd.getpwnam(self._pg_user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _pg_bin(self) -> Path:
        [site] = self.venv.glob("lib/python3*/site-packages")
        if self._pg_user is None:
            return site / "pgserver" / "pginstall" / "bin"
        # The cache may sit in root's home, which the PostgreSQL user cannot enter: copy the
        # binaries, with the libraries their rpath ($ORIGIN/../../../pgserver.libs) expects.
        local = self.workdir / "pg"
        skip = shutil.ignore_patterns("include")
        pginstall = local / "pgserver" / "pginstall"
        shutil.copytree(site / "pgserver" / "pginstall", pginstall, ignore=skip)
        shutil.copytree(site / "pgserver.libs", local / "pgserver.libs")
        return pginstall / "bin"

    async def _start_postgres(self, template: Path) -> None:
        """A cluster copied from the migrated template, or (first run) a new one that
        becomes the template."""
        pgdata, sock = self.workdir / "pgdata", self.workdir / "pgsock"
        sock.mkdir()
        pg_bin = await asyncio.to_thread(self._pg_bin)
        fresh = not template.is_dir()
        if fresh:
            pgdata.mkdir(mode=0o700)
            self._chown(pgdata, sock)
            argv = [str(pg_bin / "initdb"), "-D", str(pgdata), "-U", "letta", "--auth=trust"]
            argv += ["-E", "UTF8", "--locale=C"]
            log = self.workdir / "initdb.log"
            await asyncio.to_thread(_run, argv, log, "initdb", **self._as_pg())
        else:
            await asyncio.to_thread(shutil.copytree, template, pgdata, symlinks=True)
            self._chown(pgdata, sock)
        self._spawn_postgres(pg_bin, pgdata, sock)
        await self._wait_postgres()
        if not fresh:
            return
        await self._migrate()
        # The template is a cleanly shut down cluster: stop, copy, start again.
        await stop(self._pg, signal.SIGINT, STOP_GRACE)
        copy = lambda tmp: shutil.copytree(pgdata, tmp, symlinks=True, dirs_exist_ok=True)  # noqa: E731
        await asyncio.to_thread(_built, template, copy)
        self._spawn_postgres(pg_bin, pgdata, sock)
        await self._wait_postgres()

    def _chown(self, *paths: Path) -> None:
        if self._pg_user is None:
            return
        for path in paths:
            shutil.chown(path, self._pg_user, self._pg_user)
            for sub in path.rglob("*"):
                shutil.chown(sub, self._pg_user, self._pg_user)

    def _spawn_postgres(self, pg_bin: Path, pgdata: Path, sock: Path) -> None:
        argv = [str(pg_bin / "postgres"), "-D", str(pgdata), "-p", str(self.pg_port)]
        argv += ["-k", str(sock), "-c", "listen_addresses=127.0.0.1"]
        argv += ["-c", "max_connections=200"]
        # A throw-away database: durability only costs time on a busy disk.
        argv += ["-c", "fsync=off", "-c", "synchronous_commit=off"]
        argv += ["-c", "full_page_writes=off"]
        self._pg = self._spawn("postgres", argv, **self._as_pg())

    async def _wait_postgres(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            assert self._pg is not None
            if self._pg.poll() is not None:
                log = self.workdir / "postgres.log"
                raise RuntimeError(f"postgres exited:\n{tail(log)}")
            try:
                conn = await asyncpg.connect(self._pg_dsn("postgres"), timeout=5)
            except (OSError, asyncpg.PostgresError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
                continue
            await conn.close()
            return

    def _pg_dsn(self, database: str) -> str:
        return f"postgresql://letta@127.0.0.1:{self.pg_port}/{database}"

    async def _migrate(self) -> None:
        conn = await asyncpg.connect(self._pg_dsn("postgres"))
        try:
            await conn.execute("CREATE DATABASE letta")
        finally:
            await conn.close()
        conn = await asyncpg.connect(self._pg_dsn("letta"))
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        finally:
            await conn.close()
        # alembic's env.py turns the URI into a pg8000 one, which rejects ?sslmode.
        env = {**os.environ, "LETTA_PG_URI": self._pg_dsn("letta"), "HOME": str(self._home())}
        argv = [str(self.python), "-m", "alembic", "upgrade", "head"]
        log = self.workdir / "migrate.log"
        await asyncio.to_thread(_run, argv, log, "letta's migrations", env=env, cwd=self.alembic)

    def _home(self) -> Path:
        home = self.workdir / "home"
        home.mkdir(exist_ok=True)
        return home

    async def start_letta(self) -> None:
        """Start the Letta server (again, after stop_letta) and wait until it answers."""
        began = time.monotonic()
        env = {
            **os.environ,
            "HOME": str(self._home()),  # letta keeps ~/.letta (logs, tool sandboxes) there
            "LETTA_PG_URI": f"postgresql://letta@127.0.0.1:{self.pg_port}/letta?sslmode=disable",
            # Without pooling, a new agent's first message stalled for a minute (kit README).
            "LETTA_DISABLE_SQLALCHEMY_POOLING": "false",
            "OPENAI_API_KEY": "sk-fake-local",
            "OPENAI_BASE_URL": f"{self.llm_url}/v1",
        }
        # = the `letta server` script, whose shebang would name the venv's build directory
        argv = [str(self.python), "-c", "from letta.main import app; app()", "server"]
        argv += ["--host", "127.0.0.1", "--port", str(self.letta_port)]
        # cwd: letta's settings also read ./.env
        self._letta = self._spawn("letta", argv, env=env, cwd=self.workdir)
        await self._wait_healthy()
        self.start_seconds = time.monotonic() - began

    async def _wait_healthy(self) -> None:
        assert self._letta is not None
        await wait_until_answers(
            f"{self.url}/v1/health/",
            self._letta,
            "letta server",
            lambda: tail(self.workdir / "letta.log"),
            START_TIMEOUT,
            interval=0.25,
        )

    async def stop_letta(self, sig: int = signal.SIGTERM) -> None:
        """Stop the Letta server alone (SIGKILL: as if it crashed); the database stays."""
        await stop(self._letta, sig, STOP_GRACE)
        self._letta = None

    async def restart(self) -> None:
        await self.stop_letta()
        await self.start_letta()

    async def stop(self) -> None:
        """Stop everything (Letta first, PostgreSQL with a fast shutdown) and remove the
        work directory."""
        await self.stop_letta()
        await stop(self._llm, grace=STOP_GRACE)
        await stop(self._pg, signal.SIGINT, STOP_GRACE)
        self._llm = self._pg = None
        shutil.rmtree(self.workdir, ignore_errors=True)


def _unprivileged_user() -> str:
    try:
        pwd.getpwnam("postgres")
        return "postgres"
    except KeyError:
        return "nobody"


class LettaAdmin:
    """What a person does in Letta's own API (ADE, SDK): create, rename, delete agents, give
    them tools. Sends the header of Letta's v1 SDK, as its current clients do."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._http = aiohttp.ClientSession(
            headers={"X-Stainless-Package-Version": "1.10.3"},
            timeout=aiohttp.ClientTimeout(total=120),
        )

    async def close(self) -> None:
        await self._http.close()

    async def call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        async with self._http.request(
            method, self.url + path, json=body, params=params or None
        ) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                raise RuntimeError(f"Letta {method} {path}: {resp.status} {data}")
            return data

    async def create_agent(self, name: str, tags: list[str] | None = None) -> str:
        body = {
            "name": name,
            "model": MODEL,
            "embedding": EMBEDDING,
            # Compaction would otherwise use an OpenAI model (the internet).
            "compaction_settings": {"model": MODEL},
            "tags": tags or [],
            "memory_blocks": [{"label": "persona", "value": "A deterministic test agent."}],
        }
        return str((await self.call("POST", "/v1/agents/", body))["id"])

    async def rename(self, agent_id: str, name: str) -> None:
        await self.call("PATCH", f"/v1/agents/{agent_id}", {"name": name})

    async def delete(self, agent_id: str) -> None:
        await self.call("DELETE", f"/v1/agents/{agent_id}")

    async def tools(self, agent_id: str) -> list[str]:
        tools = await self.call("GET", f"/v1/agents/{agent_id}/tools")
        return [t["name"] for t in tools]

    async def add_tool(self, agent_id: str, source: str) -> str:
        """Register a Python tool (a ``def`` with a docstring), give it to the agent: its name."""
        tool = await self.call(
            "POST", "/v1/tools/", {"source_code": source, "source_type": "python"}
        )
        await self.call("PATCH", f"/v1/agents/{agent_id}/tools/attach/{tool['id']}")
        return str(tool["name"])

    async def require_approval(self, agent_id: str, tool: str) -> None:
        """From now on the agent waits for a person's approval before running ``tool``."""
        await self.call(
            "PATCH", f"/v1/agents/{agent_id}/tools/approval/{tool}", {"requires_approval": True}
        )

    async def pending_approval(self, agent_id: str) -> Any:
        """The approval request the agent waits on, in one of its conversations (with its
        ``conversation_id``) or its own history; None when it waits on nothing."""
        for conversation in await self.call("GET", "/v1/conversations/", agent_id=agent_id):
            path = f"/v1/conversations/{conversation['id']}/messages"
            newest = await self.call("GET", path, limit=1, order="desc")
            if newest and newest[0].get("message_type") == "approval_request_message":
                return {**newest[0], "conversation_id": conversation["id"]}
        agent = await self.call("GET", f"/v1/agents/{agent_id}", include="agent.pending_approval")
        return agent.get("pending_approval")
