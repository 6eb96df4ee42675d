"""Matrix events in tests: a pushed message to feed the inbox, and predicates that pick events
out of what a user has seen (for `MatrixUser.wait_for_event`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Event = dict[str, Any]


def message(n: int, room: str = "!room:test.local") -> Event:
    """The ``n``-th text message from @alice, as a homeserver pushes it in a transaction."""
    return {
        "event_id": f"$event{n}",
        "room_id": room,
        "sender": "@alice:test.local",
        "type": "m.room.message",
        "origin_server_ts": 1700000000000 + n,
        "content": {"msgtype": "m.text", "body": f"hello {n}"},
        "unsigned": {"age": 5},
    }


def by(sender: str, msgtype: str | None = None) -> Callable[[Event], bool]:
    """A message of ``sender`` (of ``msgtype``, if given)."""

    def match(e: Event) -> bool:
        return (
            e["type"] == "m.room.message"
            and e["sender"] == sender
            and msgtype in (None, e["content"]["msgtype"])
        )

    return match


def reply_to(
    sender: str, event_id: str, msgtype: str | None = "m.text"
) -> Callable[[Event], bool]:
    """A message of ``sender`` replying to ``event_id`` (of any msgtype with None)."""

    def match(e: Event) -> bool:
        relates = e["content"].get("m.relates_to") or {}
        return by(sender, msgtype)(e) and relates["m.in_reply_to"]["event_id"] == event_id

    return match


def member_is(mxid: str, membership: str) -> Callable[[Event], bool]:
    """``mxid``'s membership event with ``membership`` (join, leave, invite…)."""

    def match(e: Event) -> bool:
        return (
            e["type"] == "m.room.member"
            and e["state_key"] == mxid
            and e["content"]["membership"] == membership
        )

    return match


def joined(mxid: str) -> Callable[[Event], bool]:
    """``mxid``'s join to the room."""
    return member_is(mxid, "join")


def matches(predicate: Callable[[Event], bool], e: Event) -> bool:
    """``predicate(e)``, where an event without the fields it reads does not match."""
    try:
        return predicate(e)
    except (KeyError, IndexError, TypeError):
        return False
