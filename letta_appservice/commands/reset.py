"""Resetting an agent: archive its room, free its alias, let a reconcile pass make a new one."""

from __future__ import annotations

import logging

from mautrix.errors import MatrixRequestError
from mautrix.types import UserID

from ..db.agent import AgentRow
from ..db.room import ARCHIVED, RoomRow
from ..matrix import rooms as mx
from ..matrix.ids import agent_alias
from ..reconcile.plan import Templates
from .context import Services, room_link
from .state import space_id

log = logging.getLogger("letta_appservice.commands.reset")


async def reset_agent(services: Services, agent: AgentRow) -> str | None:
    """Archive ``agent``'s room and provision a fresh one; returns the new room id (None when
    the pass created none). The old room keeps its history, leaves the space, gets the
    archived suffix, a notice from the puppet and loses the alias, so no pass adopts it."""
    old = agent.room_id

    async def archive() -> None:  # under the scheduler's lock: no pass writes the old room back
        if old is None:
            return
        async with services.puppets.lock(agent.mxid):
            await _archive(services, agent, old)

    await services.scheduler.run_now(full=False, first=archive)
    row = await services.agents.get(agent.agent_id)
    new = row.room_id if row is not None and row.room_id != old else None
    if old is not None:
        text = "A bridge admin reset this agent: this room is archived"
        text += f"; the conversation continues in {room_link(new, services.domain)}" if new else ""
        await _notice(services, agent.mxid, old, text + ".")
    return new


async def _notice(services: Services, puppet: str, room_id: str, text: str) -> None:
    """Best effort: the reset is done whether or not the old room can be told (the puppet may
    have been kicked from it; then the bot tries)."""
    for api in (services.bot_api.user(UserID(puppet)), services.bot_api):
        try:
            await mx.send_notice(api, room_id, text, f"reset-{room_id}")
            return
        except MatrixRequestError as e:
            log.warning("Could not post the reset notice in %s: %s", room_id, e.message)


async def _archive(services: Services, agent: AgentRow, old: str) -> None:
    cfg = services.config.bridge
    api = services.bot_api
    space = await space_id(services)
    if space:
        await mx.put_state(api, space, mx.SPACE_CHILD, {}, old)
    templates = Templates(cfg.displayname_template, cfg.room_name_template, cfg.archived_suffix)
    name = agent.room_name or templates.render(cfg.room_name_template, agent.name, agent.agent_id)
    await mx.put_state(api, old, mx.ROOM_NAME, {"name": name + cfg.archived_suffix})
    alias = agent_alias(cfg.username_template, services.domain, agent.agent_id)
    # Only remove the alias if it still names the old room (a crashed reset may have moved it).
    if await mx.resolve_alias(api, alias) == old:
        await mx.put_state(api, old, "m.room.canonical_alias", {})
        await mx.remove_alias(api, alias)
    await services.rooms.upsert(RoomRow(old, ARCHIVED, agent.agent_id))
    await _clear_mapping(services, agent.agent_id)
    log.info("Reset agent %s: archived its room %s", agent.agent_id, old)


async def _clear_mapping(services: Services, agent_id: str) -> None:
    row = await services.agents.get(agent_id)
    if row is None:
        return
    row.room_id, row.room_name, row.topic, row.in_space = None, None, None, False
    await services.agents.upsert(row)
