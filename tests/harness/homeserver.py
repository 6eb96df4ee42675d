"""The homeserver the suite runs on: a real Tuwunel when ``TUWUNEL_BIN`` names a binary, else
a real Synapse from PyPI. Tests see only what both offer."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import pytest

from .matrix_user import MatrixUser
from .synapse import SynapseServer
from .tuwunel import TuwunelServer, tuwunel_bin


class Homeserver(Protocol):
    url: str
    server_name: str

    async def register_user(
        self,
        localpart: str,
        password: str = "pw",
        admin: bool = False,
        displayname: str | None = None,
    ) -> MatrixUser: ...

    async def stop(self) -> None: ...


async def start_homeserver(
    workdir: Path, registrations: list[Path], server_name: str
) -> Homeserver:
    if tuwunel_bin():
        return await TuwunelServer.start(workdir, registrations, server_name=server_name)
    return await SynapseServer.start(workdir, registrations, server_name=server_name)


def on_tuwunel() -> bool:
    return tuwunel_bin() is not None


# Tests that set their scene through Synapse's admin API (deleting rooms, logging in as the old
# bot's puppets): Tuwunel has no such API.
synapse_admin_api = pytest.mark.skipif(
    tuwunel_bin() is not None, reason="sets the scene through Synapse's admin API"
)
