"""Run a real Synapse homeserver on loopback for integration tests."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from ruamel.yaml import YAML

from tests.harness.config import free_port
from tests.harness.matrix_user import MatrixError, MatrixUser
from tests.harness.processes import spawn, stop, tail, wait_until_answers

START_TIMEOUT = 90.0
STOP_GRACE = 10.0

# Every rate limiter Synapse 1.163 reads (synapse/config/ratelimiting.py), opened wide so that
# tests never see M_LIMIT_EXCEEDED no matter how many users, rooms and messages they create.
_UNLIMITED = {"per_second": 100000, "burst_count": 100000}
_RATE_LIMITS: dict[str, Any] = {
    "rc_message": _UNLIMITED,
    "rc_registration": _UNLIMITED,
    "rc_registration_token_validity": _UNLIMITED,
    "rc_login": {"address": _UNLIMITED, "account": _UNLIMITED, "failed_attempts": _UNLIMITED},
    "rc_admin_redaction": _UNLIMITED,
    "rc_joins": {"local": _UNLIMITED, "remote": _UNLIMITED},
    "rc_joins_per_room": _UNLIMITED,
    "rc_key_requests": _UNLIMITED,
    "rc_3pid_validation": _UNLIMITED,
    "rc_invites": {"per_room": _UNLIMITED, "per_user": _UNLIMITED, "per_issuer": _UNLIMITED},
    "rc_third_party_invite": _UNLIMITED,
    "rc_media_create": _UNLIMITED,
    "rc_presence": {"per_user": _UNLIMITED},
    "rc_delayed_event_mgmt": _UNLIMITED,
    "rc_room_creation": _UNLIMITED,
    "rc_reports": _UNLIMITED,
    "rc_user_directory": _UNLIMITED,
    "rc_profile": _UNLIMITED,
}

_LOG_CONFIG = """\
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: {log_path}
    encoding: utf8
loggers:
  synapse.storage.SQL:
    level: WARNING
root:
  level: WARNING
  handlers: [file]
disable_existing_loggers: false
"""


def fresh_localpart(prefix: str = "user") -> str:
    """A localpart no other test has used: tests isolate by fresh users and rooms."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def _prepare_workdir(workdir: Path) -> Path:
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def _absolute(path: Path) -> Path:
    # Synapse resolves relative registration paths against its own cwd (the workdir).
    return Path(path).resolve()


