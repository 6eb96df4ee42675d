"""The older Letta-Matrix bot's files (agent_user_mappings.json, letta_space_config.json):
parsed and validated as a whole before anything is imported (pure)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

from ..errors import ConfigError


class LegacyFileError(ConfigError):
    """A malformed legacy file; the message names the file and the entry."""


@attrs.frozen
class LegacyAgent:
    agent_id: str
    name: str
    mxid: str
    room_id: str | None  # None: the old bot never made a room for it


@attrs.frozen
class LegacySpace:
    space_id: str
    name: str | None


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise LegacyFileError("", f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise LegacyFileError("", f"{path} is not valid JSON: {e}") from None


def parse_mappings(path: Path, domain: str, is_puppet: Any) -> list[LegacyAgent]:
    """Every entry of ``agent_user_mappings.json``, or an error naming the first bad one.
    ``is_puppet`` tells whether an mxid is in this bridge's namespace (we can only adopt
    users we may act as)."""
    data = _load(path)
    if not isinstance(data, dict):
        raise LegacyFileError("", f"{path} must hold a JSON object of agent id -> mapping")
    agents: list[LegacyAgent] = []
    for key, entry in data.items():

        def bad(message: str, key: str = key) -> LegacyFileError:
            return LegacyFileError("", f"{path}: entry {key!r}: {message}")

        if not isinstance(entry, dict):
            raise bad("must be an object")
        agent_id = entry.get("agent_id", key)
        if agent_id != key:
            raise bad(f"agent_id {agent_id!r} differs from its key")
        if not key.startswith("agent-"):
            raise bad("is not a Letta agent id (agent-<uuid>)")
        name = entry.get("agent_name")
        if not isinstance(name, str):
            raise bad("agent_name must be a string")
        mxid = entry.get("matrix_user_id")
        if not isinstance(mxid, str) or not mxid.startswith("@") or ":" not in mxid:
            raise bad("matrix_user_id must be a Matrix user id like @agent_…:server")
        if mxid.split(":", 1)[1] != domain:
            raise bad(f"matrix_user_id {mxid} is not on this homeserver ({domain})")
        if not is_puppet(mxid):
            raise bad(f"matrix_user_id {mxid} is outside this bridge's user namespace")
        room_id = entry.get("room_id")
        if room_id is not None and (not isinstance(room_id, str) or not room_id.startswith("!")):
            raise bad("room_id must be a room id like !abc:server or null")
        agents.append(LegacyAgent(agent_id=key, name=name, mxid=mxid.lower(), room_id=room_id))
    return agents


def parse_space(path: Path) -> LegacySpace:
    data = _load(path)
    if not isinstance(data, dict):
        raise LegacyFileError("", f"{path} must hold a JSON object")
    space_id = data.get("space_id")
    if not isinstance(space_id, str) or not space_id.startswith("!"):
        raise LegacyFileError("", f"{path}: space_id must be a room id like !abc:server")
    name = data.get("name")
    return LegacySpace(space_id=space_id, name=name if isinstance(name, str) else None)
