"""Agent id <-> Matrix id mapping and namespace regexes (pure)."""

from __future__ import annotations

import re
from typing import Any

# Characters a Letta id may contain that are not valid in our localparts become '_'.
_UNSAFE = re.compile(r"[^a-z0-9]")
AGENT_ID_PART = "[a-z0-9_]+"
_META = re.compile(r"([\\.+*?()|\[\]{}^$])")


def regex_escape(text: str) -> str:
    """Escape only regex metacharacters: Python's re.escape also escapes '#', '-' and friends,
    which the Rust regex engine of Tuwunel (and older versions of it) may reject."""
    return _META.sub(r"\\\1", text)


def agent_id_part(agent_id: str) -> str:
    """``agent-<uuid>`` -> ``<uuid with _>``, lowercase (the older deployment's scheme)."""
    core = agent_id.removeprefix("agent-")
    return _UNSAFE.sub("_", core.lower())


def agent_localpart(template: str, agent_id: str) -> str:
    return template.replace("{agent_id}", agent_id_part(agent_id))


def agent_mxid(template: str, domain: str, agent_id: str) -> str:
    return f"@{agent_localpart(template, agent_id)}:{domain}"


def agent_alias(template: str, domain: str, agent_id: str) -> str:
    """The room alias of an agent's room: deterministic, so a crashed creation is found again."""
    return f"#{agent_localpart(template, agent_id)}:{domain}"


def namespace_regex(template: str, domain: str, sigil: str = "@") -> str:
    """Anchored, escaped regex for the puppet namespace (Rust-regex safe: no look-arounds)."""
    before, after = template.split("{agent_id}")
    start, end = regex_escape(sigil + before), regex_escape(f"{after}:{domain}")
    return f"^{start}{AGENT_ID_PART}{end}$"


def exact_regex(sigil: str, localpart: str, domain: str) -> str:
    return f"^{regex_escape(f'{sigil}{localpart}:{domain}')}$"


def server_name(identifier: str) -> str | None:
    """The server part of a user or room id (None when it has none, as v12 room ids)."""
    _, colon, server = identifier.partition(":")
    return server if colon and server else None


def room_origin(invite: Any) -> str | None:
    """The server a room was created on, as an invite (a member event) tells: its stripped
    state's creator, else the room id's server, else the inviter's."""
    unsigned = getattr(invite, "unsigned", None)
    for ev in getattr(unsigned, "invite_room_state", None) or []:
        if str(ev.type) == "m.room.create" and getattr(ev, "sender", None):
            return server_name(str(ev.sender))
    return server_name(str(invite.room_id)) or server_name(str(invite.sender))
