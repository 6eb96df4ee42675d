"""Deployment files: the Tuwunel compose stack, the Dockerfile and the container entrypoint."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.tuwunel.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
REQUIRED_VARIABLES = (
    "MATRIX_SERVER_NAME",
    "TUWUNEL_REGISTRATION_TOKEN",
    "POSTGRES_PASSWORD",
    "LETTA_BASE_URL",
)


def load_yaml(text: str) -> Any:
    return YAML(typ="safe").load(text)


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def docker_compose(env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (apt-get install -y docker-compose)")
    # A bare environment: variables from the caller's shell would override the env file.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(env_file.parent)}
    command = [binary, "--env-file", str(env_file), "-f", str(COMPOSE), *args]
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def write_env(path: Path, values: dict[str, str]) -> Path:
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    return path


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE.read_text())


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    assert name in compose["services"], f"compose has no {name!r} service"
    return compose["services"][name]


def mounts(svc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Short-syntax volumes as (source, target, mode)."""
    parsed = []
    for volume in svc.get("volumes", []):
        source, target, *mode = volume.split(":")
        parsed.append((source, target, mode[0] if mode else "rw"))
    return parsed


# --- a real Compose implementation accepts the file -------------------------------------------


def test_compose_file_is_valid_with_the_example_env() -> None:
    result = docker_compose(ENV_EXAMPLE, "config", "-q")
    assert result.returncode == 0, result.stderr
    assert "is not set" not in result.stderr, result.stderr  # .env.example covers every value


@pytest.mark.parametrize("missing", REQUIRED_VARIABLES)
def test_compose_refuses_to_render_without_a_required_value(tmp_path: Path, missing: str) -> None:
    values = {k: v for k, v in env_example().items() if k != missing}
    result = docker_compose(write_env(tmp_path / "env", values), "config", "-q")
    assert result.returncode != 0
    assert missing in result.stderr


def test_resolved_config_wires_the_appservice_to_its_servers(tmp_path: Path) -> None:
    values = env_example() | {"MATRIX_SERVER_NAME": "chat.test", "POSTGRES_PASSWORD": "pw123"}
    result = docker_compose(write_env(tmp_path / "env", values), "config")
    assert result.returncode == 0, result.stderr
    resolved = load_yaml(result.stdout)["services"]
    appservice = resolved["letta-appservice"]["environment"]
    assert appservice["LETTA_APPSERVICE_HOMESERVER_DOMAIN"] == "chat.test"
    assert resolved["tuwunel"]["environment"]["TUWUNEL_SERVER_NAME"] == "chat.test"
    assert appservice["LETTA_APPSERVICE_DATABASE"] == (
        "postgresql://letta_appservice:pw123@postgres:5432/letta_appservice"
    )
    assert resolved["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pw123"


# --- what the issue requires, read from the file ---------------------------------------------


def test_tuwunel_is_pinned_to_1_9_0_or_newer(compose: dict[str, Any]) -> None:
    image = service(compose, "tuwunel")["image"]
    repository, _, tag = image.rpartition(":")
    assert repository == "ghcr.io/matrix-construct/tuwunel"
    match = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)", tag)
    assert match, f"tuwunel must be pinned to a release tag, not {tag!r}"
    assert tuple(int(part) for part in match.groups()) >= (1, 9, 0)


def test_servers_have_healthchecks(compose: dict[str, Any]) -> None:
    tuwunel = service(compose, "tuwunel")["healthcheck"]
    assert tuwunel["test"] == ["CMD", "tuwunel", "--health-check"]
    postgres = service(compose, "postgres")["healthcheck"]["test"]
    assert postgres[0] in ("CMD", "CMD-SHELL") and "pg_isready" in " ".join(postgres)


def test_appservice_waits_for_healthy_servers(compose: dict[str, Any]) -> None:
    depends_on = service(compose, "letta-appservice")["depends_on"]
    assert depends_on["tuwunel"] == {"condition": "service_healthy"}
    assert depends_on["postgres"] == {"condition": "service_healthy"}


