"""A real Tuwunel for the suite, when one is given: ``TUWUNEL_BIN`` points at a binary (the
project never builds or ships Tuwunel). Same surface as ``SynapseServer``: ``url``,
``server_name``, ``register_user``, ``stop``. Registrations go into ``tuwunel.toml`` as
``[global.appservice.<id>]`` sections (what ``letta-appservice --tuwunel-toml`` prints), read at
start; test users register with a registration token (Tuwunel has no shared-secret API)."""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import tomli_w
from ruamel.yaml import YAML

from .config import free_port
from .matrix_user import MatrixUser
from .processes import spawn, stop, tail, wait_until_answers

ENV = "TUWUNEL_BIN"


def tuwunel_bin() -> str | None:
    """The binary the suite runs on instead of Synapse, or None."""
    path = os.environ.get(ENV, "").strip()
    return path or None


def appservice_sections(registrations: list[Path]) -> dict[str, Any]:
    """Synapse-format registration files as tuwunel.toml's ``appservice`` table."""
    out: dict[str, Any] = {}
    for path in registrations:
        reg = YAML(typ="safe").load(path.read_text())
        section = {
            k: reg[k] for k in ("url", "as_token", "hs_token", "sender_localpart") if reg.get(k)
        }
        section["rate_limited"] = bool(reg.get("rate_limited", False))
        for kind in ("users", "aliases", "rooms"):
            if entries := (reg.get("namespaces") or {}).get(kind):
                section[kind] = [
                    {"exclusive": bool(e.get("exclusive")), "regex": e["regex"]} for e in entries
                ]
        out[reg["id"]] = section
    return out


class TuwunelServer:
    """One Tuwunel process on http://127.0.0.1:<port>, its RocksDB in ``workdir``."""

    def __init__(self, binary: str, workdir: Path, server_name: str, port: int) -> None:
        self.binary = binary
        self.workdir = workdir
        self.server_name = server_name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.config_path = workdir / "tuwunel.toml"
        self.log_path = workdir / "tuwunel.log"
        self.registration_token = secrets.token_urlsafe(16)
        self._proc: subprocess.Popen[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    async def start(
        cls,
        workdir: Path,
        registrations: list[Path],
        server_name: str = "test.local",
        binary: str | None = None,
    ) -> TuwunelServer:
        binary = binary or tuwunel_bin()
        assert binary, f"{ENV} is not set"
        workdir.mkdir(parents=True, exist_ok=True)
        server = cls(binary, workdir, server_name, free_port())
        server._write_config(registrations)
        server._spawn()
        try:
            await server._wait_until_up()
        except BaseException:
            await server.stop()
            raise
        return server

    def _write_config(self, registrations: list[Path]) -> None:
        config = {
            "global": {
                "server_name": self.server_name,
                "database_path": str(self.workdir / "db"),
                "address": ["127.0.0.1"],
                "port": self.port,
                "allow_registration": True,
                "registration_token": self.registration_token,
                "allow_federation": False,
                "trusted_servers": [],
                "new_user_displayname_suffix": "",
                "log": "warn",
                "appservice": appservice_sections(registrations),
            }
        }
        self.config_path.write_text(tomli_w.dumps(config))

    def _spawn(self) -> None:
        self._proc = spawn([self.binary, "-c", str(self.config_path)], self.log_path)

    async def _wait_until_up(self, timeout: float = 120) -> None:
        assert self._proc is not None
        url = f"{self.url}/_matrix/client/versions"
        await wait_until_answers(url, self._proc, "Tuwunel", lambda: tail(self.log_path), timeout)

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        proc, self._proc = self._proc, None
        await stop(proc, grace=30)

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
        """``admin`` is a bridge role in the tests' configs, not a server role here."""
        del admin  # Tuwunel makes its first user a server admin; the bridge never needs one
        session = await self._http()
        return await register_with_token(
            session, self.url, self.registration_token, localpart, password, displayname
        )


async def register_with_token(
    session: aiohttp.ClientSession,
    url: str,
    token: str,
    localpart: str,
    password: str = "pw",
    displayname: str | None = None,
) -> MatrixUser:
    """A user registered through Tuwunel's client API with a registration token (two UIAA
    steps), logged in, its sync position fixed."""
    endpoint = f"{url}/_matrix/client/v3/register"
    body: dict[str, Any] = {"username": localpart, "password": password}
    async with session.post(endpoint, json=body) as resp:
        challenge = await resp.json(content_type=None)
    body["auth"] = {
        "type": "m.login.registration_token",
        "token": token,
        "session": challenge.get("session"),
    }
    async with session.post(endpoint, json=body) as resp:
        data = await resp.json(content_type=None)
        if resp.status >= 300:
            raise RuntimeError(f"Tuwunel refused to register {localpart}: {data}")
    user = MatrixUser(url, data["user_id"], data["access_token"])
    if displayname is not None:
        await user.request(
            "PUT",
            f"/_matrix/client/v3/profile/{user.mxid}/displayname",
            body={"displayname": displayname},
        )
    await user.mark()
    return user
