"""What differs between Letta versions in what the bridge sends (pure)."""

from __future__ import annotations

import re
from typing import Any

# Letta before 0.6.15 read a user message's text from `text`, later versions from `content`.
_CONTENT_FIELD_SINCE = (0, 6, 15)
_VERSION_RE = re.compile(r"(\d+)\.(\d+)\.(\d+)")
# OpenAI-style models only accept a `name` of this form; anything else would fail the request.
_NAME_RE = re.compile(r"^[^\s<|\\/>]+$")


def message_text_field(version: str) -> str:
    """The user-message field that carries the text on a server of ``version``."""
    m = _VERSION_RE.match(version.strip().removeprefix("v"))
    if m is None:  # not a release number (a dev build, Cloud): the current API
        return "content"
    return "text" if tuple(map(int, m.groups())) < _CONTENT_FIELD_SINCE else "content"


def user_message(field: str, content: str, name: str | None, otid: str | None) -> dict[str, Any]:
    """A user message with its text in ``field``; the sender's name only where models take it."""
    message: dict[str, Any] = {"role": "user", field: content}
    if name and _NAME_RE.fullmatch(name):
        message["name"] = name
    if otid:
        message["otid"] = otid
    return message
