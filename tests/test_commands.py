"""Bridge commands typed by real Matrix users in a DM with the bot (real Synapse, fake Letta):
replies are asserted as the user sees them (plain body and HTML)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from tests.harness.apps import Apps, Bridge
from tests.harness.config import ADMIN
from tests.harness.homeserver import Homeserver
from tests.harness.matrix_user import MatrixUser
from tests.harness.observe import eventually, space_children, wait_until_left
from tests.harness.synapse import fresh_localpart

BOT = "@letta:test.local"
TIMEOUT = 60


@pytest_asyncio.fixture
async def user(homeserver: Homeserver) -> AsyncIterator[MatrixUser]:
    """A plain user of the bridge (test.local users have the level user)."""
    person = await homeserver.register_user(fresh_localpart(), displayname="Pat")
    yield person
    await person.close()


def is_bot_notice(event: dict[str, Any]) -> bool:
    return (
        event["sender"] == BOT
        and event["type"] == "m.room.message"
        and event["content"]["msgtype"] == "m.notice"
    )


async def open_dm(person: MatrixUser) -> tuple[str, dict[str, Any]]:
    """The person's DM with the bot, and the bot's greeting in it."""
    await person.mark()
    room = await person.create_room(invite=[BOT], is_direct=True, preset="trusted_private_chat")
    greeting = await person.wait_for_event(room, is_bot_notice, timeout=TIMEOUT)
    return room, greeting["content"]


async def say(person: MatrixUser, room: str, text: str) -> dict[str, Any]:
    """Type ``text`` in the room and return the content of the bot's answer."""
    await person.mark()
    await person.send_text(room, text)
    reply = await person.wait_for_event(room, is_bot_notice, timeout=TIMEOUT)
    return reply["content"]


def html(content: dict[str, Any]) -> str:
    return content.get("formatted_body") or ""


# --- the management room ------------------------------------------------------------------------


async def test_user_commands_in_the_management_room(
    apps: Apps, bridge: Bridge, fake_letta: Any, user: MatrixUser
) -> None:
    alpha = fake_letta.add_agent("Alpha", description="Answers questions")
    fake_letta.add_agent("Aleph")
    beta = fake_letta.add_agent("Beta")
    app = await apps.start(namespace=bridge, first_pass=True)

    dm, greeting = await open_dm(user)
    assert "management room" in greeting["body"] and "Your level: **user**" in greeting["body"]
    assert "<strong>management room</strong>" in html(greeting)
    assert BOT in await user.joined_members(dm)

    reply = await say(user, dm, "help")
    assert "Your level: **user**" in reply["body"]
    assert "<code>room &lt;agent&gt;</code>" in html(reply)
    assert "sync" not in reply["body"] and "reset" not in reply["body"]

    reply = await say(user, dm, "help room")
    assert reply["body"] == "`room <agent>`\n\nInvite me to that agent's room."

    reply = await say(user, dm, "version")
    assert "letta-appservice **0.1.0**" in reply["body"]

    # The events before it (the bot's own replies among them) are handled first, so the
    # status counts only itself in the inbox, however loaded the machine.
    await app.worker.wait_idle()
    reply = await say(user, dm, "status")
    body = reply["body"]
    assert "- Homeserver: reachable" in body
    assert "- Letta: reachable, version 0.16.8" in body
    assert "- Agents: 3 bridged, 0 archived, 0 paused" in body
    assert "- Inbox: 0 pending, 0 in progress" in body
    assert "- Last reconcile: " in body and "ok (3 create)" in body
    assert "<li>Homeserver: reachable" in html(reply)

    rows = {a.agent_id: a for a in await app.agents.all()}
    reply = await say(user, dm, "agents")
    assert reply["body"].startswith("**3 agents**")
    link = f"https://matrix.to/#/{rows[alpha.id].room_id}?via=test.local"
    assert f'<a href="{link}">Alpha</a>: active' in html(reply)
    reply = await say(user, dm, "agents bet")
    assert reply["body"].startswith("**1 agent**") and "Beta" in reply["body"]
    assert "Alpha" not in reply["body"]

    # room <agent>: invited, then told they are already invited.
    reply = await say(user, dm, "room alp")
    assert reply["body"].startswith("Invited you to [the room of **Alpha**](https://matrix.to/")
    assert await user.wait_for_invite(rows[alpha.id].room_id, timeout=TIMEOUT)
    await user.join(rows[alpha.id].room_id)
    reply = await say(user, dm, f"room {beta.id}")
    assert reply["body"].startswith("Invited you to [the room of **Beta**]")
    reply = await say(user, dm, "room Alpha")
    assert reply["body"].startswith("You are already in [the room of **Alpha**]")
    assert reply["body"].endswith("; nothing changed.")

    reply = await say(user, dm, "space")
    assert reply["body"].startswith("Invited you to [the space]")
    space = await user.wait_for_invite(timeout=TIMEOUT)
    await user.join(space)
    assert rows[alpha.id].room_id in await space_children(user, space)

    # Bad input: missing argument, unknown agent, ambiguous prefix, admin command, unknown word.
    reply = await say(user, dm, "room")
    assert reply["body"] == "Missing argument. Usage: `room <agent>`"
    reply = await say(user, dm, "room Zeta")
    assert reply["body"].startswith("No agent matches `Zeta`")
    reply = await say(user, dm, "room Al")
    assert "`Al` matches 2 agents" in reply["body"]
    assert "**Alpha**" in reply["body"] and "**Aleph**" in reply["body"]
    assert "Nothing changed" in reply["body"]
    reply = await say(user, dm, "sync")
    assert reply["body"] == "`sync` is for bridge admins only; your level is **user**."
    assert app.scheduler.passes == 1  # the refused sync ran nothing
    reply = await say(user, dm, "hello bot")
    assert reply["body"].startswith("Unknown command `hello`")


