"""Commands for every permitted user: help, status, version, agents, room, space."""

from __future__ import annotations

import platform
import time
from importlib.metadata import version as package_version
from typing import Any

import aiohttp
from mautrix.errors import MatrixRequestError

from .. import __version__
from ..db.agent import ACTIVE, AgentRow
from ..errors import scrub
from ..letta.errors import LettaError
from ..matrix import rooms as mx
from ..permissions import ADMIN
from .args import CommandResult, bold_name, md_code, md_escape
from .context import CommandContext, room_link
from .reasons import failure
from .registry import REGISTRY, command
from .state import last_reconcile, space_id

MAX_LISTED = 40  # agents listed by `agents` before asking for a filter


@command("help", args="[command]", help="List the commands, or explain one.", group="info")
async def cmd_help(ctx: CommandContext) -> CommandResult:
    name = ctx.args.get(0)
    if name:
        cmd = REGISTRY.get(name.removeprefix(ctx.prefix).strip())
        if cmd is None:
            hints = REGISTRY.close_names(name)
            hint = f" Did you mean {', '.join(ctx.code(h) for h in hints)}?" if hints else ""
            return CommandResult.error(f"No command {md_code(name)}.{hint}")
        level = " (admins only)" if cmd.level == "admin" else ""
        return CommandResult(f"{cmd.usage(ctx.prefix)}{level}\n\n{cmd.help}")
    return CommandResult(help_text(ctx.level, ctx.prefix))


def help_text(level: str, prefix: str, *, short: bool = False) -> str:
    """The command list for a user of ``level``; ``short`` (the greeting) lists names only."""
    available = REGISTRY.available(level)
    where = (
        "type them here without a prefix"
        if not prefix
        else f"start them with `{prefix}` (no prefix in your management room)"
    )
    head = f"Your level: **{level}**; {where}."
    if short:
        names = ", ".join(f"`{c.name}`" for c in available)
        how = f"`{prefix} help <command>`" if prefix else "`help <command>`"
        return f"{head}\n\nCommands: {names}. Type {how} for details."
    lines = [head, ""]
    for cmd in available:
        admin = " *(admin)*" if cmd.level == "admin" else ""
        lines.append(f"- {cmd.usage(prefix)}: {cmd.help}{admin}")
    return "\n".join(lines)


@command("version", help="Show the appservice version.", group="info")
async def cmd_version(ctx: CommandContext) -> CommandResult:
    return CommandResult(
        f"letta-appservice **{__version__}** (mautrix {package_version('mautrix')}, "
        f"Python {platform.python_version()})"
    )


@command(
    "status",
    help="Homeserver and Letta reachability, agents, pending events, last reconcile, uptime.",
    group="info",
)
async def cmd_status(ctx: CommandContext) -> CommandResult:
    s = ctx.services
    admin = ctx.level == ADMIN  # others get short reasons: errors name internal hosts
    lines = [f"**letta-appservice {__version__}**, up {_duration(time.time() - s.started_at)}"]
    started = time.monotonic()
    try:
        await s.bot_intent.whoami()
        lines.append(f"- Homeserver: reachable ({_ms(started)})")
    except (MatrixRequestError, aiohttp.ClientError, TimeoutError) as e:
        lines.append(f"- Homeserver: **unreachable** ({md_escape(failure(e, admin=admin))})")
    started = time.monotonic()
    try:
        version = await s.letta.health()
        lines.append(f"- Letta: reachable, version {md_escape(version)} ({_ms(started)})")
    except LettaError as e:
        lines.append(f"- Letta: **unreachable** ({md_escape(failure(e, admin=admin))})")
    agents = await s.agents.all()
    active = [a for a in agents if a.state == ACTIVE]
    paused = sum(1 for a in active if a.paused)
    lines.append(
        f"- Agents: {len(active)} bridged, {len(agents) - len(active)} archived, {paused} paused"
    )
    inbox = await s.inbox.counts()
    # This very command is an inbox event in progress: not counted.
    working = max(inbox["processing"] - 1, 0)
    failed = f", {inbox['failed']} failed" if inbox.get("failed") else ""
    lines.append(f"- Inbox: {inbox['pending']} pending, {working} in progress{failed}")
    lines.append(f"- Last reconcile: {_reconcile_line(await last_reconcile(s), admin)}")
    return CommandResult("\n".join(lines))


