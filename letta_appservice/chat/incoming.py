"""What a person's message becomes for Letta: its text, who wrote it and where (pure)."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

from ..matrix.format import EMOTE, TEXT

NAME_CHARS = 80  # display and room names in the attribution line, at most
# Control, format (bidi overrides, zero-width), separator and unassigned characters.
_INVISIBLE = frozenset({"Cc", "Cf", "Cn", "Co", "Cs", "Zl", "Zp"})
# Brackets and parentheses become single angle quotes, "@" a fullwidth at sign.
_FORGERS = str.maketrans(
    {"[": "\u2039", "(": "\u2039", "]": "\u203a", ")": "\u203a", '"': "'", "@": "\uff20"}
)
_MEDIA = {"m.image": "image", "m.file": "file", "m.audio": "audio message", "m.video": "video"}


def strip_reply_fallback(body: str) -> str:
    """Drop the quoted '> <@user> …' lines older clients put before a reply's text."""
    lines = body.split("\n")
    if not lines or not lines[0].startswith(">"):
        return body
    index = 0
    while index < len(lines) and lines[index].startswith(">"):
        index += 1
    if index < len(lines) and lines[index] == "":
        return "\n".join(lines[index + 1 :])
    return body


def incoming_text(content: Mapping[str, Any], displayname: str) -> str | None:
    """The text a person's message carries for an agent; None when it is not for agents
    (notices, media, edits; an edit is not sent again — the agent saw the first version)."""
    msgtype, body = content.get("msgtype"), content.get("body")
    if not isinstance(body, str) or not body.strip():
        return None
    relates = content.get("m.relates_to")
    if isinstance(relates, Mapping) and relates.get("rel_type") == "m.replace":
        return None
    if isinstance(relates, Mapping) and "m.in_reply_to" in relates:
        body = strip_reply_fallback(body)
    if msgtype == TEXT:
        return body
    if msgtype == EMOTE:
        return f"* {displayname} {body}"
    return None


def media_kind(content: Mapping[str, Any]) -> str | None:
    """ "image", "file", … for a media message (which agents cannot read), else None."""
    return _MEDIA.get(str(content.get("msgtype")))


def attribution(template: str, *, displayname: str, sender: str, room_name: str) -> str:
    return template.format(
        displayname=inert(displayname), sender=sender, room_name=inert(room_name)
    )


def inert(text: str, limit: int = NAME_CHARS) -> str:
    """A display or room name made unable to forge the attribution line around it: one line
    (line breaks and control characters become spaces), no brackets, parentheses or quotes
    that could close it or fake a ``(@admin:…)``, no ``@`` that could look like a Matrix id."""
    text = "".join(" " if unicodedata.category(c) in _INVISIBLE else c for c in text)
    text = " ".join(text.split()).translate(_FORGERS)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def letta_content(
    template: str, *, displayname: str, sender: str, room_name: str, text: str
) -> str:
    """What the agent reads: who wrote, where, then the text (Letta shows `name` to few
    models, so the attribution travels in the text itself)."""
    line = attribution(template, displayname=displayname, sender=sender, room_name=room_name)
    return f"{line}\n{text}" if line else text


def sender_name(mxid: str) -> str:
    """The `name` given to Letta: the localpart (the client drops it if the model would not
    accept it)."""
    return mxid[1:].split(":", 1)[0] if mxid.startswith("@") else mxid
