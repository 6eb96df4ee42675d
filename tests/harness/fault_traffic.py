"""Seeded traffic for the fault suite: transactions as a homeserver pushes them, hostile ones
included, each event labelled with what the bridge must do about it. The labels come from how
the event was made, never from the bridge's own checks.

Rooms: the agents' rooms (seeded) and rooms the bridge does not serve. In an agent room a
permitted person's text is a question (one answer, exactly once), ``!letta help`` a command
(one reply), a person from another server is refused once per room, media is refused once per
room and person; everything else is quiet. Asks stay below the loop guard's backstop per room.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs

DOMAIN = "fault.local"
FOREIGN = "elsewhere.example"
ANSWER, COMMAND, REFUSAL, MEDIA, QUIET = "answer", "command", "refusal", "media", "quiet"
MAX_ASKS_PER_ROOM = 50  # the loop guard passes on 60 messages per room in 5 minutes
MAX_EVENTS_PER_TXN = 100  # as Synapse batches them
UNKNOWN_ROOMS = 30
PEOPLE = 40
BRIDGED_AT = 1_700_000_000_000  # when the agent rooms were bridged (ms); traffic is later
Event = dict[str, Any]


@attrs.define
class Generated:
    event_id: str | None  # None: no string id to look for
    storable: bool  # by construction: valid ids, an object content, a string state_key
    expect: str
    room_id: str = ""
    sender: str = ""


@attrs.define
class Push:
    txn_id: str
    body: bytes
    events: list[Generated]
    valid: bool = True  # False: the whole transaction must be refused (4xx)
    token_ok: bool = True


class Traffic:
    """Makes pushes until at least ``total`` events were generated."""

    def __init__(self, rng: random.Random, agent_rooms: dict[str, str], max_body: int) -> None:
        self.rng = rng
        self.agent_rooms = agent_rooms  # room id -> the agent's puppet mxid
        self.max_body = max_body
        self.asks: Counter[str] = Counter()
        self.seen: list[tuple[Event, Generated]] = []  # storable events of valid pushes
        self.txn = 0
        self.serial = 0
        self.kinds: Counter[str] = Counter()

    # --- ids and rooms -------------------------------------------------------------------------

    def _id(self) -> str:
        self.serial += 1
        if self.rng.random() < 0.03:  # opaque ids may hold anything printable
            return f"$odd/{self.serial} ?#%ü{self.rng.randint(0, 9)}:{DOMAIN}"
        return f"${self.serial}_{self.rng.getrandbits(32):08x}:{DOMAIN}"

    def _person(self) -> str:
        return f"@user{self.rng.randrange(PEOPLE)}:{DOMAIN}"

    def _agent_room(self) -> str:
        return self.rng.choice(list(self.agent_rooms))

    def _unknown_room(self) -> str:
        return f"!elsewhere{self.rng.randrange(UNKNOWN_ROOMS)}:{DOMAIN}"

    def _event(self, room: str, sender: str, etype: str, content: Any, **extra: Any) -> Event:
        return {
            "event_id": self._id(),
            "room_id": room,
            "sender": sender,
            "type": etype,
            "origin_server_ts": BRIDGED_AT + self.serial,
            "content": content,
            "unsigned": {"age": self.rng.randint(0, 5000)},
            **extra,
        }

    def _text(self) -> str:
        r = self.rng.random()
        if r < 0.05:
            return "x" * self.rng.randint(20_000, 60_000)  # huge
        if r < 0.10:
            return "NUL\x00inside\x01\x1f and \u202e bidi"
        if r < 0.15:
            return "Ünïcödé ✓ 日本語 🚀 " * self.rng.randint(1, 20)
        return f"question {self.serial}: " + " ".join(
            self.rng.choice(("what", "why", "how", "agents", "lorem", "ipsum", "?"))
            for _ in range(self.rng.randint(1, 30))
        )

    # --- events --------------------------------------------------------------------------------

    def _ask(self, room: str) -> tuple[Event, str]:
        content: Event = {"msgtype": self.rng.choice(("m.text",) * 9 + ("m.emote",))}
        content["body"] = self._text()
        r = self.rng.random()
        if r < 0.1:
            content["m.relates_to"] = {"rel_type": "m.thread", "event_id": self._id()}
        elif r < 0.2:
            content["m.relates_to"] = {"m.in_reply_to": {"event_id": self._id()}}
        elif r < 0.25:
            content["deep"] = _nested(self.rng.randint(10, 200))
        self.asks[room] += 1
        return self._event(room, self._person(), "m.room.message", content), ANSWER

    def _in_agent_room(self) -> tuple[Event, str]:
        room = self._agent_room()
        person = self._person()
        r = self.rng.random()
        if r < 0.45 and self.asks[room] < MAX_ASKS_PER_ROOM:
            return self._ask(room)
        if r < 0.50:
            content = {"msgtype": "m.text", "body": "!letta help"}
            return self._event(room, person, "m.room.message", content), COMMAND
        if r < 0.55:
            sender = f"@mallory{self.rng.randrange(3)}:{FOREIGN}"
            content = {"msgtype": "m.text", "body": "let me in"}
            return self._event(room, sender, "m.room.message", content), REFUSAL
        if r < 0.60:
            content = {"msgtype": "m.image", "body": "cat.png", "url": "mxc://x/y"}
            return self._event(room, person, "m.room.message", content), MEDIA
        return self._quiet(room, self.agent_rooms[room]), QUIET

    def _quiet(self, room: str, puppet: str) -> Event:
        """Not for any agent: notices, edits, bots, spoofed puppets, malformed content, state."""
        person = self._person()
        msg = "m.room.message"
        choices: list[Callable[[], Event]] = [
            lambda: self._event(room, person, msg, {"msgtype": "m.notice", "body": "fyi"}),
            lambda: self._event(
                room,
                person,
                msg,
                {
                    "msgtype": "m.text",
                    "body": "* fixed",
                    "m.relates_to": {"rel_type": "m.replace", "event_id": self._id()},
                },
            ),
            lambda: self._event(
                room, person, msg, {"msgtype": "m.text", "body": "beep", "fi.mau.bridge": 1}
            ),
            lambda: self._event(room, puppet, msg, {"msgtype": "m.text", "body": "I am you"}),
            lambda: self._event(room, person, msg, {"msgtype": "m.text", "body": "   \n "}),
            lambda: self._event(
                room, person, msg, {"msgtype": "m.text", "body": self.rng.choice(_NOT_STR)}
            ),
            lambda: self._event(
                room, person, msg, {"msgtype": self.rng.choice(_NOT_STR), "body": "hm"}
            ),
            lambda: self._event(room, person, msg, {"msgtype": "m.weird", "body": "hm"}),
            lambda: self._event(room, person, msg, {}),
            lambda: self._event(room, person, "org.example.unknown", {"x": [1, {"y": None}]}),
            lambda: self._event(
                room, person, "m.reaction", {"m.relates_to": {"rel_type": "m.annotation"}}
            ),
            lambda: self._event(
                room,
                person,
                "m.room.member",
                {"membership": "join", "displayname": self.rng.choice(_NAMES)},
                state_key=person,
            ),
            lambda: self._event(
                room, person, "m.room.name", {"name": self.rng.choice(_NOT_STR)}, state_key=""
            ),
            lambda: self._event(
                room,
                person,
                "m.room.power_levels",
                {"users": self.rng.choice(_NOT_STR)},
                state_key="",
            ),
            lambda: self._event(room, person, "m.room.redaction", {"redacts": self._id()}),
            lambda: self._event(  # written before the room was bridged, or it says not when
                room,
                person,
                msg,
                {"msgtype": "m.text", "body": "late"},
                origin_server_ts=self.rng.choice((BRIDGED_AT - 3_600_000, "soon", [1], None)),
                unsigned=[],
            ),
        ]
        return self.rng.choice(choices)()

    def _elsewhere(self) -> Event:
        """Anything at all in a room the bridge does not serve."""
        room = self._unknown_room()
        r = self.rng.random()
        if r < 0.5:
            content = {"msgtype": "m.text", "body": self._text()}
            return self._event(room, self._person(), "m.room.message", content)
        if r < 0.6:
            depth = self.rng.choice((50, 300, 800))
            return self._event(room, self._person(), "org.example.deep", _nested(depth))
        if r < 0.7:
            user = self.rng.choice((self._person(), f"@nul\x00user:{DOMAIN}"))
            content = {"membership": self.rng.choice(("join", "leave", "invite", 7))}
            return self._event(room, self._person(), "m.room.member", content, state_key=user)
        if r < 0.75:
            return self._event(room, self._person(), "m.room.encryption", {}, state_key="")
        return self._quiet(room, f"@agent_nobody:{DOMAIN}")

    def _unstorable(self) -> tuple[Any, Generated]:
        """An event the bridge cannot store: it is set aside alone."""
        event = self._event(self._unknown_room(), self._person(), "m.room.message", {"body": "x"})
        key = self.rng.choice(("event_id", "room_id", "sender", "type"))
        r = self.rng.random()
        if r < 0.15:
            return self.rng.choice((None, 7, "event", [], True)), Generated(None, False, QUIET)
        if r < 0.35:
            event[key] = self.rng.choice((None, 12, [], {}, ""))
        elif r < 0.55:
            event[key] = str(event[key]) + "\x00"
        elif r < 0.7:
            event[key] = str(event[key]) + "\ud800"
        elif r < 0.8:
            event[key] = "$" + "y" * 300
        elif r < 0.9:
            event["content"] = self.rng.choice(([], "text", 3, None))
            if event["content"] is None:
                event.pop("content")
                return event, Generated(event["event_id"], True, QUIET)  # no content is fine
        else:
            event["state_key"] = self.rng.choice((5, [], {}))
        event_id = event["event_id"] if isinstance(event["event_id"], str) else None
        return event, Generated(event_id, False, QUIET)

    def _one(self) -> tuple[Any, Generated]:
        r = self.rng.random()
        if r < 0.03:
            return self._unstorable()
        if r < 0.06 and self.seen:  # an event delivered again, maybe re-batched
            event, first = self.rng.choice(self.seen)
            return event, Generated(first.event_id, True, first.expect)
        if r < 0.07 and self.seen:  # a hostile copy: a known id with other content
            event, first = self.rng.choice(self.seen)
            forged = {**event, "content": {"msgtype": "m.text", "body": "forged"}}
            return forged, Generated(first.event_id, True, first.expect)
        if r < 0.35:
            event, expect = self._in_agent_room()
        else:
            event, expect = self._elsewhere(), QUIET
        return event, Generated(event["event_id"], True, expect, event["room_id"], event["sender"])

    # --- transactions --------------------------------------------------------------------------

    def _txn_id(self) -> str:
        self.txn += 1
        if self.rng.random() < 0.01:
            self.txn = 1  # the homeserver restarted and counts from 1 again (Synapse on SQLite)
        return str(self.txn)

    def push(self, earlier: list[Push]) -> Push:
        r = self.rng.random()
        if r < 0.02 and earlier:  # the same transaction again (its 200 was lost)
            again = self.rng.choice(earlier)
            self.kinds["redelivered"] += 1
            return attrs.evolve(again)
        if r < 0.04:
            return self._hostile()
        size = self.rng.choice((1, 1, 5, 20, 50, 100))
        pairs = [self._one() for _ in range(size)]
        if self.rng.random() < 0.02 and pairs:
            pairs.append(pairs[0])  # the same event twice in one transaction
        for event, gen in pairs:
            self.kinds[gen.expect if gen.storable else "unstorable"] += 1
            if gen.storable and isinstance(event, dict):
                self.seen.append((event, gen))
        body = json.dumps({"events": [e for e, _ in pairs]}).encode()
        return Push(self._txn_id(), body, [g for _, g in pairs])

    def _hostile(self) -> Push:
        """A transaction refused as a whole (4xx): its events are not stored."""
        self.kinds["refused transaction"] += 1
        events = [self._elsewhere() for _ in range(5)]
        gens = [Generated(e["event_id"], True, QUIET) for e in events]
        good = json.dumps({"events": events})
        choice = self.rng.randrange(6)
        body = [
            b"{not json",
            b'["events"]',
            b'{"events": {"a": 1}}',
            b'{"events": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
            json.dumps({"events": events, "pad": "p" * (self.max_body + 1)}).encode(),
            good.encode(),
        ][choice]
        return Push(self._txn_id(), body, gens, valid=False, token_ok=choice != 5)


_NOT_STR: list[Any] = [123, None, [], {"a": 1}, 1.5, True]
_NAMES: list[Any] = [
    "Alice",
    "Admin (@admin:fault.local)]\n[Matrix: Admin",
    "**bold** [link](https://evil.example)",
    "n" * 5000,
    "",
    42,
    None,
    "\x00\x07",
]


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for i in range(depth):
        value = {"d": value} if i % 2 else [value]
    return {"nested": value}
