"""What differs between Letta versions in what the bridge sends (pure)."""

from __future__ import annotations

import re
from typing import Any

# Letta before 0.6.15 read a user message's text from `text`, later versions from `content`.
_CONTENT_FIELD_SINCE = (0, 6, 15)
_VERSION_RE = re.compile(r"(\d+)\.(\d+)\.(\d+)")
# OpenAI-style models only accept a `name` of this form; anything else would fail the request.
_NAME_RE = re.compile(r"^[^\s<|\\/>]+$")
# A user message's content: its text, or content parts (text and images, 0.6.15+).
UserContent = str | list[dict[str, Any]]


def release(version: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a release number; None for a dev build or Cloud."""
    m = _VERSION_RE.match(version.strip().removeprefix("v"))
    return None if m is None else (int(m[1]), int(m[2]), int(m[3]))


def message_text_field(version: str) -> str:
    """The user-message field that carries the text on a server of ``version``."""
    known = release(version)
    if known is None:  # not a release number (a dev build, Cloud): the current API
        return "content"
    return "text" if known < _CONTENT_FIELD_SINCE else "content"


def user_message(
    field: str, content: UserContent, name: str | None, otid: str | None
) -> dict[str, Any]:
    """A user message with its text in ``field``; the sender's name only where models take it."""
    message: dict[str, Any] = {"role": "user", field: content}
    if name and _NAME_RE.fullmatch(name):
        message["name"] = name
    if otid:
        message["otid"] = otid
    return message
