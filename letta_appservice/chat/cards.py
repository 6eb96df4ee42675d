"""Approval cards and stops, as people see and answer them (pure): the card's text, its
decided form, who may decide, and what a reaction or a reply means."""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..letta.models import ToolCall
from ..matrix.format import sanitize_html
from ..matrix.size import clip
from .incoming import strip_reply_fallback

ASKER, USERS, ADMINS = "asker", "users", "admins"  # bridge.approvers
APPROVE_KEY, DENY_KEY, STOP_KEY = "\u2705", "\u274c", "\U0001f6d1"  # ✅ ❌ 🛑
ARGUMENT_CHARS = 4_000
_REPLY = re.compile(r"^\s*(approve|deny)\b[\s:,.!-]*(.*)$", re.IGNORECASE | re.DOTALL)


def reaction_key(content: Mapping[str, Any]) -> tuple[str, str] | None:
    """(target event id, key without emoji variation selectors) of an m.reaction."""
    relates = content.get("m.relates_to")
    if not isinstance(relates, Mapping) or relates.get("rel_type") != "m.annotation":
        return None
    target, key = relates.get("event_id"), relates.get("key")
    if not isinstance(target, str) or not isinstance(key, str):
        return None
    return target, key.replace("\ufe0f", "").strip()


def decision_of_key(key: str) -> bool | None:
    """True for ✅, False for ❌, None for any other reaction."""
    return {APPROVE_KEY: True, DENY_KEY: False}.get(key)


def replied_to(content: Mapping[str, Any]) -> str | None:
    relates = content.get("m.relates_to")
    reply = relates.get("m.in_reply_to") if isinstance(relates, Mapping) else None
    target = reply.get("event_id") if isinstance(reply, Mapping) else None
    return target if isinstance(target, str) else None


def reply_decision(content: Mapping[str, Any]) -> tuple[bool, str] | None:
    """A reply "approve" or "deny [reason]": (approve, reason); None for any other text."""
    body = content.get("body")
    if replied_to(content) is None or not isinstance(body, str):
        return None
    match = _REPLY.match(strip_reply_fallback(body))
    if match is None:
        return None
    return match.group(1).lower() == "approve", " ".join(match.group(2).split())[:500]


def who_may_decide(policy: str, asker: str) -> str:
    if policy == USERS:
        return "anyone here who may use the bridge"
    if policy == ADMINS:
        return "a bridge admin"
    return f"{asker} or a bridge admin"


def _pretty(arguments: str) -> str:
    try:
        text = json.dumps(json.loads(arguments), indent=2, ensure_ascii=False)
    except ValueError:
        text = arguments
    return clip(text, ARGUMENT_CHARS)


def card_text(calls: Sequence[ToolCall], who: str) -> tuple[str, str]:
    """(plain, html) of a card: each call's tool and arguments as code (never rendered as
    markup: an agent chooses them), how to answer and who may."""
    if len(calls) == 1:
        lead = f"The agent wants to run {calls[0].name}:"
        lead_html = f"The agent wants to run <code>{html.escape(calls[0].name)}</code>:"
    else:
        lead = f"The agent wants to run {len(calls)} tools (decided together):"
        lead_html = html.escape(lead)
    plain, rich = [f"🔧 {lead}"], [f"<p>🔧 {lead_html}</p>"]
    for call in calls:
        arguments = _pretty(call.arguments)
        if len(calls) > 1:
            plain.append(f"{call.name}:")
            rich.append(f"<p><code>{html.escape(call.name)}</code>:</p>")
        plain.append(f"```\n{arguments}\n```")
        rich.append(f"<pre><code>{html.escape(arguments)}</code></pre>")
    how = (
        f"React {APPROVE_KEY} to approve or {DENY_KEY} to deny, or reply "
        f'"approve" or "deny <reason>". Who decides: {who}.'
    )
    plain.append(how)
    rich.append(f"<p>{html.escape(how)}</p>")
    return "\n".join(plain), sanitize_html("".join(rich))


def decision_line(decision: str, by: str | None, reason: str | None, at_ms: int | None) -> str:
    """What the card says once decided."""
    if decision == "elsewhere":
        return "Already decided in Letta; nothing was sent from here."
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime((at_ms or 0) / 1000))
    if decision == "approve":
        return f"{APPROVE_KEY} Approved by {by} at {when}."
    why = f": {reason}" if reason else "."
    return f"{DENY_KEY} Denied by {by} at {when}{why}"


def decided_text(card: tuple[str, str | None], line: str) -> tuple[str, str]:
    """The card with its decision instead of the instructions."""
    plain, rich = card
    plain = plain.rsplit("\n", 1)[0] + "\n" + line
    head = (rich or "").rsplit("<p>", 1)[0]
    return plain, sanitize_html(f"{head}<p><strong>{html.escape(line)}</strong></p>")


def stopped_text(by: str, answered: bool) -> str:
    if answered:
        return f"{STOP_KEY} Stopped by {by}; the answer above is all there is."
    return f"{STOP_KEY} Stopped by {by} before the agent answered."
