"""The test homeserver's name, the bridge admin, and the two appservice identities Synapse knows
from the start: their configs and registrations."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path
from typing import Any

import attrs

from letta_appservice.config import Config, merge_sections, parse_config
from letta_appservice.matrix.registration import build_registration, write_registration

SERVER_NAME = "test.local"
ADMIN = f"@admin:{SERVER_NAME}"


def free_port() -> int:
    """A loopback TCP port nobody listens on. Racy in theory (the port is released before the
    server binds it), fine on a test box."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@attrs.define
class Instance:
    """An appservice identity Synapse knows from the start (its registration is loaded)."""

    id: str
    bot_localpart: str
    username_template: str
    space_name: str
    port: int = attrs.field(factory=free_port)
    as_token: str = attrs.field(factory=lambda: secrets.token_hex(24))
    hs_token: str = attrs.field(factory=lambda: secrets.token_hex(24))

    def config_data(self, homeserver: str, database: str, letta_url: str) -> dict[str, Any]:
        return {
            "homeserver": {"address": homeserver, "domain": SERVER_NAME},
            "appservice": {
                "id": self.id,
                "address": f"http://127.0.0.1:{self.port}",
                "hostname": "127.0.0.1",
                "port": self.port,
                "bot_localpart": self.bot_localpart,
                "as_token": self.as_token,
                "hs_token": self.hs_token,
                "database": database,
            },
            "letta": {"base_url": letta_url, "sync_interval": 3600},
            "bridge": {
                "username_template": self.username_template,
                "space_name": self.space_name,
                "permissions": {SERVER_NAME: "user", ADMIN: "admin"},
            },
            # Off unless a test is about them: setting up the tools costs Letta requests for
            # every agent (tests/test_tools.py switches them on).
            "tools": {"agents": "none"},
        }

    def write_registration(self, path: Path) -> Path:
        """This identity's registration file, as a homeserver loads it."""
        data = self.config_data("http://unused", "sqlite:unused.db", "http://x")
        config = parse_config(data, env={})
        write_registration(build_registration(config), path)
        return path


INSTANCES = {
    "letta": Instance("letta", "letta", "agent_{agent_id}", "Letta Agents"),
    "lab": Instance("lab", "lab", "lab_agent_{agent_id}", "Lab Agents"),
}


def write_registrations(workdir: Path) -> list[Path]:
    """The registration of every test instance, as the homeserver loads them."""
    return [
        inst.write_registration(workdir / f"registration-{inst.id}.yaml")
        for inst in INSTANCES.values()
    ]


def make_config(
    homeserver_url: str, database: str, letta_url: str, instance: str = "letta", **over: Any
) -> Config:
    """The config of one test instance; ``over`` holds sections merged on top (its keyword
    names are config sections: ``homeserver={...}`` overrides ``homeserver_url``)."""
    data = INSTANCES[instance].config_data(homeserver_url, database, letta_url)
    return parse_config(merge_sections(data, over), env={})
