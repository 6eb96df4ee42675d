"""What a command reads and answers: its parsed arguments, the ``<agent>`` argument resolved
against the stored agents, and the Markdown result (pure)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

import attrs

from ..db.agent import ACTIVE, AgentRow
from ..matrix.ids import agent_id_part

MAX_MATCHES = 5  # close matches listed when an agent or command is not found


@attrs.frozen
class CommandResult:
    """What the user is told: Markdown text; ``ok`` is False for refusals and bad input."""

    text: str
    ok: bool = True

    @classmethod
    def error(cls, text: str) -> CommandResult:
        return cls(text, ok=False)


@attrs.frozen
class Args:
    """Parsed arguments: positional words and ``--flags``."""

    words: tuple[str, ...] = ()
    flags: frozenset[str] = frozenset()

    def get(self, index: int, default: str | None = None) -> str | None:
        return self.words[index] if index < len(self.words) else default


# --- <agent> arguments -------------------------------------------------------------------------


def resolve_agent(query: str, agents: Sequence[AgentRow]) -> AgentRow | CommandResult:
    """The agent an ``<agent>`` argument names: its id (with or without ``agent-``), puppet
    mxid, room id, exact name, or a unique case-insensitive name prefix (active agents
    first). Unknown or ambiguous -> an error listing close matches."""
    q = query.strip()
    ql = q.lower()
    if not q:
        return CommandResult.error("Name an agent: its name, id or Matrix ID.")
    for agent in agents:
        if ql in (agent.agent_id.lower(), agent.mxid.lower(), (agent.room_id or "").lower()):
            return agent
    if not q.startswith(("agent-", "@")):  # the id without its "agent-"
        part = agent_id_part(q)
        by_uuid = [a for a in agents if agent_id_part(a.agent_id) == part]
        if len(by_uuid) == 1:
            return by_uuid[0]
    exact = [a for a in agents if a.name.lower() == ql]
    if len(exact) == 1:
        return exact[0]
    if len(exact) > 1:
        return _ambiguous(q, exact)
    prefixed = [a for a in agents if a.name.lower().startswith(ql)]
    active = [a for a in prefixed if a.state == ACTIVE]
    # An archived agent only wins a prefix when no active agent shares it.
    candidates = active or prefixed
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        return _ambiguous(q, candidates)
    close = close_agents(q, agents)
    hint = f" Close matches: {', '.join(agent_label(a) for a in close)}." if close else ""
    return CommandResult.error(f"No agent matches {md_code(q)}.{hint} Type `agents` to list them.")


def close_agents(query: str, agents: Sequence[AgentRow]) -> list[AgentRow]:
    """Agents whose name contains the query or looks like it (typos), best first."""
    ql = query.lower()
    names = {a.name.lower(): a for a in agents}
    found = [a for a in agents if ql in a.name.lower()]
    for name in difflib.get_close_matches(ql, list(names), n=MAX_MATCHES, cutoff=0.5):
        if names[name] not in found:
            found.append(names[name])
    return found[:MAX_MATCHES]


def _ambiguous(query: str, matches: Sequence[AgentRow]) -> CommandResult:
    listed = ", ".join(agent_label(a) for a in matches[:MAX_MATCHES])
    more = f" and {len(matches) - MAX_MATCHES} more" if len(matches) > MAX_MATCHES else ""
    return CommandResult.error(
        f"{md_code(query)} matches {len(matches)} agents: {listed}{more}. "
        "Type more of the name, or use the agent id. Nothing changed."
    )


def agent_label(agent: AgentRow) -> str:
    """``**Name** (`agent-…`)``: how an agent is named in lists of matches."""
    return f"{bold_name(agent)} (`{agent.agent_id}`)"


def bold_name(agent: AgentRow) -> str:
    """``**Name**``: how an agent is named in replies about it."""
    return f"**{md_escape(agent.name or agent.agent_id)}**"


def md_code(text: str, limit: int = 100) -> str:
    """User input echoed literally: on one line, shortened, in an inline code span that no
    backtick inside it can close (a crafted argument must not become bold text or a link
    in the bot's reply)."""
    text = " ".join(text.split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if not text or text[0] == "`" or text[-1] == "`" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def md_escape(text: str) -> str:
    """Text shown literally in Markdown."""
    # Agent names are user data: keep Markdown characters in them literal.
    return "".join("\\" + c if c in "\\`*_[]<>#|~" else c for c in text)
