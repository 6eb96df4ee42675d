"""The operator's steps after the config: registration and tokens (3.), run.sh and the hints
(4.), db upgrade and import-legacy against a stopped homeserver (6.), Docker's first run (7.),
logging (9.) and the declared dependencies (10.)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from letta_appservice.cli.logs import setup_logging
from letta_appservice.config import LoggingConfig
from letta_appservice.matrix.registration import tuwunel_toml
from tests.harness.cli import REPO, TOKENS, cli, configured, one_line


def tokens_of(path: Path) -> tuple[str, str]:
    data = YAML(typ="safe").load(path)
    section = data.get("appservice", data)
    return section["as_token"], section["hs_token"]


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


# --- 3. tokens and file modes -------------------------------------------------------------------


def test_g_keeps_tokens_and_rotates_only_when_asked(tmp_path: Path) -> None:
    config, reg = configured(tmp_path), tmp_path / "registration.yaml"
    config.chmod(0o644)  # as an editor or a copy may leave it
    first = cli("-c", str(config), "-r", str(reg), "-g", LETTA_APPSERVICE_COMMAND="./run.sh")
    assert first.returncode == 0, first.stderr
    assert "with new tokens" in first.stdout and "--tuwunel-toml" in first.stdout
    assert f"./run.sh -c {config} -r {reg}" in first.stdout  # the -c and -r given
    text = config.read_text()
    assert "# Tokens shared with the homeserver." in text  # comments survive the rewrite
    assert mode(config) == 0o600 and mode(reg) == 0o600  # tightened, created owner-only
    tokens = tokens_of(reg)
    assert tokens == tokens_of(config) and "generate" not in tokens

    again = cli("-c", str(config), "-r", str(reg), "-g")
    assert again.returncode == 0 and "(unchanged)" in again.stdout
    assert "--rotate-tokens" in again.stdout
    assert tokens_of(reg) == tokens == tokens_of(config)

    rotated = cli("-c", str(config), "-r", str(reg), "-g", "--rotate-tokens")
    assert rotated.returncode == 0 and "NEW tokens" in rotated.stdout
    assert "restart the appservice" in rotated.stdout
    new = tokens_of(reg)
    assert new == tokens_of(config) and set(new).isdisjoint(tokens)
    assert mode(config) == 0o600


def test_a_stricter_mode_is_kept_and_env_tokens_are_never_rotated(tmp_path: Path) -> None:
    config, reg = configured(tmp_path, {"appservice": TOKENS}), tmp_path / "reg.yaml"
    config.chmod(0o400)
    proc = cli("-c", str(config), "-r", str(reg), "-g", "--rotate-tokens")
    assert proc.returncode == 0 and mode(config) == 0o400
    env = {"LETTA_APPSERVICE_AS_TOKEN": "e" * 32, "LETTA_APPSERVICE_HS_TOKEN": "f" * 32}
    proc = cli("-c", str(config), "-r", str(reg), "-g", "--rotate-tokens", **env)
    assert proc.returncode == 2 and "LETTA_APPSERVICE_AS_TOKEN" in one_line(proc.stderr)
    proc = cli("-c", str(config), "-r", str(reg), "-g", **env)
    assert proc.returncode == 0 and tokens_of(reg) == ("e" * 32, "f" * 32)
    assert "--rotate-tokens" in one_line(cli("--rotate-tokens", "-c", str(config)).stderr)


def test_tuwunel_toml_escapes_every_string_as_toml_wants() -> None:
    registration = {
        "id": "letta",
        "url": "http://as:1/😀\"'\\",
        "as_token": "a",
        "hs_token": "b",
        "sender_localpart": "letta",
        "rate_limited": False,
        "receive_ephemeral": False,
        "namespaces": {
            "users": [{"exclusive": True, "regex": r"^@agent_[a-z0-9_]+:test\.local$"}],
            "aliases": [],
            "rooms": [],
        },
    }
    block = tomllib.loads(tuwunel_toml(registration))["global"]["appservice"]["letta"]
    assert block["url"] == registration["url"]
    assert block["users"] == registration["namespaces"]["users"] and "namespaces" not in block


def test_tuwunel_toml_from_the_cli(tmp_path: Path) -> None:
    config = configured(tmp_path, {"appservice": TOKENS})
    proc = cli("-c", str(config), "--tuwunel-toml")
    assert proc.returncode == 0 and proc.stderr == ""
    block = tomllib.loads(proc.stdout)["global"]["appservice"]["letta"]
    assert block["users"][0]["regex"] == r"^@agent_[a-z0-9_]+:test\.local$"


# --- 4. run.sh works where the operator stands --------------------------------------------------


def test_run_sh_keeps_the_working_directory_and_names_itself(tmp_path: Path) -> None:
    """run.sh in a copy of the checkout whose venv step is a no-op and whose program is ours."""
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "run.sh", checkout / "run.sh")
    (checkout / "scripts" / "venv.sh").write_text("true\n")
    (checkout / ".venv" / "bin").mkdir(parents=True)
    program = checkout / ".venv" / "bin" / "letta-appservice"
    program.write_text(f'#!/bin/sh\nexec {sys.executable} -m letta_appservice "$@"\n')
    program.chmod(0o755)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETTA_")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        ["bash", str(checkout / "run.sh"), "-c", "myconf.yaml"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (elsewhere / "myconf.yaml").exists() and not (checkout / "myconf.yaml").exists()
    assert str(elsewhere / "myconf.yaml") in proc.stdout
    assert proc.stdout.strip().endswith(f"{checkout}/run.sh -c myconf.yaml -g")


# --- 6. db upgrade, import-legacy ---------------------------------------------------------------


def test_db_upgrade_needs_no_tokens_and_prints_one_line(tmp_path: Path) -> None:
    database = tmp_path / "bridge.db"
    config = configured(tmp_path, {"appservice": {"database": f"sqlite:{database}"}})
    assert "generate" in config.read_text()
    proc = cli("-c", str(config), "db", "upgrade")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no alembic INFO lines
    assert one_line(proc.stdout).startswith(f"Database sqlite:{database} is at the latest schema")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def legacy_files(tmp_path: Path) -> list[str]:
    agent = "agent-597b5756-2915-4560-ba6b-91005f085166"
    mappings = {
        agent: {
            "agent_id": agent,
            "agent_name": "Meridian",
            "matrix_user_id": "@agent_597b5756_2915_4560_ba6b_91005f085166:test.local",
            "matrix_password": "pw",
            "room_id": "!old:test.local",
        }
    }
    path = tmp_path / "agent_user_mappings.json"
    path.write_text(json.dumps(mappings))
    return [str(path)]


@pytest.mark.parametrize("dry_run", [True, False])
def test_import_with_the_homeserver_down_says_so_and_writes_nothing(
    tmp_path: Path, dry_run: bool
) -> None:
    database = tmp_path / "bridge.db"
    config = configured(
        tmp_path,
        {
            "homeserver": {"address": f"http://127.0.0.1:{closed_port()}"},
            "appservice": {**TOKENS, "database": f"sqlite:{database}", "port": closed_port()},
        },
    )
    args = ["--dry-run"] if dry_run else []
    proc = cli("-c", str(config), "import-legacy", *legacy_files(tmp_path), *args)
    assert proc.returncode == 1
    err = one_line(proc.stderr)
    assert "cannot reach the homeserver" in err and "nothing was imported" in err
    assert "adopted" not in proc.stdout
    if dry_run:
        assert not database.exists()


def test_import_refuses_while_the_appservice_runs(tmp_path: Path) -> None:
    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"status": "ok"}')

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = configured(tmp_path, {"appservice": {**TOKENS, "port": server.server_address[1]}})
        proc = cli("-c", str(config), "import-legacy", *legacy_files(tmp_path), "--dry-run")
    finally:
        server.shutdown()
    assert proc.returncode == 1 and "the appservice is running" in one_line(proc.stderr)


# --- 7. Docker's first run: one next step at a time ---------------------------------------------


def test_docker_first_run_says_one_next_step(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "letta-appservice"
    program.write_text(f'#!/bin/sh\nexec {sys.executable} -m letta_appservice "$@"\n')
    program.chmod(0o755)
    (tmp_path / "data").mkdir()
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "CONFIG_PATH": str(tmp_path / "data" / "config.yaml"),
        "REGISTRATION_PATH": str(tmp_path / "data" / "registration.yaml"),
        "LETTA_APPSERVICE_HOMESERVER_ADDRESS": "http://tuwunel:8008",
        "LETTA_APPSERVICE_HOMESERVER_DOMAIN": "test.local",
        "LETTA_APPSERVICE_ADDRESS": "http://letta-appservice:29330",
        "LETTA_BASE_URL": "http://letta:8283",
    }

    def entrypoint() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", str(REPO / "docker" / "entrypoint.sh")],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    first = entrypoint()
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("Next") == 1 and "-g" not in first.stdout
    assert "Set these keys in it (example values are refused): bridge.permissions." in (
        first.stdout
    )
    refused = entrypoint()  # the example's permissions are still there
    assert refused.returncode == 2 and "bridge.permissions" in one_line(refused.stderr)
    config = Path(env["CONFIG_PATH"])
    config.write_text(config.read_text().replace("example.org", "test.local"))
    second = entrypoint()
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("Next") == 1 and "docker compose" in second.stdout
    assert "run.sh" not in second.stdout and "Synapse" not in second.stdout


# --- 9. logging ---------------------------------------------------------------------------------


def test_logging_json_lines_per_logger_levels_and_a_rotating_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_file = tmp_path / "bridge.log"
    config = LoggingConfig(
        level="WARNING",
        loggers={"letta_appservice.router": "DEBUG"},
        format="json",
        file=str(log_file),
        file_max_bytes=300,
        file_backups=2,
    )
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        setup_logging(config)
        logging.getLogger("letta_appservice.router").debug("routed %s", "x")
        logging.getLogger("letta_appservice.other").info("hidden")
        for i in range(10):
            logging.getLogger("letta_appservice.router").warning("line %d", i)
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
            handler.close()
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        logging.getLogger("letta_appservice.router").setLevel(logging.NOTSET)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0] == lines[0] | {"level": "DEBUG", "message": "routed x"}
    assert lines[0]["logger"] == "letta_appservice.router"
    assert all(line["message"] != "hidden" for line in lines)
    assert (tmp_path / "bridge.log.1").exists() and not (tmp_path / "bridge.log.3").exists()


def test_log_format_from_the_environment(tmp_path: Path) -> None:
    config = configured(tmp_path, {"appservice": {"port": closed_port()}})
    proc = cli(
        "-c", str(config), "db", "upgrade",
        LETTA_APPSERVICE_LOG_LEVEL="debug", LETTA_APPSERVICE_LOG_FORMAT="json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert all(json.loads(line)["level"] for line in proc.stderr.splitlines())


# --- 10. dependencies ---------------------------------------------------------------------------


def test_dependencies_admit_only_versions_that_work() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = {
        d.split(">")[0].split("=")[0].split("<")[0].strip(): d for d in project["dependencies"]
    }
    assert deps["aiohttp"].startswith("aiohttp>=3.12")  # ClientSession(middlewares=...)
    assert "linkify-it-py" in deps and "tomli-w" in deps
    [ruff] = [d for d in project["optional-dependencies"]["test"] if d.startswith("ruff")]
    assert ruff.startswith("ruff==")  # CI runs `ruff format --check`