def test_registration_reaches_tuwunel_read_only_and_apart_from_the_config(
    compose: dict[str, Any],
) -> None:
    tuwunel = service(compose, "tuwunel")
    appservice = service(compose, "letta-appservice")
    appservice_dir = tuwunel["environment"]["TUWUNEL_APPSERVICE_DIR"]
    [(source, _, mode)] = [m for m in mounts(tuwunel) if m[1] == appservice_dir]
    assert mode == "ro"
    # The appservice writes its registration into the same host directory...
    [(_, target, _)] = [m for m in mounts(appservice) if m[0] == source]
    registration = PurePosixPath(appservice["environment"]["REGISTRATION_PATH"])
    assert registration.parent == PurePosixPath(target)
    assert registration.suffix in (".yaml", ".yml")  # Tuwunel only loads *.yaml / *.yml
    # ...and its config lives elsewhere: Tuwunel would parse config.yaml as a registration.
    config = PurePosixPath(appservice["environment"]["CONFIG_PATH"])
    assert config.parent != PurePosixPath(target)


def test_tuwunel_settings_for_a_container(compose: dict[str, Any]) -> None:
    env = service(compose, "tuwunel")["environment"]
    assert env["TUWUNEL_ADDRESS"] == "0.0.0.0"
    assert str(env["TUWUNEL_DNS_PASSTHRU_APPSERVICES"]).lower() == "true"
    assert env["TUWUNEL_DATABASE_PATH"] in [m[1] for m in mounts(service(compose, "tuwunel"))]


def test_no_open_registration(compose: dict[str, Any]) -> None:
    env = service(compose, "tuwunel")["environment"]
    assert not any("OPEN_REGISTRATION" in key for key in env)
    if str(env.get("TUWUNEL_ALLOW_REGISTRATION", "false")).lower() == "true":
        assert env["TUWUNEL_REGISTRATION_TOKEN"].startswith("${TUWUNEL_REGISTRATION_TOKEN:?")


def test_appservice_and_homeserver_reach_each_other(compose: dict[str, Any]) -> None:
    tuwunel = service(compose, "tuwunel")["environment"]
    env = service(compose, "letta-appservice")["environment"]
    assert (
        env["LETTA_APPSERVICE_HOMESERVER_ADDRESS"] == f"http://tuwunel:{tuwunel['TUWUNEL_PORT']}"
    )
    assert env["LETTA_APPSERVICE_ADDRESS"] == "http://letta-appservice:29330"
    assert env["LETTA_APPSERVICE_HOSTNAME"] == "0.0.0.0"


def test_tokens_come_from_the_generated_config(compose: dict[str, Any]) -> None:
    # -g writes both tokens into config.yaml and the registration at once; tokens in .env could
    # later drift from the registration Tuwunel loaded.
    env = service(compose, "letta-appservice")["environment"]
    assert "LETTA_APPSERVICE_AS_TOKEN" not in env and "LETTA_APPSERVICE_HS_TOKEN" not in env


def test_element_is_optional(compose: dict[str, Any]) -> None:
    assert service(compose, "element")["profiles"] == ["element"]
    for name in ("tuwunel", "postgres", "letta-appservice"):
        assert "profiles" not in service(compose, name)


# --- Dockerfile and entrypoint ----------------------------------------------------------------