class SynapseServer:
    """One Synapse process listening on http://127.0.0.1:<port>, SQLite in ``workdir``."""

    def __init__(self, workdir: Path, server_name: str, port: int) -> None:
        self.workdir = workdir
        self.server_name = server_name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.config_path = workdir / "homeserver.yaml"
        self.log_path = workdir / "homeserver.log"
        self.stdout_path = workdir / "synapse-stdout.log"
        self.registration_shared_secret = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    async def start(
        cls,
        workdir: Path,
        registrations: list[Path],
        server_name: str = "test.local",
        default_room_version: str = "12",
        extra: dict[str, Any] | None = None,
    ) -> SynapseServer:
        """Generate a config, start Synapse and wait until the client API answers.

        ``default_room_version`` defaults to 12, the default of Tuwunel >= 1.9.2 (our target
        server) and of Synapse 1.163; pass "11" for servers before that. ``extra``: more
        homeserver.yaml keys.
        """
        server = cls(_prepare_workdir(workdir), server_name, free_port())
        await server._generate_config()
        server._edit_config([_absolute(p) for p in registrations], default_room_version, extra)
        server._spawn()
        try:
            await server._wait_until_up()
        except BaseException:
            await server.stop()
            raise
        return server

    @property
    def pid(self) -> int:
        assert self._proc is not None, "Synapse is not running"
        return self._proc.pid

    async def _generate_config(self) -> None:
        # Generating (rather than hand-writing) the config keeps us in step with whatever a
        # given Synapse version requires, and gives us fresh secrets and a signing key.
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "synapse.app.homeserver",
            "--server-name",
            self.server_name,
            "--config-path",
            str(self.config_path),
            "--data-directory",
            str(self.workdir),
            "--generate-config",
            "--report-stats=no",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=self.workdir,
        )
        output, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"synapse --generate-config failed:\n{output.decode()[-4000:]}")

    def _edit_config(
        self,
        registrations: list[Path],
        default_room_version: str,
        extra: dict[str, Any] | None = None,
    ) -> None:
        yaml = YAML(typ="safe")
        config: dict[str, Any] = yaml.load(self.config_path.read_text())
        log_config = self.workdir / "log.config.yaml"
        log_config.write_text(_LOG_CONFIG.format(log_path=self.log_path))
        config.update(
            {
                "listeners": [
                    {
                        "port": self.port,
                        "bind_addresses": ["127.0.0.1"],
                        "type": "http",
                        "tls": False,
                        "x_forwarded": False,
                        "resources": [{"names": ["client"], "compress": False}],
                    }
                ],
                "database": {
                    "name": "sqlite3",
                    "args": {"database": str(self.workdir / "homeserver.db")},
                },
                "log_config": str(log_config),
                "media_store_path": str(self.workdir / "media_store"),
                "pid_file": str(self.workdir / "homeserver.pid"),
                "app_service_config_files": [str(p) for p in registrations],
                "enable_registration": False,
                "report_stats": False,
                "trusted_key_servers": [],
                "suppress_key_server_warning": True,
                "federation_domain_whitelist": [],
                "presence": {"enabled": False},
                "url_preview_enabled": False,
                "enable_metrics": False,
                "default_room_version": default_room_version,
                # Synapse answers an identical /sync from a 2-minute cache; tests need the truth.
                "caches": {"sync_response_cache_duration": 0},
                # Synapse denies publishing to the room directory unless a rule allows it.
                "room_list_publication_rules": [{"action": "allow"}],
                "alias_creation_rules": [{"action": "allow"}],
                **_RATE_LIMITS,
                **(extra or {}),
            }
        )
        self.registration_shared_secret = str(config["registration_shared_secret"])
        with self.config_path.open("w") as fh:
            yaml.dump(config, fh)

    def _spawn(self) -> None:
        argv = [sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.config_path)]
        self._proc = spawn(argv, self.stdout_path, cwd=self.workdir)

    async def _wait_until_up(self) -> None:
        assert self._proc is not None
        url = f"{self.url}/_matrix/client/versions"
        await wait_until_answers(url, self._proc, "Synapse", self._log_tail, START_TIMEOUT)

    def _log_tail(self) -> str:
        return (
            f"--- {self.log_path} ---\n{tail(self.log_path)}\n"
            f"--- {self.stdout_path} ---\n{tail(self.stdout_path)}"
        )

    async def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it if still alive after 10 s."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        proc, self._proc = self._proc, None
        await stop(proc, grace=STOP_GRACE)

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        return self._session

    async def register_user(
        self,
        localpart: str,
        password: str = "pw",
        admin: bool = False,
        displayname: str | None = None,
    ) -> MatrixUser:
        """Create a user through the shared-secret admin API and return it logged in."""
        session = await self._http()
        endpoint = f"{self.url}/_synapse/admin/v1/register"
        async with session.get(endpoint) as resp:
            nonce = (await _json_or_raise(resp))["nonce"]
        mac = hmac.new(self.registration_shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join([nonce.encode(), localpart.encode(), password.encode()]))
        mac.update(b"\x00admin" if admin else b"\x00notadmin")
        body: dict[str, Any] = {
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": admin,
            "mac": mac.hexdigest(),
        }
        if displayname is not None:
            body["displayname"] = displayname
        async with session.post(endpoint, json=body) as resp:
            data = await _json_or_raise(resp)
        user = MatrixUser(self.url, data["user_id"], data["access_token"])
        # Fix the user's sync position now, so waits see everything that happens from here on.
        await user.mark()
        return user


async def _json_or_raise(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    data: dict[str, Any] = await resp.json(content_type=None)
    if resp.status >= 300:
        raise MatrixError(resp.status, data.get("errcode", ""), data.get("error", ""))
    return data
