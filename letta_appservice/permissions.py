"""Who may use the bridge: bridge.permissions resolved for one mxid (pure)."""

from __future__ import annotations

from collections.abc import Mapping

USER, ADMIN = "user", "admin"
_RANK = {None: 0, USER: 1, ADMIN: 2}


def at_least(level: str | None, needed: str) -> bool:
    """``level`` (None: no access) grants what ``needed`` requires."""
    return _RANK[level] >= _RANK[needed]


class Permissions:
    """Most specific entry wins: the full mxid, then its server name, then ``*``."""

    def __init__(self, table: Mapping[str, str]) -> None:
        self._table = dict(table)

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

    @property
    def admins(self) -> list[str]:
        """Admins named by full mxid: the ones invited to the space and every agent room."""
        return sorted(k for k, v in self._table.items() if v == ADMIN and k.startswith("@"))
