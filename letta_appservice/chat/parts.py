"""What Letta's answer becomes in Matrix: the parts of a turn, its closing notice and the
notices for failed requests (pure)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ..letta.errors import LettaError
from ..letta.models import LettaMessage, ToolCall
from ..matrix.format import FILE, IMAGE, NOTICE, TEXT, render_collapsed, render_markdown
from ..matrix.size import clip, split_markdown
from .attachments import extract
from .cards import card_text

NO_REPLY = "The agent finished its turn without a reply."
ATTACHMENT = "letta.attachment"  # msgtype of an attachment not uploaded yet (``source`` set)


@attrs.frozen
class Part:
    """One Matrix message of a reply: an assistant text, a collapsed notice, a notice, or an
    image or file the agent gave (``url``: its mxc URI once uploaded)."""

    msgtype: str
    body: str
    html: str | None = None
    calls: tuple[ToolCall, ...] = ()  # an approval card: the tool calls it decides
    source: str = ""  # an ATTACHMENT: the data: URI or Letta URL it comes from
    url: str = ""
    mimetype: str = ""
    size: int = 0

    def to_json(self) -> dict[str, Any]:
        raw: dict[str, Any] = {"msgtype": self.msgtype, "body": self.body, "html": self.html}
        if self.calls:
            raw["calls"] = [attrs.asdict(call) for call in self.calls]
        for field in ("source", "url", "mimetype", "size"):
            if getattr(self, field):
                raw[field] = getattr(self, field)
        return raw

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Part:
        calls = tuple(ToolCall(**call) for call in raw.get("calls") or ())
        media = {k: raw[k] for k in ("source", "url", "mimetype", "size") if k in raw}
        return cls(raw["msgtype"], raw["body"], raw.get("html"), calls, **media)


def _pretty_arguments(arguments: str | None) -> str:
    if not arguments:
        return ""
    try:
        return json.dumps(json.loads(arguments), indent=2, ensure_ascii=False)
    except ValueError:
        return arguments


def parts_for(
    message: LettaMessage,
    *,
    show_reasoning: str,
    show_tools: str,
    approvers: str = "",
    attach: str | None = None,
) -> list[Part]:
    """The Matrix messages for one Letta message (none when it is not shown). A long answer
    becomes several messages, a long reasoning or tool notice is clipped: an event over the
    homeserver's size limit would be refused, and the answer lost. ``attach``: the Letta
    server's URL when images and files in answers and tool results become attachments (after
    the text; see chat/attachments.py), None to leave them as written."""
    kind = message.kind
    refs = []
    if attach is not None and kind in ("assistant", "tool_return"):
        text, refs = extract(message.text, attach)
        message = attrs.evolve(message, text=text)
    files = [Part(ATTACHMENT, ref.label, source=ref.source) for ref in refs]
    if kind == "assistant":
        rendered = (render_markdown(piece) for piece in split_markdown(message.text))
        return [*(Part(TEXT, plain, html) for plain, html in rendered if plain), *files]
    if files:  # an image a tool made is shown even where tool results are not
        return [*_notice_list(message, show_reasoning, show_tools), *files]
    if kind == "approval" and message.calls and approvers:
        # A card people answer in the room (``approvers``: who may).
        return [Part(NOTICE, *card_text(message.calls, approvers), calls=message.calls)]
    return _notice_list(message, show_reasoning, show_tools)


def _notice_list(message: LettaMessage, show_reasoning: str, show_tools: str) -> list[Part]:
    part = _notice_for(message, show_reasoning=show_reasoning, show_tools=show_tools)
    return [part] if part is not None else []


def fresh(parts: Sequence[Part], seen: set[str]) -> list[Part]:
    """``parts`` without attachments the turn had already (an agent repeating the image its
    tool made posts it once); ``seen`` is updated."""
    out = []
    for part in parts:
        if part.source in seen:
            continue
        if part.source:
            seen.add(part.source)
        out.append(part)
    return out


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
    approvers: str = "",
    attach: str | None = None,
) -> list[Part]:
    """Every Matrix message of one Letta turn, in order; a notice ends it when the agent did
    not stop normally (not repeated when an approval notice already says it)."""
    parts: list[Part] = []
    show = {"show_reasoning": show_reasoning, "show_tools": show_tools, "approvers": approvers}
    seen: set[str] = set()
    for message in messages:
        parts += fresh(parts_for(message, **show, attach=attach), seen)
    approval = any(m.kind == "approval" for m in messages)
    closing = closing_part(stop_reason, approval, answered(parts) or not expects_reply)
    return [*parts, closing] if closing else parts


def answered(parts: Sequence[Part]) -> bool:
    return any(part.msgtype in (TEXT, IMAGE, FILE, ATTACHMENT) for part in parts)


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
    if error.kind == "busy" and "PENDING_APPROVAL" in error.message:
        why = "The agent waits for a decision on a tool call (its card above)"
    elif error.kind == "busy":
        why = "The agent is busy with another request"
    else:
        why = error_text(error, 0).removesuffix(".")
    return f"{why}; your message is queued and will be retried for up to {duration(window)}."


def gave_up_text(error: LettaError, window: float) -> str:
    return (
        f"{error_text(error, 0)} Gave up after retrying for {duration(window)}; "
        "the agent did not get this message."
    )
