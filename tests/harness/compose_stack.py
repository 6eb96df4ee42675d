"""docker-compose.tuwunel.yml on the real engine, run the way README's "Deploy on Tuwunel" says,
in a directory of its own: the shipped compose file copied next to `.env` (from `.env.example`)
and `data/`, plus the test overrides of `tests/compose/` (local images, the fake Letta; for
Tuwunel releases older than the pinned one, registration through tuwunel.toml and an HTTP health
check). Every call is `docker-compose -p <project> -f … <command>` in that directory, so what
the test does is what an operator types, and tear-down removes the project's containers,
network and volumes."""

from __future__ import annotations

import os
import secrets
import shutil
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import attrs
from ruamel.yaml import YAML

from tests.harness.config import free_port
from tests.harness.docker_engine import Result, docker, run, wait_healthy

REPO = Path(__file__).resolve().parent.parent.parent
COMPOSE_FILE = "docker-compose.tuwunel.yml"
OVERRIDES = REPO / "tests" / "compose"
SERVER_NAME = "compose.local"
IMAGE_UID = 1000  # the appservice image's user; data/ belongs to it (README: chown 1000:1000)
SERVICES = ("tuwunel", "postgres", "letta-appservice", "fake-letta")
COMPOSE_TIMEOUT = 900.0  # two busy cores; never asserted on


@attrs.frozen
class Images:
    tuwunel: str
    postgres: str
    appservice: str


def override_files(version: tuple[int, int, int]) -> list[str]:
    """The overrides a Tuwunel release needs: appservice_dir came with 1.6.0, `--health-check`
    with 1.8.2 (the shipped file pins a release that has both)."""
    files = ["stand-ins.yml"]
    if version < (1, 6, 0):
        files.append("tuwunel-toml-registration.yml")
    if version < (1, 8, 2):
        files.append("tuwunel-http-health.yml")
    return files


class Stack:
    def __init__(self, workdir: Path, images: Images, version: tuple[int, int, int]) -> None:
        self.dir = workdir
        self.images = images
        self.project = f"lettacompose{uuid.uuid4().hex[:10]}"
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.registration_token = secrets.token_hex(16)
        self.files = [COMPOSE_FILE, *override_files(version)]
        self.data = workdir / "data"
        self.config_path = self.data / "letta-appservice" / "config.yaml"

    @property
    def toml_registration(self) -> bool:
        return "tuwunel-toml-registration.yml" in self.files

    def prepare(self) -> None:
        """README's first lines: the compose file and `.env` from `.env.example` with our
        values, `data/letta-appservice` and `data/registration` owned by uid 1000."""
        shutil.copy(REPO / COMPOSE_FILE, self.dir / COMPOSE_FILE)
        for name in self.files[1:]:
            shutil.copy(OVERRIDES / name, self.dir / name)
        values = {
            "MATRIX_SERVER_NAME": SERVER_NAME,
            "TUWUNEL_REGISTRATION_TOKEN": self.registration_token,
            "POSTGRES_PASSWORD": secrets.token_hex(24),
            "LETTA_BASE_URL": "http://fake-letta:8283",
            "TUWUNEL_HTTP_BIND": f"127.0.0.1:{self.http_port}",
            "TEST_TUWUNEL_IMAGE": self.images.tuwunel,
            "TEST_POSTGRES_IMAGE": self.images.postgres,
            "TEST_APPSERVICE_IMAGE": self.images.appservice,
            "TEST_REPO": str(REPO),
        }
        lines = []
        for line in (REPO / ".env.example").read_text().splitlines():
            key = line.partition("=")[0].strip()
            lines.append(f"{key}={values.pop(key)}" if key in values else line)
        lines += [f"{key}={value}" for key, value in values.items()]
        env = self.dir / ".env"
        env.write_text("\n".join(lines) + "\n")
        env.chmod(0o600)
        for sub in ("letta-appservice", "registration"):
            (self.data / sub).mkdir(parents=True)
        for path in (self.data, self.data / "letta-appservice", self.data / "registration"):
            os.chown(path, IMAGE_UID, IMAGE_UID)
        if self.toml_registration:
            (self.data / "tuwunel").mkdir()

    async def compose(self, *args: str, timeout: float = COMPOSE_TIMEOUT) -> Result:
        files = [arg for name in self.files for arg in ("-f", name)]
        command = ["docker-compose", "-p", self.project, *files, *args]
        return await run(*command, cwd=self.dir, timeout=timeout, check=False)

    def edit_config(self, permissions: dict[str, str]) -> None:
        """What the operator edits after the first run (the rest comes from the compose
        file's environment); in place, so the file stays uid 1000's."""
        yaml = YAML()
        config = yaml.load(self.config_path.read_text())
        config["bridge"]["permissions"] = permissions
        with self.config_path.open("w") as fh:
            yaml.dump(config, fh)

    async def container(self, service: str) -> str:
        result = await self.compose("ps", "-q", service)
        container = result.stdout.strip()
        assert container, f"no container for {service}:\n{result.describe()}"
        return container

    async def wait_healthy(self, *services: str, timeout: float = COMPOSE_TIMEOUT) -> None:
        for service in services:
            try:
                await wait_healthy(await self.container(service), timeout=timeout)
            except AssertionError as e:
                logs = await self.compose("logs", "--no-color", "--tail=60")
                raise AssertionError(f"{service}: {e}\n{logs.stdout}") from None

    async def published(self, service: str, port: int) -> str:
        """The host address a service's port is published on (``127.0.0.1:49153``)."""
        result = await self.compose("port", service, str(port))
        return result.stdout.strip()

    async def down(self) -> Result:
        return await self.compose("down", "--volumes", "--remove-orphans", "--timeout", "60")

    async def leftovers(self) -> dict[str, list[str]]:
        """Whatever of the project the engine still has: containers, volumes, networks."""
        label = f"label=com.docker.compose.project={self.project}"
        found: dict[str, list[str]] = {}
        for kind, args in (
            ("containers", ("ps", "--all", "--quiet")),
            ("volumes", ("volume", "ls", "--quiet")),
            ("networks", ("network", "ls", "--quiet")),
        ):
            result = await docker(*args, "--filter", label)
            found[kind] = result.stdout.split()
        return {kind: ids for kind, ids in found.items() if ids}


async def fake_letta_agents(address: str) -> list[dict[str, Any]]:
    """The fake Letta's agents, asked on its published port."""
    async with aiohttp.ClientSession() as http, http.get(f"http://{address}/v1/agents/") as resp:
        agents: list[dict[str, Any]] = await resp.json()
    return agents
