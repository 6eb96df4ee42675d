"""Matrix content of the bridge's messages and the ids that make every send idempotent: Letta
message ids, transaction ids, part numbers of one-off notices (pure)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from ..matrix.format import HTML, NOTICE
from ..matrix.size import EVENT_BYTES, event_bytes, without_html
from .loops import MARKER
from .parts import ATTACHMENT, Part

EDIT_FALLBACK_CHARS = 1_000
# Part numbers of one-off notices, far above any reply's parts (sent_event keeps them once).
DELAY_NOTICE_PART = 10_000
PAUSED_NOTICE_PART = 10_001
REFUSED_NOTICE_PART = 10_002
MEDIA_NOTICE_PART = 10_003
GONE_NOTICE_PART = 10_004
LOOP_NOTICE_PART = 10_005
APPROVAL_REFUSED_PART = 10_006
CONTEXT_GONE_PART = 10_007
_OTID_NAMESPACE = uuid.UUID("6f1c1a44-3c57-4d43-9a0b-7f3c5a0e9b21")


def otid(event_id: str, agent_id: str) -> str:
    """The Letta message id of a Matrix event for an agent: the same on every retry."""
    return str(uuid.uuid5(_OTID_NAMESPACE, f"{event_id}\n{agent_id}"))


def txn_id(event_id: str, agent_id: str, part: int, suffix: str = "") -> str:
    """A send transaction id from the source event, agent and part number. Synapse keys an
    appservice's txn ids per room and path, not per puppet, so the agent is part of it."""
    digest = hashlib.sha256(f"{event_id}\n{agent_id}".encode()).hexdigest()[:32]
    return f"letta.{digest}.{part}{suffix}"


def edit_suffix(text: str) -> str:
    """Edits are keyed by their text: a repeated edit is deduplicated, a new text is not."""
    return ".e" + hashlib.sha256(text.encode()).hexdigest()[:16]


def reply_relation(content: Mapping[str, Any], event_id: str) -> dict[str, Any]:
    """A reply to the person's event, inside its thread when it was written in one."""
    relates = content.get("m.relates_to")
    if isinstance(relates, Mapping) and relates.get("rel_type") == "m.thread":
        root = relates.get("event_id")
        if isinstance(root, str) and root:
            return {
                "rel_type": "m.thread",
                "event_id": root,
                "is_falling_back": False,
                "m.in_reply_to": {"event_id": event_id},
            }
    return {"m.in_reply_to": {"event_id": event_id}}


def message_content(
    part: Part, relation: Mapping[str, Any] | None, mentions: Sequence[str] = ()
) -> dict[str, Any]:
    if part.msgtype == ATTACHMENT:  # never uploaded (no uploader): never the raw source
        part = Part(NOTICE, f"{part.body}: an attachment the bridge could not post.")
    content: dict[str, Any] = {"msgtype": part.msgtype, "body": part.body}
    if part.url:  # an image or file the agent gave, uploaded to the homeserver
        content.update(filename=part.body, url=part.url)
        content["info"] = {"mimetype": part.mimetype, "size": part.size}
    if part.html:
        content["format"] = HTML
        content["formatted_body"] = part.html
    if relation:
        content["m.relates_to"] = dict(relation)
    content["m.mentions"] = {"user_ids": list(mentions)} if mentions else {}
    content[MARKER] = {"bot": True}  # other bridges (another instance of this one) see a bot
    return _fit(content)


def edit_content(part: Part, original_event_id: str) -> dict[str, Any]:
    """An m.replace of an earlier part (streaming): the fallback text is starred; for a long
    part it is only the beginning (clients that know edits show the new content)."""
    new = message_content(part, None)
    long = len(part.body) > EDIT_FALLBACK_CHARS
    fallback = part.body[:EDIT_FALLBACK_CHARS] + " …" if long else part.body
    content: dict[str, Any] = {"msgtype": part.msgtype, "body": f"* {fallback}"}
    if part.html and not long:
        content["format"] = HTML
        content["formatted_body"] = f"* {part.html}"
    content["m.new_content"] = new
    content["m.relates_to"] = {"rel_type": "m.replace", "event_id": original_event_id}
    content["m.mentions"] = {}
    content[MARKER] = {"bot": True}
    return _fit(content)


def _fit(content: dict[str, Any]) -> dict[str, Any]:
    # Parts are cut to size, but HTML can outgrow its text (many short links): without it the
    # event fits, and the text is all there.
    return content if event_bytes(content) <= EVENT_BYTES else without_html(content)