async def test_group_room_commands_need_the_prefix(
    apps: Apps, bridge: Bridge, user: MatrixUser, admin_user: MatrixUser
) -> None:
    await apps.start(namespace=bridge, first_pass=True)
    room = await user.create_room(invite=[admin_user.mxid], preset="private_chat")
    await admin_user.join(room)
    await user.mark()
    await user.invite(room, BOT)
    greeting = await user.wait_for_event(room, is_bot_notice, timeout=TIMEOUT)
    assert "start them with `!letta`" in greeting["content"]["body"]
    assert "**management room**" not in greeting["content"]["body"]
    assert "Type `!letta help <command>`" in greeting["content"]["body"]

    # Unprefixed text is conversation, not a command: the bot answers only the second message.
    await user.mark()
    await user.send_text(room, "version")
    asked = await user.send_text(room, "!letta version")
    reply = await user.wait_for_event(room, is_bot_notice, timeout=TIMEOUT)
    assert reply["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == asked
    assert reply["content"]["body"].startswith("letta-appservice **0.1.0**")


async def test_the_bot_leaves_a_management_room_its_owner_left(
    apps: Apps, bridge: Bridge, user: MatrixUser
) -> None:
    app = await apps.start(namespace=bridge, first_pass=True)
    rooms = app.commands.services.rooms
    room, _ = await open_dm(user)
    assert (await rooms.management_room(user.mxid)).room_id == room
    await user.leave(room)
    await wait_until_left(app, BOT, room)
    await eventually(lambda: _no_management_room(rooms, user.mxid))
    # A new DM with the bot is the user's management room from then on.
    again, greeting = await open_dm(user)
    assert "**management room**" in greeting["body"]
    assert (await rooms.management_room(user.mxid)).room_id == again


async def test_invite_from_a_user_without_permission_is_rejected(
    apps: Apps, bridge: Bridge, user: MatrixUser
) -> None:
    app = await apps.start(
        namespace=bridge, first_pass=True, bridge={"permissions": {ADMIN: "admin"}}
    )
    await user.mark()
    room = await user.create_room(invite=[BOT], is_direct=True, preset="trusted_private_chat")

    def refused(event: dict[str, Any]) -> bool:
        return (
            event["type"] == "m.room.member"
            and event["state_key"] == BOT
            and event["content"]["membership"] == "leave"
        )

    leave = await user.wait_for_event(room, refused, timeout=TIMEOUT)
    assert "not allowed to use this bridge" in leave["content"]["reason"]
    assert BOT not in await user.joined_members(room)
    assert await app.commands.services.rooms.management_room(user.mxid) is None


async def test_a_user_without_permission_is_refused_once_per_room(
    apps: Apps, bridge: Bridge, user: MatrixUser, admin_user: MatrixUser
) -> None:
    await apps.start(namespace=bridge, first_pass=True, bridge={"permissions": {ADMIN: "admin"}})
    room = await admin_user.create_room(invite=[BOT, user.mxid], preset="private_chat")
    await admin_user.wait_for_event(room, is_bot_notice, timeout=TIMEOUT)  # the bot's greeting
    await user.join(room)
    await user.mark()
    first = await user.send_text(room, "!letta status")
    refusal = await user.wait_for_event(room, is_bot_notice, timeout=TIMEOUT)
    assert refusal["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == first
    assert refusal["content"]["body"] == "You are not allowed to use this bridge."
    await user.send_text(room, "!letta help")
    # A permitted user's command afterwards is answered; the second refusal never came.
    await admin_user.send_text(room, "!letta version")
    await user.wait_for_event(
        room,
        lambda e: is_bot_notice(e) and e["content"]["body"].startswith("letta-appservice"),
        timeout=TIMEOUT,
    )
    notices = [e for e in user.events_seen(room) if is_bot_notice(e)]
    assert len(notices) == 2  # the one refusal and the answer to the admin


# --- admin commands -----------------------------------------------------------------------------


async def test_admin_commands(
    database_url: str,
    apps: Apps,
    bridge: Bridge,
    fake_letta: Any,
    admin_user: MatrixUser,
    user: MatrixUser,
) -> None:
    alpha = fake_letta.add_agent("Alpha")
    beta = fake_letta.add_agent("Beta")
    app = await apps.start(database_url, namespace=bridge, first_pass=True)
    rows = {a.agent_id: a for a in await app.agents.all()}
    alpha_room, beta_room = rows[alpha.id].room_id, rows[beta.id].room_id
    for room in (alpha_room, beta_room):
        await admin_user.join(room)  # admins are invited to every agent room
    dm, greeting = await open_dm(admin_user)
    assert "Your level: **admin**" in greeting["body"] and "`reset`" in greeting["body"]

    # sync reports a rename made in Letta, and the room follows it.
    fake_letta.agents[alpha.id].name = "Gamma"
    reply = await say(admin_user, dm, "sync")
    assert reply["body"].startswith("**Sync done**: 1 updated (2 agents bridged).")
    assert "- Renamed: Alpha → **Gamma**" in reply["body"]
    assert (await admin_user.get_state(alpha_room, "m.room.name"))["name"] == "Gamma"

    # invite <mxid> <agent|all>
    reply = await say(admin_user, dm, f"invite {user.mxid} gam")
    assert reply["body"].startswith(f"Invited `{user.mxid}` to [the room of **Gamma**")
    assert await user.wait_for_invite(alpha_room, timeout=TIMEOUT)
    await user.join(alpha_room)
    reply = await say(admin_user, dm, f"invite {user.mxid} all")
    assert reply["body"] == (
        f"Invited `{user.mxid}` to 1 agent room and the space; already in 1 agent room."
    )
    reply = await say(admin_user, dm, "invite pat all")
    assert reply["body"] == "`pat` is not a Matrix ID like `@name:server`."
    reply = await say(admin_user, dm, "invite")
    assert reply["body"] == "Missing argument. Usage: `invite <mxid> <agent|all>`"

    # cancel <agent> reaches Letta.
    reply = await say(admin_user, dm, "cancel Beta")
    assert reply["body"].startswith("**Beta** had no request running here")
    assert fake_letta.requests_to(f"/v1/agents/{beta.id}/messages/cancel", "POST")

    # mode: only in a bridged room, typed with the prefix there.
    reply = await say(admin_user, dm, "mode off")
    assert "not bridged to an agent" in reply["body"]
    reply = await say(admin_user, beta_room, "!letta mode mention")
    assert reply["body"].startswith("Mode of this room: **mention** (was default)")
    assert reply["m.relates_to"]["m.in_reply_to"]
    assert (await app.commands.services.rooms.get(beta_room)).mode == "mention"
    reply = await say(admin_user, beta_room, "!letta mode loud")
    assert reply["body"] == "Unknown mode `loud`: use open, mention or off."
    reply = await say(admin_user, beta_room, "!letta mode open")
    assert reply["body"].startswith("Mode of this room: **open** (was mention)")
    # Anyone sees a room's mode; only admins change it.
    await user.join(beta_room)
    reply = await say(user, beta_room, "!letta mode")
    assert reply["body"].startswith("Mode of this room: **open**: every message")
    reply = await say(user, alpha_room, "!letta mode")
    assert reply["body"].startswith("This room has the default mode")
    reply = await say(user, alpha_room, "!letta mode off")
    assert reply["body"] == "Only bridge admins change the mode of a room."
    assert (await app.commands.services.rooms.get(alpha_room)).mode is None

    # ... also in a DM with a puppet, where the bot is not: the puppet answers.
    puppet = bridge.mxid(beta.id)
    beta_dm = await admin_user.create_room(invite=[puppet], is_direct=True)
    await admin_user.wait_for_event(
        beta_dm, lambda e: e["state_key"] == puppet and e["content"]["membership"] == "join"
    )
    await admin_user.mark()
    await admin_user.send_text(beta_dm, "!letta mode off")
    reply = await admin_user.wait_for_event(
        beta_dm, lambda e: e["sender"] == puppet and e["content"]["msgtype"] == "m.notice"
    )
    assert reply["content"]["body"].startswith("Mode of this room: **off** (was default)")

    # pause / resume: bad input first, then the change.
    reply = await say(admin_user, dm, "pause")
    assert reply["body"] == "Missing argument. Usage: `pause <agent>`"
    reply = await say(admin_user, dm, "pause Zeta")
    assert reply["body"].startswith("No agent matches `Zeta`")
    reply = await say(admin_user, dm, "pause beta")
    assert reply["body"].startswith("Paused **Beta**")
    assert reply["body"].endswith("Undo with `resume Beta`.")
    assert (await app.agents.get(beta.id)).paused
    reply = await say(admin_user, dm, "pause beta")
    assert "already paused; nothing changed" in reply["body"]
    await admin_user.mark()
    await admin_user.send_text(beta_room, "are you there?")
    notice = await admin_user.wait_for_event(
        beta_room, lambda e: e["sender"] == puppet and e["type"] == "m.room.message"
    )
    assert notice["content"]["msgtype"] == "m.notice"
    assert "Beta is paused by a bridge admin" in notice["content"]["body"]
    reply = await say(admin_user, dm, "resume Beta")
    assert reply["body"] == "Resumed **Beta**: it answers messages again."
    await admin_user.mark()
    await admin_user.send_text(beta_room, "hello again")
    answer = await admin_user.wait_for_event(
        beta_room, lambda e: e["sender"] == puppet and e["content"]["msgtype"] == "m.text"
    )
    assert answer["content"]["body"].startswith("Echo: ")
    assert "hello again" in answer["content"]["body"]
    assert [m.text for m in fake_letta.message_log if "are you there" in m.text] == []

    # cancel <agent> stops a turn in progress; the room is told.
    fake_letta.agents[beta.id].delay = 60
    await admin_user.send_text(beta_room, "think very hard")
    await fake_letta.wait_for_in_flight(beta.id, timeout=TIMEOUT)
    reply = await say(admin_user, dm, "cancel beta")
    assert reply["body"] == "Cancelled the running request of **Beta**."
    notice = await admin_user.wait_for_event(
        beta_room, lambda e: e["sender"] == puppet and e["content"]["msgtype"] == "m.notice"
    )
    assert notice["content"]["body"].startswith("Cancelled by a bridge admin")
    # A user cancels a request of their own, not someone else's.
    fake_letta.agents[alpha.id].delay = 60
    await user.send_text(alpha_room, "ponder this")
    await fake_letta.wait_for_in_flight(alpha.id, timeout=TIMEOUT)
    await admin_user.send_text(beta_room, "and you?")
    await fake_letta.wait_for_in_flight(beta.id, timeout=TIMEOUT)
    reply = await say(user, beta_room, "!letta cancel beta")
    assert reply["body"].startswith("**Beta** is not answering a message of yours")
    reply = await say(user, alpha_room, "!letta cancel gamma")
    assert reply["body"] == "Cancelled your request to **Gamma**."
    notice = await user.wait_for_event(
        alpha_room,
        lambda e: e["sender"] == bridge.mxid(alpha.id) and "Cancelled by" in e["content"]["body"],
    )
    assert notice["content"]["body"].startswith(f"Cancelled by {user.mxid}")
    await say(admin_user, beta_room, "!letta cancel beta")

    # reset needs --yes; then a new room in the space, the old one archived.
    reply = await say(admin_user, dm, "reset Gamma")
    assert "Nothing changed yet: repeat with `reset Gamma --yes`" in reply["body"]
    assert f'<a href="https://matrix.to/#/{alpha_room}?via=test.local">Its room</a>' in html(reply)
    assert (await app.agents.get(alpha.id)).room_id == alpha_room
    reply = await say(admin_user, dm, "reset Gamma --yes")
    new_room = (await app.agents.get(alpha.id)).room_id
    assert new_room != alpha_room
    assert reply["body"].startswith("Reset **Gamma**: its old room is archived")
    assert f"https://matrix.to/#/{new_room}?via=test.local" in html(reply)
    space = await admin_user.join(bridge.space_alias)  # admins are invited to the space
    children = await space_children(admin_user, space)
    assert new_room in children and alpha_room not in children
    assert await admin_user.resolve_alias(bridge.alias(alpha.id)) == new_room
    name = await admin_user.get_state(alpha_room, "m.room.name")
    assert name["name"] == "Gamma (archived)"
    notices = [
        e
        for e in await admin_user.messages(alpha_room)
        if e["sender"] == bridge.mxid(alpha.id) and e["type"] == "m.room.message"
    ]
    assert "this room is archived" in notices[-1]["content"]["body"]
    assert new_room in notices[-1]["content"]["body"]


async def _no_management_room(rooms: Any, mxid: str) -> bool:
    return await rooms.management_room(mxid) is None
