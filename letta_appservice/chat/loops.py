"""Agents must not answer bots that answer agents: who counts as a bot, and a per-room guard
that stops any exchange running on without people, whatever the permissions admit.

- **Declared bots** are not routed unless an admin allowed bots in the room (`bots on`):
  users matching ``bridge.bot_users``, and messages carrying a bridge's marker in their content
  (``MARKER``, which every letta-appservice puts on its puppets' messages, so two instances on
  one server never feed each other; mautrix and Beeper bridge keys).
- **The loop guard** holds for every sender. An exchange is a run of messages that answer the
  bridge (a reply to, or a mention of, one of its puppets; every agent reply mentions whom it
  answers, so a bot answering it does too) or come from an allowed bot, each within
  ``CHAIN_GAP`` of the one before. After ``MAX_CHAIN`` of them in a row, or ``MAX_TURNS`` messages
  passed on in a room within ``RATE_WINDOW`` (any kind: the backstop for bots that neither reply
  nor mention), further ones are not passed on and the room is told once. A person's message of
  another kind, or ``CHAIN_GAP`` of quiet, ends the exchange.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import attrs

log = logging.getLogger("letta_appservice.loops")
MARKER = "org.letta.appservice"  # content key of every message the bridge's users post
# Content keys that bridges and bots put on their messages (a prefix, or an exact key).
_BOT_KEYS = (MARKER, "com.beeper.bridge", "fi.mau.")
_HUMAN_KEYS = frozenset({"fi.mau.double_puppet_source"})  # a person writing through a bridge
MAX_CHAIN = 8
# Machine pace: bots and agents answer each other within seconds; a person reading an answer
# and typing a reply takes longer, so a person's replies and mentions never make a chain.
CHAIN_GAP = 20.0  # seconds
MAX_TURNS = 60  # a lively room of people stays below; a loop that evades the chain does not
RATE_WINDOW = 300.0  # seconds
ROUTE, DROP, TELL = "route", "drop", "tell"
VERDICTS_KEPT = 10_000
LOOP_NOTICE = (
    "This room looks like it is in a loop ({why}), so agents stop answering such messages "
    "for now. Write without replying to or mentioning an agent to start afresh; an admin can "
    "allow other bots here with `{prefix} bots on`."
)


class State(Protocol):
    async def get(self, key: str, default: Any = None) -> Any: ...

    async def set(self, key: str, value: Any) -> None: ...

    async def delete(self, key: str) -> None: ...


def bots_key(room_id: str) -> str:
    """The bridge_state key of a room where an admin allowed bots (`bots on`)."""
    return f"bots_allowed:{room_id}"


def has_bot_marker(content: Mapping[str, Any]) -> bool:
    """The message says it was posted by a bridge or bot (not a person relayed by one)."""
    return any(
        key.startswith(_BOT_KEYS) and key not in _HUMAN_KEYS
        for key in content
        if isinstance(key, str)
    )


def answers_bridge(content: Mapping[str, Any], is_ours: Callable[[str], bool]) -> bool:
    """A reply to, or a mention of, one of the bridge's puppets (``is_ours``)."""
    mentions = content.get("m.mentions")
    users = mentions.get("user_ids") if isinstance(mentions, Mapping) else None
    if isinstance(users, list) and any(isinstance(u, str) and is_ours(u) for u in users):
        return True
    relates = content.get("m.relates_to")
    in_reply = relates.get("m.in_reply_to") if isinstance(relates, Mapping) else None
    # A reply's fallback quotes its author: "> <@agent_…:server> …".
    body = content.get("body")
    if isinstance(in_reply, Mapping) and isinstance(body, str) and body.startswith("> <@"):
        return is_ours(body[3 : body.find(">", 3)])
    return False


@attrs.define
class _Room:
    chain: int = 0
    last: float = 0.0
    passed: deque[float] = attrs.field(factory=deque)
    told: bool = False


class LoopGuard:
    """Per room, in memory (a restart forgets: it only ever lets an exchange start afresh)."""

    def __init__(
        self,
        *,
        bot_users: Iterable[str] = (),
        state: State | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bot_users = [re.compile(p) for p in bot_users]
        self._state = state
        self._clock = clock
        self._rooms: dict[str, _Room] = {}
        # Verdicts by event: an event retried (Letta or the homeserver down) counts once.
        self._verdicts: OrderedDict[str, tuple[str, str]] = OrderedDict()

    def is_bot(self, sender: str, content: Mapping[str, Any]) -> bool:
        """A declared bot: a configured bot user, or a message with a bridge's marker."""
        return has_bot_marker(content) or any(p.search(sender) for p in self._bot_users)

    async def bots_allowed(self, room_id: str) -> bool:
        return self._state is not None and bool(await self._state.get(bots_key(room_id)))

    def admit(self, room_id: str, event_id: str, *, chained: bool) -> tuple[str, str]:
        """Whether a message for the room's agents is passed on: (ROUTE | DROP | TELL, why).
        ``chained``: it answers the bridge or comes from an allowed bot. TELL: not passed
        on, and the room should hear why (once per exchange)."""
        if event_id not in self._verdicts:
            self._verdicts[event_id] = self._judge(room_id, chained)
            while len(self._verdicts) > VERDICTS_KEPT:
                self._verdicts.popitem(last=False)
        return self._verdicts[event_id]

    def _judge(self, room_id: str, chained: bool) -> tuple[str, str]:
        now, room = self._clock(), self._rooms.setdefault(room_id, _Room())
        while room.passed and now - room.passed[0] > RATE_WINDOW:
            room.passed.popleft()
        if not chained or now - room.last > CHAIN_GAP:
            room.chain = 0
        if chained:
            room.chain, room.last = room.chain + 1, now
        why = ""
        if room.chain > MAX_CHAIN:
            why = f"{MAX_CHAIN} answers in a row"
        elif len(room.passed) >= MAX_TURNS:
            why = f"{MAX_TURNS} messages for agents within {RATE_WINDOW / 60:.0f} minutes"
        if not why:
            room.passed.append(now)
            room.told = False
            return ROUTE, ""
        if room.told:
            return DROP, why
        room.told = True
        log.warning("Loop guard in %s: %s; not passed on", room_id, why)
        return TELL, why