def _reconcile_line(last: dict[str, Any] | None, admin: bool) -> str:
    if not last:
        return "none yet"
    started, duration = last.get("started_at"), last.get("duration") or 0.0
    ago = f"{_duration(time.time() - started - duration)} ago" if started else "at an unknown time"
    took = f", took {duration:.1f} s"
    if last.get("result") == "error" or last.get("error"):
        if not admin:
            return f"{ago}{took}, **failed** (admins see why)"
        return f"{ago}{took}, **failed**: {md_escape(scrub(str(last.get('error'))))}"
    changes = last.get("changes") or {}
    done = ", ".join(f"{n} {k}" for k, n in sorted(changes.items())) or "no changes"
    return f"{ago}{took}, ok ({done})"


@command("agents", args="[filter]", help="List the agents with their room links.", group="info")
async def cmd_agents(ctx: CommandContext) -> CommandResult:
    needle = (ctx.args.get(0) or "").lower()
    agents = [
        a
        for a in await ctx.services.agents.all()
        if needle in a.name.lower() or needle in a.agent_id.lower()
    ]
    if not agents:
        what = f" matching {md_code(needle)}" if needle else ""
        return CommandResult(f"No agents{what}.")
    # Active agents first, by name: the list people scan for a room to open.
    agents.sort(key=lambda a: (a.state != ACTIVE, a.name.lower()))
    lines = [f"**{len(agents)} agent{'s' if len(agents) != 1 else ''}**"]
    for agent in agents[:MAX_LISTED]:
        lines.append(f"- {_agent_line(agent, ctx.services.domain)}")
    if len(agents) > MAX_LISTED:
        lines.append(f"- … and {len(agents) - MAX_LISTED} more: {ctx.code('agents <filter>')}")
    return CommandResult("\n".join(lines))


def agent_state(agent: AgentRow) -> str:
    if agent.state != ACTIVE:
        return "archived"
    return "paused" if agent.paused else "active"


def _agent_line(agent: AgentRow, domain: str) -> str:
    name = md_escape(agent.name or agent.agent_id)
    label = f"[{name}]({room_link(agent.room_id, domain)})" if agent.room_id else name
    return f"{label}: {agent_state(agent)} (`{agent.agent_id}`)"


@command("room", args="<agent>", help="Invite me to that agent's room.", group="info")
async def cmd_room(ctx: CommandContext) -> CommandResult:
    agent = await ctx.agent()
    if isinstance(agent, CommandResult):
        return agent
    if not agent.room_id:
        return CommandResult.error(f"{bold_name(agent)} has no room yet; try again after a sync.")
    what = f"the room of {bold_name(agent)}" + (" (archived)" if agent.state != ACTIVE else "")
    return await invite_sender(ctx, agent.room_id, what)


@command("space", help="Invite me to the space of agent rooms.", group="info")
async def cmd_space(ctx: CommandContext) -> CommandResult:
    space = await space_id(ctx.services)
    if not space:
        return CommandResult.error("There is no space yet; it is created by the first sync.")
    return await invite_sender(ctx, space, "the space")


async def invite_sender(ctx: CommandContext, room_id: str, what: str) -> CommandResult:
    link = f"[{what}]({room_link(room_id, ctx.services.domain)})"
    if await invite_user(ctx, room_id, ctx.sender) == "already":
        return CommandResult(f"You are already in {link}; nothing changed.")
    return CommandResult(f"Invited you to {link}.")


async def invite_user(ctx: CommandContext, room_id: str, mxid: str) -> str:
    """Invite as the bot: "invited", or "already" when the user is already joined or invited
    (read from the member state: homeservers word their refusals differently)."""
    api = ctx.services.bot_api
    if await mx.membership(api, room_id, mxid) in ("join", "invite"):
        return "already"
    try:
        await mx.invite(api, room_id, mxid)
    except MatrixRequestError as e:
        # A join or invite that raced the check: Synapse says "… is already in the room."
        if e.http_status == 403 and "already" in (e.message or "").lower():
            return "already"
        raise
    return "invited"


def _ms(started: float) -> str:
    return f"{(time.monotonic() - started) * 1000:.0f} ms"


def _duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"
