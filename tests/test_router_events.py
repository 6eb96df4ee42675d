"""The router's handling of events other than a plain message, and the message checks around
it, without a homeserver (tests/harness/routing.py): which handler gets each kind of event,
room names and display names, redactions, the bridged-at grace, agents deleted in Letta,
reactions and replies to approval cards, media passed on, a refusal in a thread."""

from __future__ import annotations

import json
import time
from typing import Any

import attrs
import pytest
from mautrix.errors import make_request_error
from mautrix.types import Member, Membership, RoomID, UserID

from letta_appservice.chat import router as router_module
from letta_appservice.chat.content import (
    GONE_NOTICE_PART,
    LOOP_NOTICE_PART,
    MEDIA_NOTICE_PART,
    PAUSED_NOTICE_PART,
    REFUSED_NOTICE_PART,
)
from letta_appservice.chat.loops import MAX_CHAIN, LoopGuard
from letta_appservice.chat.media import media_of
from letta_appservice.chat.router import BRIDGED_GRACE_MS
from letta_appservice.chat.turn import Job
from letta_appservice.db.agent import DELETED
from letta_appservice.db.inbox import InboxEvent
from letta_appservice.db.room import INVITED, RoomRow
from letta_appservice.inbox.worker import Retry
from tests.harness.routing import ALICE, BOB, BOT, ROOM, STRANGER, Routing, agent

DM = "!dm:bridge.test"


def state(routing: Routing, kind: str, sender: str, room: str, content: dict[str, Any],
          state_key: str | None = "", **top: Any) -> InboxEvent:  # fmt: skip
    """An event of ``kind`` (a state event when ``state_key`` is not None)."""
    base = routing.event(sender, room, "")
    raw = json.loads(base.event_json)
    raw.update(type=kind, content=content, **top)
    if state_key is not None:
        raw["state_key"] = state_key
    return attrs.evolve(base, event_type=kind, event_json=json.dumps(raw))


@attrs.define
class Seen:
    """Stands in for Memberships and the app's bookkeeping: what each was given."""

    calls: list[tuple[str, str]] = attrs.field(factory=list)

    async def member(self, evt: Any) -> None:
        self.calls.append(("member", evt.state_key))

    async def encryption_on(self, event: InboxEvent) -> None:
        self.calls.append(("encryption_on", event.event_id))

    async def encrypted_message(self, event: InboxEvent) -> None:
        self.calls.append(("encrypted", event.event_id))

    async def before(self, event: InboxEvent) -> None:
        self.calls.append(("before", event.event_id))


async def dm(routing: Routing) -> None:
    await routing.rooms.upsert(RoomRow(DM, INVITED, "agent-1", owner=BOB, bridged_at=0))
    await routing.invited.add(DM, "agent-1")
    await routing.join(DM, BOB, "@agent_1:bridge.test", BOT)


async def test_each_kind_of_event_reaches_its_handler(routing: Routing) -> None:
    seen = Seen()
    routing.router.memberships, routing.router.before = seen, seen.before  # type: ignore[assignment]
    member = state(routing, "m.room.member", BOB, ROOM, {"membership": "leave"}, BOB)
    encryption = state(routing, "m.room.encryption", BOB, ROOM, {"algorithm": "m.megolm.v1"})
    not_room_state = state(routing, "m.room.encryption", BOB, ROOM, {}, state_key="x")
    encrypted = state(routing, "m.room.encrypted", BOB, ROOM, {"ciphertext": "x"}, None)
    own_encrypted = state(routing, "m.room.encrypted", BOT, ROOM, {"ciphertext": "x"}, None)
    events = [member, encryption, not_room_state, encrypted, own_encrypted]
    for event in events:
        await routing.router.handle(event)
    assert [c for c in seen.calls if c[0] != "before"] == [
        ("member", BOB),
        ("encryption_on", encryption.event_id),
        ("encrypted", encrypted.event_id),
    ]
    assert [c[1] for c in seen.calls if c[0] == "before"] == [e.event_id for e in events]


