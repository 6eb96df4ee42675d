"""Who may use the bridge: bridge.permissions resolved for one mxid (pure)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger("letta_appservice.permissions")
USER, ADMIN = "user", "admin"
_RANK = {None: 0, USER: 1, ADMIN: 2}


def at_least(level: str | None, needed: str) -> bool:
    """``level`` (None: no access) grants what ``needed`` requires."""
    return _RANK[level] >= _RANK[needed]


class Permissions:
    """Most specific entry wins: the full mxid, then its server name, then ``*``.

    ``remote_rooms`` (bridge.remote_rooms) says who may bring agents or the bot into rooms
    created on other servers than ``domain``: "admins" or every permitted "users"."""

    def __init__(
        self, table: Mapping[str, str], *, domain: str | None = None, remote_rooms: str = "admins"
    ) -> None:
        self._table = dict(table)
        self.domain = domain
        self.remote_rooms = remote_rooms

    @classmethod
    def from_config(cls, config: Config) -> Permissions:
        """The bridge's permissions; grants to everyone are logged, as they are easy to miss."""
        permissions = cls(
            config.bridge.permissions,
            domain=config.homeserver.domain,
            remote_rooms=config.guards.remote_rooms,
        )
        for warning in permissions.warnings():
            log.warning(warning)
        return permissions

    def warnings(self) -> list[str]:
        """What an operator should know about the table: grants to everyone (``*``)."""
        level = self._table.get("*")
        if level == ADMIN:
            return [
                'bridge.permissions gives "*" admin: every Matrix user, on any server, may run '
                "admin commands (sync, reset, invite, …) and is invited to every agent room"
            ]
        if level == USER:
            return [
                'bridge.permissions gives "*" user: every Matrix user, on any server, may talk '
                "to the agents"
            ]
        return []

    def level(self, mxid: str) -> str | None:
        if mxid in self._table:
            return self._table[mxid]
        server = mxid.split(":", 1)[1] if ":" in mxid else ""
        if server in self._table:
            return self._table[server]
        return self._table.get("*")

    def is_user(self, mxid: str) -> bool:
        return at_least(self.level(mxid), USER)

    def is_admin(self, mxid: str) -> bool:
        return self.level(mxid) == ADMIN

    def may_bring_into(self, inviter: str, room_server: str | None) -> bool:
        """Whether ``inviter`` may bring agents or the bot into a room created on
        ``room_server`` (None: unknown, taken as ours). A room on another server can be a
        large public room whose whole traffic the bridge would store and process."""
        if not self.is_user(inviter):
            return False
        if room_server is None or self.domain is None or room_server == self.domain:
            return True
        return self.remote_rooms == "users" or self.is_admin(inviter)

    @property
    def admins(self) -> list[str]:
        """Admins named by full mxid: the ones invited to the space and every agent room."""
        return sorted(k for k, v in self._table.items() if v == ADMIN and k.startswith("@"))
