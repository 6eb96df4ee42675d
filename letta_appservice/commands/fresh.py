"""`new`: a room starts a fresh Letta conversation (any permitted user, in that room)."""

from __future__ import annotations

from ..db.room import AGENT, INVITED
from .args import CommandResult, bold_name
from .context import CommandContext
from .registry import command

ONE_HISTORY = (
    "Agents here keep one history across all their rooms (this Letta server has no "
    "conversations, or the bridge has them switched off): there is nothing to start afresh."
)


@command(
    "new",
    args="[agent]",
    help="Typed in a room with agents: start a fresh conversation there (with every agent of "
    "the room, or the one named); they no longer see what was said before.",
)
async def cmd_new(ctx: CommandContext) -> CommandResult:
    room = await ctx.services.rooms.get(ctx.room_id)
    if room is None or room.kind not in (AGENT, INVITED):
        return CommandResult.error(f"Type {ctx.code('new')} in a room with an agent.")
    agent_id, who = None, "the agents here"
    if ctx.args.get(0):
        agent = await ctx.agent(0)
        if isinstance(agent, CommandResult):
            return agent
        agent_id, who = agent.agent_id, bold_name(agent)
    if not await ctx.services.room_conversations.start_fresh(ctx.room_id, agent_id):
        return CommandResult.error(ONE_HISTORY)
    return CommandResult(
        f"Started a fresh conversation: the next message begins a new one with {who}, "
        "without what was said in this room before."
    )