async def test_the_room_name_in_the_attribution_follows_the_rooms_name_events(
    routing: Routing,
) -> None:
    await dm(routing)
    rooms = routing.router.puppets

    async def attribution(text: str) -> str:
        await routing.router.handle(routing.event(BOB, DM, text))
        return routing.turn.jobs[-1].content.split("\n")[0]

    assert (await attribution("a")).endswith(' in "Team room"]')  # asked once, then kept
    assert (await attribution("b")).endswith(' in "Team room"]')
    assert len([p for p in rooms.asked if "m.room.name" in p]) == 1  # type: ignore[attr-defined]
    await routing.router.handle(state(routing, "m.room.name", BOB, DM, {"name": "Ops"}))
    await routing.router.handle(state(routing, "m.room.name", BOB, DM, {"name": "x"}, "other"))
    assert (await attribution("c")).endswith(' in "Ops"]')
    await routing.router.handle(state(routing, "m.room.name", BOB, DM, {"name": 5}))
    assert (await attribution("d")).endswith(' in "a direct chat"]')
    await routing.router.handle(state(routing, "m.room.name", BOB, DM, {}))
    assert (await attribution("e")).endswith(' in "a direct chat"]')
    # The agent's own room is named after the agent, whatever its name event says.
    await routing.router.handle(routing.event(BOB, ROOM, "f"))
    assert routing.turn.jobs[-1].content.split("\n")[0].endswith(' in "Helper1"]')


async def test_a_display_name_the_state_store_lacks_is_asked_and_kept(routing: Routing) -> None:
    newcomer = "@carol:bridge.test"
    await routing.router.handle(routing.event(newcomer, ROOM, "hi"))
    await routing.router.handle(routing.event(newcomer, ROOM, "again"))
    for job in routing.turn.jobs:
        assert job.content.startswith("[Matrix: Fetched Name (@carol:bridge.test)")
    asked = [p for p in routing.router.puppets.asked if "m.room.member" in p]  # type: ignore[attr-defined]
    assert len(asked) == 1 and asked[0].endswith("%40carol%3Abridge.test")


