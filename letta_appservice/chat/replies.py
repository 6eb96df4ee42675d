"""What goes to Letta and what comes back to Matrix: texts, parts, relations and ids (pure)."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ..letta.errors import LettaError
from ..letta.models import LettaMessage
from ..matrix.format import render_collapsed, render_markdown
from ..matrix.size import EVENT_BYTES, clip, event_bytes, split_markdown, without_html

TEXT, NOTICE, EMOTE = "m.text", "m.notice", "m.emote"
HTML = "org.matrix.custom.html"
# Part numbers of one-off notices, far above any reply's parts (sent_event keeps them once).
EDIT_FALLBACK_CHARS = 1_000
NO_REPLY = "The agent finished its turn without a reply."
DELAY_NOTICE_PART = 10_000
PAUSED_NOTICE_PART = 10_001
REFUSED_NOTICE_PART = 10_002
MEDIA_NOTICE_PART = 10_003
GONE_NOTICE_PART = 10_004
_MEDIA = {"m.image": "image", "m.file": "file", "m.audio": "audio message", "m.video": "video"}
_FALLBACK_LINE = re.compile(r"^> ?")
_OTID_NAMESPACE = uuid.UUID("6f1c1a44-3c57-4d43-9a0b-7f3c5a0e9b21")


@attrs.frozen
class Part:
    """One Matrix message of a reply: an assistant text, a collapsed notice or a notice."""

    msgtype: str
    body: str
    html: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"msgtype": self.msgtype, "body": self.body, "html": self.html}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Part:
        return cls(raw["msgtype"], raw["body"], raw.get("html"))


# --- ids ---------------------------------------------------------------------------------------


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


# --- to Letta ------------------------------------------------------------------------------------


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
    return template.format(displayname=displayname, sender=sender, room_name=room_name)


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


# --- from Letta ----------------------------------------------------------------------------------


def _pretty_arguments(arguments: str | None) -> str:
    if not arguments:
        return ""
    try:
        return json.dumps(json.loads(arguments), indent=2, ensure_ascii=False)
    except ValueError:
        return arguments


def parts_for(message: LettaMessage, *, show_reasoning: str, show_tools: str) -> list[Part]:
    """The Matrix messages for one Letta message (none when it is not shown). A long answer
    becomes several messages, a long reasoning or tool notice is clipped: an event over the
    homeserver's size limit would be refused, and the answer lost."""
    kind = message.kind
    if kind == "assistant":
        rendered = (render_markdown(piece) for piece in split_markdown(message.text))
        return [Part(TEXT, plain, html) for plain, html in rendered if plain]
    part = _notice_for(message, show_reasoning=show_reasoning, show_tools=show_tools)
    return [part] if part is not None else []


def _notice_for(message: LettaMessage, *, show_reasoning: str, show_tools: str) -> Part | None:
    kind = message.kind
    if kind == "reasoning" and show_reasoning == "notice" and message.text.strip():
        return Part(NOTICE, *render_collapsed("Reasoning", clip(message.text)))
    if kind == "tool_call" and show_tools == "notice":
        summary = f"Tool call: {message.tool_name or 'unknown tool'}"
        arguments = clip(_pretty_arguments(message.tool_arguments))
        return Part(NOTICE, *render_collapsed(summary, arguments))
    if kind == "tool_return" and show_tools == "notice":
        summary = "Tool result" + (f": {message.tool_name}" if message.tool_name else "")
        return Part(NOTICE, *render_collapsed(summary, clip(message.text)))
    if kind == "approval":
        tool = message.tool_name or "a tool"
        return Part(
            NOTICE,
            f"The agent wants to run {tool} and waits for approval in Letta; "
            "it cannot answer until then.",
        )
    if kind == "error":
        return Part(NOTICE, clip(f"Letta reported an error: {message.text}"))
    return None