def dockerfile_instructions() -> list[str]:
    """Instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def dockerfile_stages() -> list[list[str]]:
    """Instructions grouped by stage (the global ARGs before the first FROM left out)."""
    stages: list[list[str]] = []
    for line in dockerfile_instructions():
        if line.upper().startswith("FROM "):
            stages.append([])
        elif not stages:
            assert line.upper().startswith("ARG "), "only ARG may come before the first FROM"
            continue
        stages[-1].append(line)
    return stages


def test_dockerfile_is_multi_stage_on_slim_python_3_11() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    # One base for both stages, python:3.11-slim unless the build says otherwise (the Docker
    # tests build on a local Debian base: no registry there).
    assert "ARG BASE_IMAGE=python:3.11-slim" in dockerfile_instructions()
    assert all(re.match(r"FROM \$\{BASE_IMAGE\}(\s|$)", stage[0]) for stage in stages)
    builder = re.fullmatch(r"FROM \S+ AS (\S+)", stages[0][0], re.IGNORECASE)
    assert builder and any(f"--from={builder.group(1)}" in i for i in stages[-1])
    assert any(re.search(r"pip install \.(\s|$)", i) for i in stages[0])


def test_runtime_stage_is_non_root_with_data_volume_and_healthcheck() -> None:
    final = dockerfile_stages()[-1]
    users = [i.split()[1] for i in final if i.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(re.fullmatch(r'VOLUME \[?"?/data"?\]?', i) for i in final)
    [healthcheck] = [i for i in final if i.upper().startswith("HEALTHCHECK ")]
    assert "urllib" in healthcheck and "curl" not in healthcheck
    assert any("HEALTHCHECK_URL=http://127.0.0.1:29330/health" in i for i in final)
    assert any(i.startswith("ENTRYPOINT") and "docker-entrypoint.sh" in i for i in final)


def test_dockerignore_keeps_secrets_and_data_out() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    for pattern in (".env", "data", ".venv", ".git", "config.yaml", "registration.yaml"):
        assert pattern in ignored


STUB = """#!/bin/sh
echo "$*" >> "$STUB_LOG"
config="$2" registration="$4"
case " $* " in
  *" -g "*) echo "as_token: x" >> "$config"; echo "id: letta" > "$registration" ;;
  *) if [ ! -f "$config" ]; then echo "# example" > "$config"; exit 0; fi; echo running ;;
esac
"""


class Entrypoint:
    """Runs docker/entrypoint.sh with a stub letta-appservice that logs its arguments."""

    def __init__(self, tmp_path: Path) -> None:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        stub = bin_dir / "letta-appservice"
        stub.write_text(STUB)
        stub.chmod(0o755)
        (tmp_path / "data").mkdir()
        (tmp_path / "registration").mkdir()
        self.log = tmp_path / "calls.log"
        self.config = str(tmp_path / "data" / "config.yaml")
        self.registration = str(tmp_path / "registration" / "letta.yaml")
        self.env = {
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "STUB_LOG": str(self.log),
            "CONFIG_PATH": self.config,
            "REGISTRATION_PATH": self.registration,
        }

    def __call__(self, *args: str, **overrides: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", str(ENTRYPOINT), *args],
            env=self.env | overrides,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def entrypoint(tmp_path: Path) -> Entrypoint:
    return Entrypoint(tmp_path)


def test_entrypoint_first_run_config_then_registration_then_run(entrypoint: Entrypoint) -> None:
    config, registration = entrypoint.config, entrypoint.registration
    first = entrypoint()
    assert first.returncode == 0 and "Next: set the keys listed above" in first.stdout
    assert Path(config).exists() and not Path(registration).exists()

    second = entrypoint()
    assert second.returncode == 0 and "Next: the homeserver reads registrations" in second.stdout
    assert Path(registration).exists() and "as_token" in Path(config).read_text()

    third = entrypoint()
    assert third.returncode == 0 and third.stdout.strip() == "running"
    assert entrypoint.calls() == [
        f"-c {config} -r {registration}",
        f"-c {config} -r {registration} -g",
        f"-c {config} -r {registration}",
    ]


def test_entrypoint_passes_options_and_subcommands_through(entrypoint: Entrypoint) -> None:
    # No first-run steps when told what to do, even without a config.
    assert entrypoint("--tuwunel-toml").returncode == 0
    assert entrypoint("db", "upgrade").returncode == 0
    paths = f"-c {entrypoint.config} -r {entrypoint.registration}"
    assert entrypoint.calls() == [f"{paths} --tuwunel-toml", f"{paths} db upgrade"]


def test_entrypoint_runs_other_commands_as_is(entrypoint: Entrypoint) -> None:
    result = entrypoint("echo", "hello")
    assert result.stdout == "hello\n" and entrypoint.calls() == []


def test_entrypoint_explains_an_unusable_data_directory(
    entrypoint: Entrypoint, tmp_path: Path
) -> None:
    result = entrypoint(CONFIG_PATH=str(tmp_path / "missing" / "config.yaml"))
    assert result.returncode == 1
    assert "is not writable" in result.stderr and "chown" in result.stderr
    assert entrypoint.calls() == []
