"""What a reconcile pass changed, in words: its summary plus the agent rows before and after."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..db.agent import ACTIVE, AgentRow
from ..errors import scrub
from .args import md_escape

MAX_NAMED = 10  # agents named per kind of change before "and N more"
_PAST = {
    "create": "created",
    "update": "updated",
    "archive": "archived",
    "restore": "restored",
    "repair": "repaired",
    "record": "recorded",
}


def summary_json(summary: Any) -> dict[str, Any]:
    to_json = getattr(summary, "to_json", None)
    return dict(to_json()) if callable(to_json) else dict(summary or {})


def describe_pass(summary: Any, before: Sequence[AgentRow], after: Sequence[AgentRow]) -> str:
    """Markdown for the sync reply: which agents were added, renamed, archived, restored, and
    the pass's own counts (repairs have no visible difference in the rows)."""
    data = summary_json(summary)
    lines = diff_rows(before, after)
    changes: dict[str, int] = data.get("changes") or {}
    counts = ", ".join(f"{n} {_PAST.get(k, k)}" for k, n in sorted(changes.items()))
    bridged = f"{data['agents']} agents bridged" if "agents" in data else ""
    if data.get("result") == "error":
        done = f"; done before it stopped: {counts}" if counts else ""
        left = f"; {data['failed']} agent(s) left for the next pass" if data.get("failed") else ""
        head = f"**Sync failed**: {md_escape(scrub(str(data.get('error'))))}{done}{left}."
    elif counts:
        head = f"**Sync done**: {counts} ({bridged})." if bridged else f"**Sync done**: {counts}."
    else:
        head = (
            f"**Sync done**: no changes ({bridged})." if bridged else "**Sync done**: no changes."
        )
    return "\n".join([head, *(f"- {line}" for line in lines)])


def diff_rows(before: Sequence[AgentRow], after: Sequence[AgentRow]) -> list[str]:
    """One line per kind of visible change between two snapshots of the agent table."""
    old = {a.agent_id: a for a in before}
    added, renamed, archived, restored = [], [], [], []
    for row in after:
        prev = old.get(row.agent_id)
        name = f"**{md_escape(row.name or row.agent_id)}**"
        if prev is None or (prev.room_id is None and row.room_id is not None):
            added.append(name)
        elif prev.state == ACTIVE and row.state != ACTIVE:
            archived.append(name)
        elif prev.state != ACTIVE and row.state == ACTIVE:
            restored.append(name)
        elif prev.name != row.name:
            renamed.append(f"{md_escape(prev.name)} → {name}")
    lines = []
    for label, names in (
        ("New", added),
        ("Renamed", renamed),
        ("Archived (deleted in Letta)", archived),
        ("Restored", restored),
    ):
        if names:
            more = f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else ""
            lines.append(f"{label}: {', '.join(names[:MAX_NAMED])}{more}")
    return lines