async def test_redactions_in_either_room_versions_place_and_only_the_latest_kept(
    routing: Routing, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(router_module, "REDACTIONS_KEPT", 2)
    messages = [routing.event(BOB, ROOM, f"m{i}") for i in range(4)]

    # Room versions up to 10 put the target at the top level, 11+ in the content.
    def in_content(n: int) -> InboxEvent:
        target = {"redacts": messages[n].event_id}
        return state(routing, "m.room.redaction", BOB, ROOM, target, None)

    top_level = state(routing, "m.room.redaction", BOB, ROOM, {}, None,
                      redacts=messages[1].event_id)  # fmt: skip
    for redaction in (in_content(0), top_level, in_content(2)):
        await routing.router.handle(redaction)
    await routing.router.handle(state(routing, "m.room.redaction", BOB, ROOM, {"redacts": 5}))
    for message in messages:
        await routing.router.handle(message)
    # Two remembered: the oldest redaction was forgotten, its message passed on.
    assert [j.content.rsplit("\n", 1)[1] for j in routing.turn.jobs] == ["m0", "m3"]


async def test_messages_written_before_the_room_was_bridged_are_ignored(
    routing: Routing,
) -> None:
    bridged = int(time.time() * 1000)
    fresh = "!own2:bridge.test"  # agent-2's room, bridged just now
    await routing.rooms.upsert(RoomRow(fresh, "agent", "agent-2", bridged_at=bridged))
    await routing.join(fresh, BOB, "@agent_2:bridge.test", BOT)

    def written(at: int, text: str) -> InboxEvent:
        event = routing.event(BOB, fresh, text)
        raw = json.loads(event.event_json)
        raw["origin_server_ts"] = at
        return attrs.evolve(event, event_json=json.dumps(raw))

    for at, text in [
        (bridged - BRIDGED_GRACE_MS - 1, "too old"),
        (bridged - BRIDGED_GRACE_MS, "just in time"),
        (bridged - 1_000, "a moment before"),
    ]:
        await routing.router.handle(written(at, text))
    texts = [j.content.rsplit("\n", 1)[1] for j in routing.turn.jobs]
    assert texts == ["just in time", "a moment before"]


async def test_a_dm_whose_agent_was_deleted_says_so_once_to_permitted_people(
    routing: Routing,
) -> None:
    await dm(routing)
    await routing.agents.upsert(agent(1, room_id=ROOM, state=DELETED, displayname="Gone Bot"))
    for sender in (BOB, BOB, STRANGER):
        await routing.router.handle(routing.event(sender, DM, "hello?"))
    await routing.router.handle(routing.event(ALICE, ROOM, "and here?"))  # its old room
    assert routing.turn.jobs == []
    assert routing.turn.notices == [
        ("agent-1", DM, "Gone Bot was deleted in Letta and cannot answer any more.")
    ]


async def test_a_job_carries_everything_the_turn_needs(routing: Routing) -> None:
    thread = {"m.relates_to": {"rel_type": "m.thread", "event_id": "$root"}}
    event = attrs.evolve(routing.event(BOB, ROOM, "in a thread", **thread), attempts=3)
    await routing.router.handle(event)
    [job] = routing.turn.jobs
    assert job == Job(
        event_id=event.event_id,
        room_id=ROOM,
        sender=BOB,
        agent=job.agent,
        content='[Matrix: Bob (@bob:bridge.test) in "Helper1"]\nin a thread',
        name="bob",
        relation={
            "rel_type": "m.thread",
            "event_id": "$root",
            "is_falling_back": False,
            "m.in_reply_to": {"event_id": event.event_id},
        },
        received_at=event.received_at,
        attempts=3,
        expects_reply=True,
    )
    assert job.agent.agent_id == "agent-1"


HUGE_IMAGE: dict[str, Any] = {
    "url": "mxc://bridge.test/cat",
    "info": {"mimetype": "image/png", "size": 50 * 1024 * 1024},
}


async def test_every_notice_replies_to_the_message_under_its_own_part_number(
    routing: Routing,
) -> None:
    await routing.router.handle(routing.event(STRANGER, ROOM, "let me in"))
    image = routing.event(BOB, ROOM, "cat.png", **HUGE_IMAGE)
    image = attrs.evolve(image, event_json=image.event_json.replace('"m.text"', '"m.image"'))
    await routing.router.handle(image)
    await routing.agents.upsert(agent(1, room_id=ROOM, paused=True, displayname="Sleepy"))
    paused = routing.event(BOB, ROOM, "wake up")
    await routing.router.handle(paused)
    parts = [(source, part) for _, _, source, part, _ in routing.turn.notice_calls]
    assert [p for _, p in parts] == [REFUSED_NOTICE_PART, MEDIA_NOTICE_PART, PAUSED_NOTICE_PART]
    assert parts[1][0] == image.event_id and parts[2][0] == paused.event_id
    for _, room, source, _, relation in routing.turn.notice_calls:
        assert room == ROOM and relation == {"m.in_reply_to": {"event_id": source}}
    assert routing.turn.notices[2][2] == (
        "Sleepy is paused by a bridge admin; this message was not passed on and will not be."
    )


async def test_a_paused_agent_does_not_keep_the_message_from_the_others(
    routing: Routing,
) -> None:
    await dm(routing)
    await routing.invited.add(DM, "agent-2")
    await routing.agents.upsert(agent(1, room_id=ROOM, paused=True))
    await routing.router.handle(routing.event(BOB, DM, "Helper1 and Helper2, status?"))
    assert [j.agent.agent_id for j in routing.turn.jobs] == ["agent-2"]
    assert [n[0] for n in routing.turn.notices] == ["agent-1"]


async def test_only_people_who_joined_make_a_dm_a_group_room(routing: Routing) -> None:
    await dm(routing)
    # Someone invited but not (yet) in, and someone who left: still a 1:1 with the agent.
    await routing.state_store.set_member(
        RoomID(DM), UserID("@carol:bridge.test"), Member(membership=Membership.INVITE)
    )
    await routing.state_store.set_member(
        RoomID(DM), UserID("@dave:bridge.test"), Member(membership=Membership.LEAVE)
    )
    await routing.router.handle(routing.event(BOB, DM, "no name needed"))
    assert [j.expects_reply for j in routing.turn.jobs] == [True]


async def test_in_a_group_room_opened_to_every_message_only_the_named_agent_expects_a_reply(
    routing: Routing,
) -> None:
    group = "!open:bridge.test"
    await routing.rooms.upsert(
        RoomRow(group, INVITED, "agent-1", mode="open", owner=BOB, bridged_at=0)
    )
    await routing.invited.add(group, "agent-1")
    await routing.join(group, BOB, ALICE, "@agent_1:bridge.test", BOT)
    await routing.router.handle(routing.event(BOB, group, "chatting"))
    await routing.router.handle(routing.event(BOB, group, "Helper1, you there?"))
    assert [j.expects_reply for j in routing.turn.jobs] == [False, True]


async def test_a_room_without_a_name_is_a_direct_chat(routing: Routing) -> None:
    await dm(routing)
    routing.router.puppets.room_name = 7  # type: ignore[attr-defined]
    await routing.router.handle(routing.event(BOB, DM, "a"))
    other = "!other:bridge.test"
    await routing.rooms.upsert(RoomRow(other, INVITED, "agent-1", owner=BOB, bridged_at=0))
    await routing.invited.add(other, "agent-1")
    await routing.join(other, BOB, "@agent_1:bridge.test")
    routing.router.puppets.room_name = None  # type: ignore[attr-defined]
    await routing.router.handle(routing.event(BOB, other, "b"))
    for job in routing.turn.jobs:
        assert job.content.split("\n")[0].endswith(' in "a direct chat"]')


async def test_replies_to_the_bridge_count_toward_the_loop_guard(routing: Routing) -> None:
    reply = {"m.relates_to": {"m.in_reply_to": {"event_id": "$x"}},
             "m.mentions": {"user_ids": ["@agent_1:bridge.test"]}}  # fmt: skip
    events = [routing.event(BOB, ROOM, f"again {n}", **reply) for n in range(MAX_CHAIN + 2)]
    for event in events:
        await routing.router.handle(event)
    assert len(routing.turn.jobs) == MAX_CHAIN
    [(agent_id, room, source, part, relation)] = routing.turn.notice_calls
    assert (agent_id, room, part) == ("agent-1", ROOM, LOOP_NOTICE_PART)
    assert source == events[MAX_CHAIN].event_id
    assert relation == {"m.in_reply_to": {"event_id": source}}
    assert "!letta" in routing.turn.notices[0][2]  # names the command that lifts it


async def test_a_declared_bot_is_not_heard_unless_allowed(routing: Routing) -> None:
    routing.router.loops = LoopGuard(bot_users=["^@helperbot:"])
    await routing.join(ROOM, "@helperbot:bridge.test")
    await routing.router.handle(routing.event("@helperbot:bridge.test", ROOM, "hi"))
    await routing.router.handle(routing.event(BOB, ROOM, "hi"))
    assert [j.sender for j in routing.turn.jobs] == [BOB]


async def test_notices_stay_in_the_persons_thread_and_name_what_was_sent(
    routing: Routing,
) -> None:
    thread = {"m.relates_to": {"rel_type": "m.thread", "event_id": "$root"}}
    image = routing.event(BOB, ROOM, "cat.png", **thread, **HUGE_IMAGE)
    image = attrs.evolve(image, event_json=image.event_json.replace('"m.text"', '"m.image"'))
    await routing.router.handle(image)
    [(_, _, source, part, relation)] = routing.turn.notice_calls
    assert (source, part) == (image.event_id, MEDIA_NOTICE_PART)
    assert relation["rel_type"] == "m.thread" and relation["event_id"] == "$root"
    assert routing.turn.notices[0][2] == (
        "This image is 50 MB; agents on this bridge take images up to 5 MB. It was not passed on."
    )


async def test_a_deleted_agents_notice_has_its_own_part_number(routing: Routing) -> None:
    await dm(routing)
    await routing.agents.upsert(agent(1, room_id=ROOM, state=DELETED))
    await routing.router.handle(routing.event(BOB, DM, "hello?"))
    assert [c[3] for c in routing.turn.notice_calls] == [GONE_NOTICE_PART]


async def test_an_emote_names_the_person_to_the_agent(routing: Routing) -> None:
    await routing.router.handle(routing.event(BOB, ROOM, "waves", msgtype="m.emote"))
    assert routing.turn.jobs[0].content.endswith("\n* Bob waves")


async def test_the_loop_guard_counts_each_room_apart(routing: Routing) -> None:
    await dm(routing)
    reply = {"m.mentions": {"user_ids": ["@agent_1:bridge.test"]}}
    for n in range(MAX_CHAIN):
        for room in (ROOM, DM):
            await routing.router.handle(routing.event(BOB, room, f"Helper1 {n}", **reply))
    assert len(routing.turn.jobs) == 2 * MAX_CHAIN and routing.turn.notices == []


@pytest.mark.parametrize("status", [502, 429])
async def test_a_room_name_lookup_the_homeserver_fails_is_retried(
    routing: Routing, status: int
) -> None:
    await dm(routing)

    class Failing:
        def api(self, _mxid: str) -> Failing:
            return self

        async def request(self, *_args: Any) -> Any:
            raise make_request_error(status, "", "M_UNKNOWN", "trouble")

    routing.router.puppets = Failing()  # type: ignore[assignment]
    with pytest.raises(Retry):
        await routing.router.handle(routing.event(BOB, DM, "hi"))


async def test_a_room_without_a_name_is_asked_once(routing: Routing) -> None:
    await dm(routing)
    routing.router.puppets.room_name = None  # type: ignore[attr-defined]
    for text in ("a", "b"):
        await routing.router.handle(routing.event(BOB, DM, text))
    asked = [p for p in routing.router.puppets.asked if "m.room.name" in p]  # type: ignore[attr-defined]
    assert len(asked) == 1


async def test_a_state_event_whose_content_does_not_fit_its_type_is_passed_over(
    routing: Routing,
) -> None:
    """Found by the fault suite: mautrix refused these, the handler raised, and the event was
    failed with a traceback (``before``: the app's state store update; the membership path)."""
    seen = Seen()
    routing.router.memberships = seen  # type: ignore[assignment]
    malformed = [
        state(routing, "m.room.member", BOB, ROOM, {"membership": 7}, BOB),
        state(routing, "m.room.power_levels", BOB, ROOM, {"users": [1]}),
    ]
    for event in malformed:
        assert event.parsed is None
        await routing.router.handle(event)
    assert seen.calls == []
    good = state(routing, "m.room.member", BOB, ROOM, {"membership": "join"}, BOB)
    assert good.parsed is not None and good.parsed.state_key == BOB


async def test_a_message_with_a_time_that_is_not_a_number_is_not_a_crash(
    routing: Routing,
) -> None:
    """Found by the fault suite: ``int("soon")`` failed the event with a traceback. A time
    that is not an integer counts as none (as a missing one always did)."""
    fresh = "!own2:bridge.test"
    await routing.rooms.upsert(
        RoomRow(fresh, "agent", "agent-2", bridged_at=int(time.time() * 1000))
    )
    await routing.join(fresh, BOB, "@agent_2:bridge.test", BOT)
    for room in (ROOM, fresh):  # bridged long ago; just now
        for written in ("soon", [1], 1.5e12, None):
            event = routing.event(BOB, room, f"at {written!r}")
            raw = json.loads(event.event_json)
            raw["origin_server_ts"] = written
            await routing.router.handle(attrs.evolve(event, event_json=json.dumps(raw)))
    texts = [j.content.rsplit("\n", 1)[1] for j in routing.turn.jobs]
    assert texts == ["at 'soon'", "at [1]", "at 1500000000000.0", "at None"]


async def test_a_command_in_a_room_the_bridge_does_not_serve_is_still_handled(
    routing: Routing,
) -> None:
    elsewhere = "!elsewhere:bridge.test"
    for body in ("hello", "!letta help", "please !LETTA help"):
        await routing.router.handle(routing.event(BOB, elsewhere, body))
    assert routing.router.commands.handled == [(elsewhere, "!letta help")]  # type: ignore[attr-defined]
    assert routing.turn.jobs == [] and routing.turn.notices == []


# --- approval cards and media --------------------------------------------------------------------

SMALL_IMAGE: dict[str, Any] = {
    "msgtype": "m.image",
    "url": "mxc://bridge.test/cat",
    "info": {"mimetype": "image/png", "size": 2048},
}


@attrs.define
class Cards:
    """Stands in for chat/reactions.Reactions: records what it is given; a reply whose body
    is in ``decides`` answers a card."""

    given: list[tuple[str, str]] = attrs.field(factory=list)  # what, event id
    decides: set[str] = attrs.field(factory=set)

    async def reply(self, event: InboxEvent) -> bool:
        self.given.append(("reply", event.event_id))
        return json.loads(event.event_json)["content"]["body"] in self.decides

    async def reaction(self, event: InboxEvent) -> None:
        self.given.append(("reaction", event.event_id))


def cards(routing: Routing) -> Cards:
    routing.router.reactions = found = Cards()  # type: ignore[assignment]
    return found


def reaction(routing: Routing, sender: str, key: str) -> InboxEvent:
    base = routing.event(sender, ROOM, "")
    raw = json.loads(base.event_json)
    raw.update(type="m.reaction")
    raw["content"] = {
        "m.relates_to": {"rel_type": "m.annotation", "event_id": "$card", "key": key}
    }
    return attrs.evolve(base, event_type="m.reaction", event_json=json.dumps(raw))


async def test_reactions_reach_the_cards_and_a_deciding_reply_reaches_no_agent(
    routing: Routing,
) -> None:
    seen = cards(routing)
    seen.decides.add("approve")
    thumbs = reaction(routing, BOB, "👍")
    decision, question = routing.event(BOB, ROOM, "approve"), routing.event(BOB, ROOM, "why?")
    for event in (thumbs, decision, question):
        await routing.router.handle(event)
    assert seen.given == [
        ("reaction", thumbs.event_id),
        ("reply", decision.event_id),
        ("reply", question.event_id),
    ]
    assert [j.event_id for j in routing.turn.jobs] == [question.event_id]
    # A person's reactions have lanes of their own, so a 🛑 never waits behind the turn it
    # stops; the bridge's own go with the room.
    lane = routing.router.lane_key
    assert await lane(reaction(routing, BOB, "🛑")) == f"stop:{ROOM}"
    assert await lane(thumbs) == f"decide:{ROOM}"
    assert await lane(reaction(routing, "@agent_1:bridge.test", "🛑")) == ROOM
    assert await lane(question) == "agent:agent-1"


async def test_a_media_message_is_passed_on_as_media_and_never_read_as_a_decision(
    routing: Routing,
) -> None:
    seen = cards(routing)
    seen.decides.add("approve")  # a picture's file name is no decision
    image = routing.event(BOB, ROOM, "approve", **SMALL_IMAGE, filename="cat.png")
    await routing.router.handle(image)
    assert seen.given == []
    [job] = routing.turn.jobs
    media = media_of(json.loads(image.event_json)["content"])
    assert media is not None and job.media == media
    # The agent's text says what was sent, with the caption the person wrote.
    assert job.content.endswith("\n(sent an image: cat.png)\napprove")


async def test_a_refusal_in_a_thread_stays_in_the_thread(routing: Routing) -> None:
    thread = {"m.relates_to": {"rel_type": "m.thread", "event_id": "$root"}}
    await routing.router.handle(routing.event(STRANGER, ROOM, "hi there", **thread))
    [(_, room, source, part, relation)] = routing.turn.notice_calls
    assert (room, part) == (ROOM, REFUSED_NOTICE_PART) and source.startswith("$e")
    assert relation["rel_type"] == "m.thread" and relation["event_id"] == "$root"
    assert routing.turn.jobs == []
