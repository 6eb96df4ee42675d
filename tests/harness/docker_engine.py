"""The Docker CLI from async tests: commands with timeouts, containers that never outlive a test.

Everything goes through the `docker` command (no Python SDK), so what the tests do is what a
person types. Calls are async: the fake Letta and other aiohttp servers of a test share the
event loop and must keep answering while Docker works.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest

# Seconds for short CLI calls; builds and runs pass their own. The machine may be busy.
CLI_TIMEOUT = 120.0
CONTAINER_LABEL = "org.letta-appservice.test"


def in_ci() -> bool:
    """CI must run the Docker tests: a missing engine there is a failure, not a skip."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


@attrs.frozen
class Result:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def describe(self, lines: int = 60) -> str:
        """The command and the tail of its output, for failure messages."""
        output = "\n".join((self.stdout + self.stderr).splitlines()[-lines:])
        return f"$ {' '.join(self.args)}\n(exit {self.returncode})\n{output}"


class CommandError(RuntimeError):
    def __init__(self, result: Result) -> None:
        super().__init__(result.describe())
        self.result = result


async def run(
    *args: str,
    timeout: float = CLI_TIMEOUT,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Result:
    """Run a command; on timeout it is killed and the call fails with what it printed."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        err += f"\n[killed after {timeout:.0f}s]".encode()
        raise CommandError(Result(args, -9, out.decode(errors="replace"), err.decode())) from None
    result = Result(args, proc.returncode or 0, out.decode(errors="replace"), err.decode())
    if check and result.returncode != 0:
        raise CommandError(result)
    return result


async def docker(*args: str, **kwargs: Any) -> Result:
    return await run("docker", *args, **kwargs)


async def engine_problem() -> str | None:
    """Why the Docker tests cannot run here, or None when an engine answers."""
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    result = await docker("version", "--format", "{{.Server.Version}}", check=False)
    if result.returncode != 0:
        return f"no Docker Engine is reachable:\n{result.describe(10)}"
    return None


async def image_id(reference: str) -> str | None:
    result = await docker("image", "inspect", "--format", "{{.Id}}", reference, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


class Containers:
    """Containers started by one test, all force-removed at its end (also on failure)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def new_name(self) -> str:
        name = f"letta-appservice-test-{uuid.uuid4().hex[:10]}"
        self.names.append(name)
        return name

    async def run(self, *args: str, timeout: float = 300) -> tuple[str, Result]:
        """`docker run <args>` under a fresh, tracked name; returns (name, result)."""
        name = self.new_name()
        result = await docker(
            "run", "--name", name, "--label", CONTAINER_LABEL, *args, timeout=timeout, check=False
        )
        return name, result

    async def remove_all(self) -> None:
        for name in self.names:
            await docker("rm", "--force", "--volumes", name, check=False)
        self.names.clear()


async def state(name: str) -> dict[str, Any]:
    result = await docker("inspect", "--format", "{{json .State}}", name)
    data: dict[str, Any] = json.loads(result.stdout)
    return data


async def logs(name: str) -> str:
    result = await docker("logs", name, check=False)
    return result.stdout + result.stderr


async def wait_healthy(name: str, timeout: float = 300) -> None:
    """Wait until Docker's HEALTHCHECK reports healthy; fail early if the container exits."""
    deadline = time.monotonic() + timeout
    while True:
        current = await state(name)
        health = (current.get("Health") or {}).get("Status")
        if health == "healthy":
            return
        if not current.get("Running"):
            raise AssertionError(
                f"{name} exited with {current.get('ExitCode')} before it was healthy:\n"
                f"{await logs(name)}"
            )
        if time.monotonic() > deadline:
            probes = json.dumps((current.get("Health") or {}).get("Log", [])[-3:], indent=1)
            raise AssertionError(
                f"{name} is still {health!r} after {timeout:.0f}s; last probes: {probes}\n"
                f"{await logs(name)}"
            )
        await asyncio.sleep(1)


async def require_docker() -> None:
    """A reachable Docker Engine. Without one the Docker tests are skipped, except in CI
    (CI=true), where they must run and fail instead."""
    problem = await engine_problem()
    if problem is not None:
        if in_ci():
            pytest.fail(f"CI=true but the Docker tests cannot run: {problem}", pytrace=False)
        pytest.skip(problem)
