"""Admin commands: sync, invite, pause, resume, mode, reset, cancel (mode without arguments,
and cancelling one's own request, are for every user)."""

from __future__ import annotations

import re

from mautrix.errors import MatrixRequestError

from ..chat.loops import bots_key
from ..db.agent import ACTIVE, AgentRow
from ..db.room import AGENT, INVITED
from ..permissions import ADMIN, USER
from .args import CommandResult, bold_name, md_code, resolve_agent
from .context import CommandContext, room_link
from .info import invite_user
from .registry import command
from .reset import reset_agent
from .state import space_id
from .summary import describe_pass, summary_json

_MXID = re.compile(r"^@[^:\s]+:[A-Za-z0-9.\-\[\]:]+$")
MODES = {
    "open": "every message in this room goes to the agent",
    "mention": "only messages that mention the agent go to it",
    "off": "no message goes to the agent",
}


@command("sync", level=ADMIN, help="Reconcile with Letta now and report what changed.")
async def cmd_sync(ctx: CommandContext) -> CommandResult:
    before = await ctx.services.agents.all()
    summary = await ctx.services.scheduler.run_now(full=True)
    text = describe_pass(summary, before, await ctx.services.agents.all())
    return CommandResult(text, ok=summary_json(summary).get("result") != "error")


@command(
    "invite",
    args="<mxid> <agent|all>",
    level=ADMIN,
    help="Invite someone to an agent's room, or (`all`) to every agent room and the space.",
)
async def cmd_invite(ctx: CommandContext) -> CommandResult:
    mxid, target = ctx.args.words[0], ctx.args.words[1]
    if not _MXID.match(mxid):
        return CommandResult.error(f"{md_code(mxid)} is not a Matrix ID like `@name:server`.")
    if target.lower() != "all":
        agent = await ctx.agent(1)
        if isinstance(agent, CommandResult):
            return agent
        if not agent.room_id:
            return CommandResult.error(f"{bold_name(agent)} has no room yet.")
        room = f"[the room of {bold_name(agent)}]({room_link(agent.room_id, ctx.services.domain)})"
        if await invite_user(ctx, agent.room_id, mxid) == "already":
            return CommandResult(f"{md_code(mxid)} is already in {room}; nothing changed.")
        return CommandResult(f"Invited {md_code(mxid)} to {room}.")
    rooms = [a.room_id for a in await ctx.services.agents.all() if a.state == ACTIVE and a.room_id]
    space = await space_id(ctx.services)
    outcome: dict[str, list[str]] = {"invited": [], "already": []}
    failed: list[str] = []
    for room_id in [*rooms, *([space] if space else [])]:
        label = "the space" if room_id == space else "agent room"
        try:
            outcome[await invite_user(ctx, room_id, mxid)].append(label)
        except MatrixRequestError as e:
            failed.append(f"{room_id} ({e.errcode or e.http_status})")
    text = f"Invited {md_code(mxid)} to {_count_rooms(outcome['invited'])}"
    if outcome["already"]:
        text += f"; already in {_count_rooms(outcome['already'])}"
    if not space:
        text += "; there is no space yet"
    if failed:
        text += f"; **failed** for {', '.join(failed)}"
    return CommandResult(text + ".", ok=not failed)


def _count_rooms(labels: list[str]) -> str:
    """``["agent room", "agent room", "the space"]`` -> "2 agent rooms and the space"."""
    n = labels.count("agent room")
    parts = [f"{n} agent room{'s' if n != 1 else ''}"] if n or "the space" not in labels else []
    return " and ".join([*parts, *(["the space"] if "the space" in labels else [])])


@command(
    "pause",
    args="<agent>",
    level=ADMIN,
    help="Stop routing messages to an agent; its rooms answer with a notice meanwhile.",
)
async def cmd_pause(ctx: CommandContext) -> CommandResult:
    return await _set_paused(ctx, True)


@command("resume", args="<agent>", level=ADMIN, help="Route messages to a paused agent again.")
async def cmd_resume(ctx: CommandContext) -> CommandResult:
    return await _set_paused(ctx, False)


async def _set_paused(ctx: CommandContext, paused: bool) -> CommandResult:
    agent = await ctx.agent()
    if isinstance(agent, CommandResult):
        return agent
    if agent.paused == paused:
        state = "paused" if paused else "not paused"
        return CommandResult(f"{bold_name(agent)} is already {state}; nothing changed.")
    agent.paused = paused
    await ctx.services.agents.upsert(agent)
    if paused:
        return CommandResult(
            f"Paused {bold_name(agent)}: messages to it now get a notice instead of an answer. "
            f"Undo with {ctx.code('resume ' + await _short(ctx, agent))}."
        )
    return CommandResult(f"Resumed {bold_name(agent)}: it answers messages again.")