def stop_notice(reason: str | None) -> str | None:
    """What to tell the person when the agent stopped for another reason than finishing."""
    if reason in (None, "end_turn"):
        return None
    texts = {
        "max_steps": "The agent stopped after reaching its step limit (max_steps).",
        "cancelled": "The agent's turn was cancelled.",
        "requires_approval": "The agent is waiting for a tool call to be approved in Letta.",
        "no_tool_call": "The agent stopped without answering (no_tool_call).",
    }
    if reason in texts:
        return texts[reason]
    if "error" in reason or reason in ("invalid_llm_response", "invalid_tool_call"):
        return f"The agent stopped because of an error ({reason})."
    return f"The agent stopped early ({reason})."


def build_parts(
    messages: Sequence[LettaMessage],
    stop_reason: str | None,
    *,
    show_reasoning: str = "off",
    show_tools: str = "off",
    expects_reply: bool = True,
) -> list[Part]:
    """Every Matrix message of one Letta turn, in order; a notice ends it when the agent did
    not stop normally (not repeated when an approval notice already says it)."""
    parts: list[Part] = []
    for message in messages:
        parts += parts_for(message, show_reasoning=show_reasoning, show_tools=show_tools)
    approval = any(m.kind == "approval" for m in messages)
    closing = closing_part(stop_reason, approval, answered(parts) or not expects_reply)
    return [*parts, closing] if closing else parts


def answered(parts: Sequence[Part]) -> bool:
    return any(part.msgtype == TEXT for part in parts)


def closing_part(stop_reason: str | None, approval_told: bool, answered: bool) -> Part | None:
    """The notice ending a turn that did not stop normally (an approval notice says it), or
    that ended without a word for the person (silence would look like a lost message)."""
    notice = stop_notice(stop_reason)
    if notice is None:
        return None if answered or approval_told else Part(NOTICE, NO_REPLY)
    if approval_told and stop_reason == "requires_approval":
        return None
    return Part(NOTICE, notice)


def error_text(error: LettaError, timeout: float) -> str:
    """A short notice for a failed Letta request (no URLs: people see it)."""
    status = f" (HTTP {error.status})" if error.status else ""
    match error.kind:
        case "auth":
            return f"Letta refused the bridge's credentials{status}; an admin must check them."
        case "not_found":
            return "This agent does not exist in Letta any more."
        case "busy":
            return f"The agent stayed busy with another request{status}."
        case "validation" | "client":
            return f"Letta rejected the message{status}."
        case "server":
            return f"Letta had an internal error{status}."
        case "timeout":
            return f"Letta did not answer within {timeout:.0f} s; the message was not retried."
        case "connection":
            return "Letta could not be reached."
        case _:
            return "Letta sent an answer the bridge could not read."


def duration(seconds: float) -> str:
    """'45 s', '10 min', '2 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


def waiting_text(error: LettaError, window: float) -> str:
    """The notice shown once while a message keeps being retried."""
    if error.kind == "busy":
        why = "The agent is busy with another request"
    else:
        why = error_text(error, 0).removesuffix(".")
    return f"{why}; your message is queued and will be retried for up to {duration(window)}."


def gave_up_text(error: LettaError, window: float) -> str:
    return (
        f"{error_text(error, 0)} Gave up after retrying for {duration(window)}; "
        "the agent did not get this message."
    )


# --- Matrix content --------------------------------------------------------------------------


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
    content: dict[str, Any] = {"msgtype": part.msgtype, "body": part.body}
    if part.html:
        content["format"] = HTML
        content["formatted_body"] = part.html
    if relation:
        content["m.relates_to"] = dict(relation)
    content["m.mentions"] = {"user_ids": list(mentions)} if mentions else {}
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
    return _fit(content)


def _fit(content: dict[str, Any]) -> dict[str, Any]:
    # Parts are cut to size, but HTML can outgrow its text (many short links): without it the
    # event fits, and the text is all there.
    return content if event_bytes(content) <= EVENT_BYTES else without_html(content)
