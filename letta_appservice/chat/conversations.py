"""Context per room: which Letta conversation holds a Matrix room's (or thread's) exchange
with an agent, so what Alice says in a DM never reaches the agent's answer to Bob elsewhere."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..db.letta_conversation import LettaConversationStore
from ..letta.conversations import TurnCalls
from ..letta.errors import LettaError

log = logging.getLogger("letta_appservice.conversation")
ROOM, THREAD, OFF = "room", "thread", "off"
GONE = (
    "This room's conversation with the agent was deleted in Letta; the agent starts a new one "
    "here, without what was said before."
)


def gone(error: LettaError, conversation_id: str | None) -> bool:
    """Whether ``error`` says the conversation itself no longer exists in Letta (deleted
    there): 404 "Conversation not found" on 0.16.8, not an agent that is gone."""
    if conversation_id is None or error.kind != "not_found":
        return False
    return "agent not found" not in error.message.lower()


def thread_of(relation: Mapping[str, Any]) -> str:
    """The thread root a reply goes into, or '' outside threads."""
    if relation.get("rel_type") == "m.thread":
        return str(relation.get("event_id") or "")
    return ""


class RoomConversations:
    """A room's conversation is made on its first message and stored; None (the agent's own
    history) where conversations are off or the Letta server has none."""

    def __init__(self, calls: TurnCalls, store: LettaConversationStore, mode: str) -> None:
        self.calls = calls
        self.store = store
        self.mode = mode

    async def enabled(self) -> bool:
        """Raises LettaError while Letta cannot say whether it has conversations."""
        return self.mode != OFF and await self.calls.supported()

    async def of(self, agent_id: str, room_id: str, relation: Mapping[str, Any]) -> str | None:
        """The conversation of the room (or its thread), made now if it has none."""
        if not await self.enabled():
            return None
        thread = thread_of(relation) if self.mode == THREAD else ""
        found = await self.store.get(agent_id, room_id, thread)
        if found is not None:
            return found
        return await self._make(agent_id, room_id, thread)

    async def renew(self, agent_id: str, room_id: str, relation: Mapping[str, Any]) -> str:
        """A new conversation in place of the room's (or thread's) that Letta no longer has."""
        thread = thread_of(relation) if self.mode == THREAD else ""
        return await self._make(agent_id, room_id, thread)

    async def _make(self, agent_id: str, room_id: str, thread: str) -> str:
        made = await self.calls.create(agent_id)
        await self.store.put(agent_id, room_id, thread, made)
        where = f"{room_id} thread {thread}" if thread else room_id
        log.info("%s talks to %s in conversation %s", where, agent_id, made)
        return made

    async def start_fresh(self, room_id: str, agent_id: str | None = None) -> bool:
        """Forget the room's conversations (with one agent, or all; threads too): the next
        message makes a new one. False where there are no conversations to switch."""
        if not await self.enabled():
            return False
        await self.store.forget(room_id, agent_id)
        log.info("Room %s starts fresh conversations (%s)", room_id, agent_id or "every agent")
        return True
