"""The Tuwunel deployment on a real engine that can pull nothing: Tuwunel's image made from a
binary with the legacy builder (README's fallback for old engines), and, with TUWUNEL_BIN,
`docker-compose -f docker-compose.tuwunel.yml` brought up as README's "Deploy on Tuwunel" says,
healthy, a person talking to an agent through it, and nothing left after `down`."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import aiohttp
import pytest

from letta_appservice.matrix.ids import agent_alias, agent_mxid
from tests.harness.compose_stack import (
    SERVER_NAME,
    SERVICES,
    Images,
    Stack,
    fake_letta_agents,
)
from tests.harness.docker_engine import Containers, docker
from tests.harness.events import reply_to
from tests.harness.matrix_user import MatrixUser
from tests.harness.observe import wait_for_alias
from tests.harness.stand_ins import REPO, build_tuwunel_image, tuwunel_version
from tests.harness.tuwunel import register_with_token

pytestmark = pytest.mark.docker
TEMPLATE = "agent_{agent_id}"  # the example config's username template


async def test_the_tuwunel_image_packages_a_binary_with_the_legacy_builder(
    docker_base_image: str, containers: Containers, tmp_path: Path
) -> None:
    # README's commands for old engines, on a stand-in binary: CI has no Tuwunel.
    readme = (REPO / "README.md").read_text()
    assert "DOCKER_BUILDKIT=0 docker build -f docker/tuwunel.Dockerfile" in readme
    binary = tmp_path / "tuwunel"
    binary.write_text('#!/bin/sh\necho "tuwunel 0.0.0-stub $*"\n')
    binary.chmod(0o755)
    tag = await build_tuwunel_image(docker_base_image, binary, tmp_path)
    try:
        inspected = await docker("image", "inspect", "--format", "{{json .Config}}", tag)
        config = json.loads(inspected.stdout)
        assert config["Entrypoint"] == ["tuwunel"]  # as upstream's image: arguments go to it
        assert set(config["ExposedPorts"]) == {"8008/tcp", "8448/tcp"}
        _, version = await containers.run("--rm", tag, "--version")
        assert version.stdout.strip() == "tuwunel 0.0.0-stub --version", version.describe()
        _, layout = await containers.run(
            "--rm", "--entrypoint", "sh", tag, "-c", "test -d /var/lib/tuwunel && which tuwunel"
        )
        assert layout.stdout.strip() == "/usr/bin/tuwunel", layout.describe()
    finally:
        await docker("image", "rm", tag, check=False)


@pytest.mark.tuwunel
async def test_the_compose_stack_comes_up_healthy_and_an_agent_answers(
    tuwunel_binary: Path,
    tuwunel_image: str,
    postgres_image: str,
    appservice_image: str,
    tmp_path: Path,
) -> None:
    # Compose wants an image name: this session's build, under a tag of this test's own.
    appservice = f"letta-appservice-test-compose:{uuid.uuid4().hex[:10]}"
    await docker("tag", appservice_image, appservice)
    images = Images(tuwunel_image, postgres_image, appservice)
    stack = Stack(tmp_path, images, tuwunel_version(str(tuwunel_binary)))
    stack.prepare()
    admin: MatrixUser | None = None
    try:
        # First run: 1. the config (then bridge.permissions), 2. the registration.
        first = await stack.compose("run", "--rm", "--no-deps", "letta-appservice")
        assert first.returncode == 0 and "bridge.permissions" in first.stdout, first.describe()
        stack.edit_config({SERVER_NAME: "user"})
        second = await stack.compose("run", "--rm", "--no-deps", "letta-appservice")
        assert second.returncode == 0, second.describe()
        assert (stack.data / "registration" / "letta-appservice.yaml").is_file()
        if stack.toml_registration:  # README, way 2: the block in tuwunel.toml
            toml = await stack.compose(
                "run", "--rm", "--no-deps", "-T", "letta-appservice", "--tuwunel-toml"
            )
            assert toml.returncode == 0 and "[global.appservice.letta]" in toml.stdout
            (stack.data / "tuwunel" / "tuwunel.toml").write_text(toml.stdout)

        # 3. Everything up and healthy.
        up = await stack.compose("up", "-d")
        assert up.returncode == 0, up.describe()
        await stack.wait_healthy(*SERVICES)

        # The first user (README: "The first admin user"), made a bridge admin, restart.
        async with aiohttp.ClientSession() as http:
            admin = await register_with_token(
                http, stack.url, stack.registration_token, "admin", displayname="Admin"
            )
        stack.edit_config({SERVER_NAME: "user", f"@admin:{SERVER_NAME}": "admin"})
        restarted = await stack.compose("restart", "letta-appservice")
        assert restarted.returncode == 0, restarted.describe()
        await stack.wait_healthy("letta-appservice")

        # The agent of the fake Letta has its room; the admin is invited, talks, is answered.
        [agent] = await fake_letta_agents(await stack.published("fake-letta", 8283))
        room = await wait_for_alias(admin, agent_alias(TEMPLATE, SERVER_NAME, agent["id"]))
        await admin.wait_for_invite(room, timeout=300)
        await admin.join(room)
        asked = await admin.send_text(room, "hello through compose")
        puppet = agent_mxid(TEMPLATE, SERVER_NAME, agent["id"])
        reply = await admin.wait_for_event(room, reply_to(puppet, asked), timeout=180)
        assert reply["content"]["body"].endswith("hello through compose")
    finally:
        if admin is not None:
            await admin.close()
        down = await stack.down()
        await docker("image", "rm", appservice, check=False)  # the tag only
    assert down.returncode == 0, down.describe()
    assert await stack.leftovers() == {}