@command(
    "mode",
    args="[open|mention|off]",
    level=USER,
    help="Show (anyone) or set (admins) when the agent answers in this room.",
)
async def cmd_mode(ctx: CommandContext) -> CommandResult:
    mode = (ctx.args.get(0) or "").lower()
    services = ctx.services
    room = await services.rooms.get(ctx.room_id)
    if room is None or room.kind not in (AGENT, INVITED):
        return CommandResult.error(
            "This room is not bridged to an agent; type `mode` in an agent's room."
        )
    if not mode:
        if room.mode:
            return CommandResult(f"Mode of this room: **{room.mode}**: {MODES[room.mode]}.")
        return CommandResult(
            "This room has the default mode: in an agent's own room or a direct chat every "
            "message goes to the agent, elsewhere only messages that mention it."
        )
    if ctx.level != ADMIN:
        return CommandResult.error("Only bridge admins change the mode of a room.")
    if mode not in MODES:
        return CommandResult.error(f"Unknown mode {md_code(mode)}: use open, mention or off.")
    if room.mode == mode:
        return CommandResult(f"This room is already in **{mode}** mode: {MODES[mode]}.")
    before = room.mode or "default"
    room.mode = mode
    await services.rooms.upsert(room)
    return CommandResult(f"Mode of this room: **{mode}** (was {before}): {MODES[mode]}.")


@command(
    "bots",
    args="<on|off>",
    level=ADMIN,
    help="Let other bots and bridges' users talk to the agents in this room, or not (default).",
)
async def cmd_bots(ctx: CommandContext) -> CommandResult:
    switch = (ctx.args.get(0) or "").lower()
    if switch not in ("on", "off"):
        return CommandResult.error(f"Unknown switch {md_code(switch)}: use on or off.")
    room = await ctx.services.rooms.get(ctx.room_id)
    if room is None or room.kind not in (AGENT, INVITED):
        return CommandResult.error("This room is not bridged to an agent; type `bots` there.")
    if switch == "on":
        await ctx.services.state.set(bots_key(ctx.room_id), True)
        return CommandResult(
            "Bots may talk to the agents in this room now. The loop guard still stops "
            "exchanges that run on without people."
        )
    await ctx.services.state.delete(bots_key(ctx.room_id))
    return CommandResult("Bots are ignored in this room again (the default).")


@command(
    "reset",
    args="<agent> [--yes]",
    level=ADMIN,
    help="Archive an agent's room and give it a fresh one (asks to repeat with `--yes`).",
)
async def cmd_reset(ctx: CommandContext) -> CommandResult:
    agent = await ctx.agent()
    if isinstance(agent, CommandResult):
        return agent
    if agent.state != ACTIVE:
        return CommandResult.error(f"{bold_name(agent)} is archived; only active agents reset.")
    if "--yes" not in ctx.args.flags:
        room = "Its room"
        if agent.room_id:
            room = f"[Its room]({room_link(agent.room_id, ctx.services.domain)})"
        name = await _short(ctx, agent)
        return CommandResult(
            f"Reset {bold_name(agent)}? {room} gets archived (history stays "
            f"there) and a fresh room is made in the space. Nothing changed yet: repeat with "
            f"{ctx.code(f'reset {name} --yes')} to do it."
        )
    new_room = await reset_agent(ctx.services, agent)
    if not new_room:
        return CommandResult.error(
            f"Archived the old room of {bold_name(agent)}, but no new room was created; "
            f"see {ctx.code('status')} and try {ctx.code('sync')}."
        )
    return CommandResult(
        f"Reset {bold_name(agent)}: its old room is archived and left the space; "
        f"[its new room]({room_link(new_room, ctx.services.domain)}) is in the space."
    )


@command(
    "cancel",
    args="<agent>",
    level=USER,
    help="Cancel the agent's running Letta request (users: only a request of their own).",
)
async def cmd_cancel(ctx: CommandContext) -> CommandResult:
    agent = await ctx.agent()
    if isinstance(agent, CommandResult):
        return agent
    services = ctx.services
    if ctx.level != ADMIN:
        job = services.conversations.running(agent.agent_id)
        if job is None or job.sender != ctx.sender:
            return CommandResult.error(
                f"{bold_name(agent)} is not answering a message of yours; you may cancel only "
                "your own requests."
            )
        notice = f"Cancelled by {ctx.sender}; the agent's answer was not waited for."
        await services.conversations.cancel(agent.agent_id, notice)
        return CommandResult(f"Cancelled your request to {bold_name(agent)}.")
    if not await services.conversations.cancel(agent.agent_id):
        return CommandResult(
            f"{bold_name(agent)} had no request running here; Letta was asked to cancel any "
            "run of it anyway."
        )
    return CommandResult(f"Cancelled the running request of {bold_name(agent)}.")


async def _short(ctx: CommandContext, agent: AgentRow) -> str:
    """How to name the agent in a suggested command: its name when that finds it, else its id."""
    name = agent.name
    if not name or '"' in name or "--" in name:
        return agent.agent_id
    found = resolve_agent(name, await ctx.services.agents.all())
    if isinstance(found, AgentRow) and found.agent_id == agent.agent_id:
        return f'"{name}"' if " " in name else name
    return agent.agent_id
