"""The image on a real Docker engine: built on a local Debian base with the legacy builder, then
run as the README says: first run, registration, serving a real homeserver, healthy, SIGTERM."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from ruamel.yaml import YAML

from letta_appservice.matrix.ids import agent_alias, agent_mxid
from tests.harness.config import ADMIN, SERVER_NAME, free_port
from tests.harness.docker_engine import Containers, docker, logs, state, wait_healthy
from tests.harness.matrix_user import MatrixUser
from tests.harness.observe import wait_for_alias
from tests.harness.synapse import SynapseServer

pytestmark = pytest.mark.docker

IMAGE_UID = 1000  # the image's fixed `letta` user


@asynccontextmanager
async def synapse_with(registration: Path, workdir: Path) -> AsyncIterator[str]:
    server = await SynapseServer.start(workdir, [registration], server_name=SERVER_NAME)
    try:
        yield server.url
    finally:
        await server.stop()


# Homeservers the container is proven against. Each starts with the registration the container
# wrote (homeservers read registrations only at start) and yields its URL on the host; the
# container shares the host's network. Tuwunel joins here once its binary fixture exists.
HOMESERVERS: dict[str, Callable[[Path, Path], AbstractAsyncContextManager[str]]] = {
    "synapse": synapse_with,
}


def data_dir(tmp_path: Path) -> Path:
    """The bind-mounted /data, prepared on the host as the README says: owned by uid 1000."""
    path = tmp_path / "data"
    path.mkdir()
    if os.geteuid() != IMAGE_UID:
        assert os.geteuid() == 0, "the Docker tests run as root (or uid 1000) to chown /data"
        os.chown(path, IMAGE_UID, IMAGE_UID)
    return path


def edit_config(path: Path, port: int, letta_url: str) -> None:
    """What an operator edits after the first run (round trip: the comments stay). The
    homeserver's address comes from the environment at run time, as under compose."""
    yaml = YAML()
    config = yaml.load(path.read_text())
    config["homeserver"]["domain"] = SERVER_NAME
    # Replaced at run time by LETTA_APPSERVICE_HOMESERVER_ADDRESS; -g refuses the example's.
    config["homeserver"]["address"] = "http://127.0.0.1:8008"
    config["appservice"]["address"] = f"http://127.0.0.1:{port}"
    config["appservice"]["hostname"] = "127.0.0.1"
    config["appservice"]["port"] = port
    config["letta"]["base_url"] = letta_url
    config["bridge"]["permissions"] = {SERVER_NAME: "user", ADMIN: "admin"}
    with path.open("w") as fh:  # in place: the file stays uid 1000's
        yaml.dump(config, fh)


def load_yaml(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


async def test_image_runs_as_uid_1000_with_a_data_volume_and_healthcheck(
    appservice_image: str, containers: Containers
) -> None:
    inspected = await docker("image", "inspect", "--format", "{{json .Config}}", appservice_image)
    config = json.loads(inspected.stdout)
    assert config["User"] == "letta" and "/data" in config["Volumes"]
    assert config["Healthcheck"]["Test"][:2] == ["CMD", "/opt/venv/bin/python"]
    _, result = await containers.run("--rm", appservice_image, "id", "-u")
    assert result.returncode == 0 and result.stdout.strip() == str(IMAGE_UID), result.describe()


async def test_first_run_in_a_directory_docker_created_says_how_to_fix_it(
    appservice_image: str, containers: Containers, tmp_path: Path
) -> None:
    # A missing host directory is created by the daemon, owned by root: uid 1000 cannot write.
    _, result = await containers.run(
        "--rm", "-v", f"{tmp_path / 'missing'}:/data", appservice_image
    )
    assert result.returncode == 1, result.describe()
    assert "/data is not writable by uid 1000" in result.stderr
    assert "chown 1000:1000" in result.stderr


@pytest.mark.parametrize("homeserver", sorted(HOMESERVERS))
async def test_first_run_registration_health_and_sigterm(
    homeserver: str,
    fake_letta: Any,
    appservice_image: str,
    containers: Containers,
    tmp_path: Path,
) -> None:
    data = data_dir(tmp_path)
    volume = f"{data}:/data"

    # 1. First run: the commented example config, and what to do next.
    _, first = await containers.run("--rm", "-v", volume, appservice_image)
    assert first.returncode == 0, first.describe()
    assert "bridge.permissions" in first.stdout and "run this container again" in first.stdout
    config_path = data / "config.yaml"
    assert config_path.stat().st_uid == IMAGE_UID
    assert not (data / "registration.yaml").exists()

    port = free_port()
    edit_config(config_path, port, fake_letta.url)
    agent = fake_letta.add_agent("Docker Agent")

    # 2. Second run: -g writes the registration and stores its tokens in the config.
    _, second = await containers.run("--rm", "-v", volume, appservice_image)
    assert second.returncode == 0, second.describe()
    assert "Wrote /data/registration.yaml with new tokens" in second.stdout
    registration = load_yaml(data / "registration.yaml")
    tokens = load_yaml(config_path)["appservice"]
    assert registration["url"] == f"http://127.0.0.1:{port}"
    assert registration["as_token"] == tokens["as_token"] != "generate"

    # 3. The homeserver loads the registration; the appservice serves it.
    async with HOMESERVERS[homeserver](data / "registration.yaml", tmp_path / homeserver) as url:
        name, started = await containers.run(
            "--detach",
            "--network=host",  # 127.0.0.1 is the host's: the homeserver and Letta are there
            "-v",
            volume,
            "-e",
            f"LETTA_APPSERVICE_HOMESERVER_ADDRESS={url}",
            "-e",
            f"HEALTHCHECK_URL=http://127.0.0.1:{port}/health",
            "--health-interval=2s",  # the image's check, asked more often than every 30 s
            appservice_image,
        )
        assert started.returncode == 0, started.describe()
        await wait_healthy(name)

        bot = MatrixUser(url, f"@letta:{SERVER_NAME}", registration["as_token"])
        try:
            # The homeserver reaches the container...
            pong = await bot.request("POST", "/_matrix/client/v1/appservice/letta/ping", body={})
            assert "duration_ms" in pong
            # ...and the container reaches the homeserver and Letta: the agent has its puppet.
            await wait_for_alias(bot, agent_alias("agent_{agent_id}", SERVER_NAME, agent.id))
            puppet = agent_mxid("agent_{agent_id}", SERVER_NAME, agent.id)
            profile = await bot.request("GET", f"/_matrix/client/v3/profile/{quote(puppet)}")
            assert profile["displayname"] == "Docker Agent"
        finally:
            await bot.close()

        # 4. docker stop sends SIGTERM (SIGKILL only after 60 s): a clean stop exits with 0.
        await docker("stop", "--time=60", name, timeout=180)
        stopped, output = await state(name), await logs(name)
        assert stopped["ExitCode"] == 0 and not stopped["OOMKilled"], output
        assert output.rstrip().endswith("letta_appservice: Stopped"), output
        assert "Traceback" not in output, output
