"""Routing decisions (pure): room modes, mentions, commands — who a message is for."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

from ..db.agent import AgentRow
from ..db.room import AGENT, INVITED

OPEN, MENTION, OFF = "open", "mention", "off"
_MATRIX_TO = re.compile(r"https://matrix\.to/#/([^\"'?>]+)")


def default_mode(kind: str, own_room: bool, others: int) -> str:
    """An agent's own room and a 1:1 DM are open; anywhere else the puppet must be named."""
    if kind == AGENT and own_room:
        return OPEN
    if kind == INVITED and others <= 1:
        return OPEN
    return MENTION


def is_mentioned(content: Mapping[str, Any], mxid: str, names: Iterable[str]) -> bool:
    """The puppet is addressed: in ``m.mentions``, by a pill, by its mxid or by a name."""
    mentions = content.get("m.mentions")
    if isinstance(mentions, Mapping) and mxid in (mentions.get("user_ids") or []):
        return True
    formatted = content.get("formatted_body")
    if isinstance(formatted, str):
        if any(unquote(m).lower() == mxid.lower() for m in _MATRIX_TO.findall(formatted)):
            return True
    body = content.get("body")
    if not isinstance(body, str):
        return False
    body = body.lower()
    if mxid.lower() in body:
        return True
    for name in names:
        name = name.strip().lower()
        if name and re.search(rf"(?<!\w){re.escape(name)}(?!\w)", body):
            return True
    return False


def is_command(content: Mapping[str, Any], prefix: str) -> bool:
    body = content.get("body")
    return isinstance(body, str) and body.lstrip().lower().startswith(prefix.lower())


def addressed(mode: str, content: Mapping[str, Any], agent: AgentRow) -> bool:
    if mode == OPEN:
        return True
    if mode == MENTION:
        names = [n for n in (agent.displayname, agent.name) if n]
        return is_mentioned(content, agent.mxid, names)
    return False
