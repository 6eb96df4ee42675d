"""Admin command `tools`: an agent's Matrix tools on, off, back to the config, or a new secret."""

from __future__ import annotations

from ..letta.errors import LettaError
from ..permissions import ADMIN
from .args import CommandResult, bold_name, md_code
from .context import CommandContext
from .registry import command

SWITCHES = {"on": True, "off": False, "default": None}


@command(
    "tools",
    args="<agent> [on|off|default|rotate]",
    level=ADMIN,
    help="Show or switch an agent's Matrix tools (default: as the config says), or give it a "
    "new tool secret (`rotate`).",
)
async def cmd_tools(ctx: CommandContext) -> CommandResult:
    agent = await ctx.agent()
    if isinstance(agent, CommandResult):
        return agent
    sync, action = ctx.services.tools, (ctx.args.get(1) or "").lower()
    if sync is None or sync.available is False:
        return CommandResult.error("Matrix tools are off: this Letta server has no tool API.")
    if action and action not in (*SWITCHES, "rotate"):
        return CommandResult.error(
            f"Unknown choice {md_code(action)}: use on, off, default or rotate."
        )
    try:
        if action == "rotate":
            if not await sync.rotate(agent.agent_id):
                return CommandResult.error(f"{bold_name(agent)} has no Matrix tools to rotate.")
            return CommandResult(
                f"{bold_name(agent)} has a new tool secret; the old one no longer works."
            )
        letta_agent = await ctx.services.letta.get_agent(agent.agent_id)
        row = await sync.store.get(agent.agent_id)
        if action:
            has = await sync.switch(letta_agent, SWITCHES[action])
        else:
            has = sync.wanted(letta_agent, row)
    except LettaError as e:
        return CommandResult.error(f"Letta refused or failed: {e}")
    switch = (row.enabled if row else None) if not action else SWITCHES[action]
    why = "as the config says" if switch is None else "switched by an admin"
    state = "has" if has else "does not have"
    return CommandResult(f"{bold_name(agent)} {state} the Matrix tools ({why}).")
